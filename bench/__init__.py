"""``make bench``: Sagalog measured against its limit and its peers, on one broker, in one run.

One module per measurement: ``limit`` (a plain transactional pipe), ``engine`` (one processor
on a backlog), ``end_to_end`` (the order saga with its workers), ``recovery`` (restore, replay,
failover), ``memory`` (resident memory against live instances), ``profile`` (pyinstrument on
the processor), ``peers.faust`` and ``peers.temporal``. ``common`` holds what they share,
``report`` writes the JSON, the table and the chart, and ``run`` is the command line.
"""
