"""How new topics are replicated for the cluster's size (stream_processors.kafka.topics)."""

import pytest

from stream_processors.kafka.topics import Replication, replication_for


@pytest.mark.parametrize(
    ("brokers", "expected"),
    [
        (0, Replication(1, 1)),  # metadata without brokers: as one broker
        (1, Replication(1, 1)),
        (2, Replication(2, 1)),
        (3, Replication(3, 2)),
        (5, Replication(3, 2)),
    ],
)
def test_the_default_follows_the_cluster_size(brokers: int, expected: Replication) -> None:
    assert replication_for(brokers, {}) == expected


def test_one_replica_adds_no_topic_setting() -> None:
    assert replication_for(1, {}).topic_config() == {}
    assert replication_for(3, {}).topic_config() == {"min.insync.replicas": "2"}


def test_the_environment_overrides_the_default() -> None:
    chosen = {"SAGALOG_REPLICATION_FACTOR": "5", "SAGALOG_MIN_INSYNC_REPLICAS": "3"}
    assert replication_for(3, chosen) == Replication(5, 3)
    # A factor below three has one replica in sync by default, whatever the cluster.
    assert replication_for(3, {"SAGALOG_REPLICATION_FACTOR": "2"}) == Replication(2, 1)
    assert replication_for(1, {"SAGALOG_MIN_INSYNC_REPLICAS": " "}) == Replication(1, 1)


@pytest.mark.parametrize(
    "environ",
    [
        {"SAGALOG_REPLICATION_FACTOR": "three"},
        {"SAGALOG_REPLICATION_FACTOR": "0"},
        {"SAGALOG_MIN_INSYNC_REPLICAS": "-1"},
        {"SAGALOG_REPLICATION_FACTOR": "3", "SAGALOG_MIN_INSYNC_REPLICAS": "4"},
    ],
)
def test_impossible_settings_are_refused(environ: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="SAGALOG_"):
        replication_for(3, environ)
