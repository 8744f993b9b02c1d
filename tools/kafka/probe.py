"""Readiness probe for a Kafka cluster: exit 0 once a metadata request succeeds.

Usage: probe.py BOOTSTRAP TIMEOUT_SECONDS. A real client round trip through librdkafka is the
language-neutral definition of "a client can connect", unlike an open TCP port, which a broker
has long before it can serve requests. The client takes Sagalog's settings (SAGALOG_KAFKA_CONFIG,
SAGALOG_KAFKA_*: stream_processors.kafka.config), so a secured cluster is probed as the engine
will talk to it; when it does not answer, the reason is printed in one line.
"""

import logging
import sys

from stream_processors.kafka.errors import KafkaUnavailable, connect_admin


def main() -> int:
    bootstrap, timeout = sys.argv[1], float(sys.argv[2])
    silent = logging.getLogger("probe")  # no "connection refused" lines while a broker starts
    silent.addHandler(logging.NullHandler())
    silent.propagate = False
    try:
        connect_admin(bootstrap, "sagalog-probe", timeout, log_level=0, logger=silent)
    except KafkaUnavailable as error:
        print(f"probe: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
