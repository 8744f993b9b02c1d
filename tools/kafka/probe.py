"""Readiness probe for a Kafka cluster: exit 0 once a metadata request succeeds.

Usage: probe.py BOOTSTRAP TIMEOUT_SECONDS [BROKERS]. A real client round trip through librdkafka
is the language-neutral definition of "a client can connect", unlike an open TCP port, which a
broker has long before it can serve requests. With BROKERS (a cluster's size, 1 by default) the
metadata must also list that many brokers: a cluster is ready when every node has registered
(and is unfenced), not when the first one answers. The client takes Sagalog's settings
(SAGALOG_KAFKA_CONFIG, SAGALOG_KAFKA_*: stream_processors.kafka.config), so a secured cluster is
probed as the engine will talk to it; when it does not answer, the reason is printed in one line.
"""

import logging
import sys
import time

from confluent_kafka import KafkaException

from stream_processors.kafka.errors import KafkaUnavailable, connect_admin


def main() -> int:
    bootstrap, timeout = sys.argv[1], float(sys.argv[2])
    wanted = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    deadline = time.monotonic() + timeout
    silent = logging.getLogger("probe")  # no "connection refused" lines while a broker starts
    silent.addHandler(logging.NullHandler())
    silent.propagate = False
    try:
        admin = connect_admin(bootstrap, "sagalog-probe", timeout, log_level=0, logger=silent)
    except KafkaUnavailable as error:
        print(f"probe: {error}", file=sys.stderr)
        return 1
    registered = 0
    while time.monotonic() < deadline:
        try:
            registered = len(admin.list_topics(timeout=2).brokers)
        except KafkaException:
            registered = 0
        if registered >= wanted:
            return 0
        time.sleep(0.5)
    print(f"probe: {registered} of {wanted} brokers registered", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
