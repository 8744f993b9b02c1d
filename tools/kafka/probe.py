"""Readiness probe for a Kafka cluster: exit 0 once a metadata request succeeds.

Usage: probe.py BOOTSTRAP TIMEOUT_SECONDS. A real client round trip through librdkafka is the
language-neutral definition of "a client can connect", unlike an open TCP port, which a broker
has long before it can serve requests.
"""

import sys
import time

from confluent_kafka.admin import AdminClient


def main() -> int:
    bootstrap, timeout = sys.argv[1], float(sys.argv[2])
    deadline = time.monotonic() + timeout
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0, "logger": _silent()})
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return 1
        try:
            metadata = admin.list_topics(timeout=min(2.0, remaining))
            if metadata.brokers:
                return 0
        except Exception:
            pass
        time.sleep(0.2)


def _silent() -> object:
    import logging

    logger = logging.getLogger("probe")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


if __name__ == "__main__":
    sys.exit(main())
