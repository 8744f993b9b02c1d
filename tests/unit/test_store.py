"""The local snapshot store on its own (RocksDB through rocksdict, no Kafka).

Covers what restore relies on: snapshots and their changelog offset are written together and
survive a reopen; tombstones delete; partitions are independent; a corrupt store is rebuilt
empty (so the processor restores it from the changelog) rather than failing; and store slots
give each live process its own folder while a restarted one gets its folder back.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from rocksdict import Options, Rdict

from examples.order_fulfillment.messages import PaymentCompleted
from stream_processors.codecs.avro import DecodeError
from stream_processors.core.instance import decode_snapshot, snapshot_schedule
from stream_processors.engine.store import Due, MemoryBounds, SnapshotStore, claim_slot


def test_snapshots_and_offsets_survive_a_reopen(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "db")
    store.write([(0, "order-1", b"one"), (1, "order-2", b"two")], {0: 41, 1: 7})
    store.close()

    reopened = SnapshotStore(tmp_path / "db")
    assert reopened.get(0, "order-1") == b"one"
    assert reopened.get(1, "order-2") == b"two"
    assert reopened.get(1, "order-1") is None  # partitions do not share keys
    assert reopened.changelog_offset(0) == 41
    assert reopened.changelog_offset(1) == 7
    assert reopened.changelog_offset(2) is None
    reopened.close()


def test_a_tombstone_deletes_and_dropping_a_partition_forgets_it(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "db")
    store.write([(3, "a", b"1"), (3, "b", b"2"), (4, "c", b"3")], {3: 10, 4: 11})
    store.write([(3, "a", None)], {3: 12})
    assert store.get(3, "a") is None
    assert dict(store.instances(3)) == {"b": b"2"}

    timers = [(Due.TIMER, p, 5, i) for p, i in ((3, "b"), (4, "c"), (255, "d"), (256, "e"))]
    store.write([(255, "d", b"4"), (256, "e", b"5")], {255: 1, 256: 1}, timers)

    store.drop_partition(3)
    store.drop_partition(255)  # its keys end in 0xFF: the range's end carries into the next byte
    assert list(store.instances(3)) == [] and list(store.instances(255)) == []
    assert store.changelog_offset(3) is None and store.changelog_offset(255) is None
    assert dict(store.instances(4)) == {"c": b"3"} and dict(store.instances(256)) == {"e": b"5"}
    assert [list(store.due(Due.TIMER, p, 10)) for p in (3, 4, 255, 256)] == [
        [],
        [(Due.TIMER, 4, 5, "c")],
        [],
        [(Due.TIMER, 256, 5, "e")],
    ]
    store.close()


def test_a_store_following_another_changelog_forgets_everything(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "db")
    assert not store.adopt_changelog("first")
    store.write([(0, "a", b"1")], {0: 3}, [(Due.TIMER, 0, 5, "a")])
    assert store.adopt_changelog("second")
    assert list(store.instances(0)) == [] and store.changelog_offset(0) is None
    assert list(store.due(Due.TIMER, 0, 10)) == [] and store.changelog_id() == "second"
    store.close()


def test_a_corrupt_store_is_rebuilt_empty(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "db")
    store.write([(0, "order-1", b"one")], {0: 5})
    store.close()
    for path in (tmp_path / "db").iterdir():
        if path.name.startswith(("CURRENT", "MANIFEST")):
            path.write_bytes(b"garbage")

    rebuilt = SnapshotStore(tmp_path / "db")
    assert rebuilt.get(0, "order-1") is None
    assert rebuilt.changelog_offset(0) is None  # so restore starts at the changelog's start
    rebuilt.close()


def test_live_processes_get_distinct_slots_and_a_restart_gets_its_own_back(tmp_path: Path) -> None:
    first = claim_slot(tmp_path)
    second = claim_slot(tmp_path)
    assert (first.index, second.index) == (0, 1)
    assert first.path != second.path
    assert first.identity != second.identity  # so they never fence each other in Kafka

    first.release()  # the first process exits
    again = claim_slot(tmp_path)
    assert again.index == 0
    assert again.identity == first.identity  # the restart is the same member, fencing the old
    again.release()
    second.release()


def test_a_record_that_is_not_a_snapshot_is_refused_by_name_not_by_a_missing_field() -> None:
    """A foreign record on the changelog (a worker once wrote a reply there) is a DecodeError,
    which restore and verify skip or report, never a KeyError that stops the processor."""
    foreign = PaymentCompleted(order_id="o-1", payment_id="p").encode()
    for read in (snapshot_schedule, decode_snapshot):
        with pytest.raises(DecodeError) as caught:
            read(foreign)
        assert caught.value.reason == "wrong-type"


def test_instances_after_reads_a_partition_a_bounded_chunk_at_a_time(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "db")
    store.write([(5, f"i{n}", b"%d" % n) for n in range(5)], {5: 10})
    store.write([(6, "other", b"x"), (4, "z", b"y")], {6: 1, 4: 1})

    first = store.instances_after(5, "", 2)
    store.write([(5, "i1", b"moved"), (5, "i3", b"moved"), (5, "i10", b"new")], {5: 11})
    rest = store.instances_after(5, first[-1][0], 10)

    assert first == [("i0", b"0"), ("i1", b"1")]
    assert rest == [("i10", b"new"), ("i2", b"2"), ("i3", b"moved"), ("i4", b"4")]  # as now
    assert store.instances_after(5, "i4", 10) == []
    assert store.instances_after(7, "", 10) == []
    store.close()


def test_a_lookup_of_an_instance_not_in_the_store_is_answered_by_the_bloom_filter(
    tmp_path: Path,
) -> None:
    # Most lookups are of instances that do not exist yet (every start); without a filter each
    # one reads index and data blocks of every level (docs/benchmarks.md, 2026-12-02 18:50).
    options = MemoryBounds().options()
    options.enable_statistics()
    db = Rdict(str(tmp_path / "db"), options)
    for file in range(4):  # several table files, as a store of many instances has
        for n in range(5_000):
            db[f"instance-{file}-{n:05d}".encode()] = b"x" * 100
        db.flush()
    missing = 2_000
    # Within the files' key ranges (a key outside them is ruled out without any filter).
    assert all(db.get(f"instance-{n % 4}-{n:05d}-new".encode()) is None for n in range(missing))
    useful = re.search(r"rocksdb\.bloom\.filter\.useful COUNT : (\d+)", options.get_statistics())
    db.close()
    # About 1 % of lookups are false positives at 10 bits a key.
    assert useful is not None and int(useful.group(1)) >= 0.95 * missing


def test_a_store_made_without_todays_settings_is_opened_with_them(tmp_path: Path) -> None:
    # rocksdict would otherwise take the column family's settings saved in the store itself.
    made = Rdict(str(tmp_path / "db"), Options(raw_mode=True))
    made[b"k"] = b"v"
    made.close()
    store = SnapshotStore(tmp_path / "db", MemoryBounds(block_cache_mb=3))
    store.close()
    log = (tmp_path / "db" / "LOG").read_text()
    assert "filter_policy: bloomfilter" in log
    assert f"capacity : {3 * 1024 * 1024}" in log
