"""The local snapshot store: RocksDB (rocksdict, raw mode) holding committed snapshots only.

Keys are ``b"s" + partition (2 bytes) + instance id``; for each partition, ``b"o" + partition``
holds the changelog offset the partition's snapshots are current to. Snapshots and that offset
are written together in one ``WriteBatch``, and only after the Kafka transaction that produced
them has committed, so the store never holds uncommitted state and a crash never requires a
wipe: restore reads the changelog tail after the stored offset.

Two indexes, ``b"t"`` (timers) and ``b"x"`` (expiry of finished instances), each keyed by
partition + due time + instance id, find what is due without reading snapshots. They are hints
(the snapshot says which timers are really set), so a stale entry is harmless and is dropped
when it comes due.

Memory is bounded by configuration, not by the number of instances (``MemoryBounds``): one LRU
block cache holds data, index and filter blocks, and the memtables (write buffers) are capped in
size and number. The defaults suit a processor with a million instances on a small machine; the
``SAGALOG_ROCKSDB_*`` environment variables override them (docs/architecture.md, "Store").

One process owns one store folder at a time. ``claim_slot`` picks the first free numbered slot
under a base folder with an exclusive file lock, so a restarted process finds its own store
again and a second process on the same machine gets a folder of its own.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import struct
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import IO

from rocksdict import (
    AccessType,
    BlockBasedIndexType,
    BlockBasedOptions,
    Cache,
    Options,
    Rdict,
    ReadOptions,
    WriteBatch,
)

log = logging.getLogger(__name__)

_PARTITION = struct.Struct(">H")
#: Keys of the flow-control rows the snapshots changelog also holds, besides instances
#: (``stream_processors.engine.flow``): no instance id starts with a NUL.
FLOW_ROWS = "\x00sagalog.flow\x00"
#: Of those, the rows of commands queued for their limit (read by the instance index too).
QUEUE_ROWS = FLOW_ROWS + "q\x00"
_OFFSET = struct.Struct(">q")


_MB = 2**20


def _env_mb(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    number = int(value)
    if number < 1:
        raise ValueError(f"{name} must be a whole number of MB >= 1, not {value!r}")
    return number


@dataclass(frozen=True)
class MemoryBounds:
    """What RocksDB may hold in memory, whatever the number of instances in the store.

    Without bounds RocksDB keeps every table file's index and filter blocks outside its cache
    and grows memtables to 64 MB each: resident memory then grows with the store's size.
    """

    #: The LRU cache of data blocks, and of index and filter blocks too (they are charged to it).
    block_cache_mb: int = 8
    #: One memtable's size; a full one is flushed to a table file.
    write_buffer_mb: int = 4
    #: Memtables at most (the active one and those being flushed).
    write_buffers: int = 2

    @classmethod
    def from_environment(cls) -> MemoryBounds:
        """The defaults, overridden by ``SAGALOG_ROCKSDB_BLOCK_CACHE_MB``,
        ``SAGALOG_ROCKSDB_WRITE_BUFFER_MB`` and ``SAGALOG_ROCKSDB_WRITE_BUFFERS``."""
        default = cls()
        return cls(
            _env_mb("SAGALOG_ROCKSDB_BLOCK_CACHE_MB", default.block_cache_mb),
            _env_mb("SAGALOG_ROCKSDB_WRITE_BUFFER_MB", default.write_buffer_mb),
            _env_mb("SAGALOG_ROCKSDB_WRITE_BUFFERS", default.write_buffers),
        )

    def options(self) -> Options:
        """RocksDB options (raw mode) with these bounds."""
        options = Options(raw_mode=True)
        table = BlockBasedOptions()
        table.set_block_cache(Cache(self.block_cache_mb * _MB))
        # Index and filter blocks in the cache (so bounded by it); level 0's pinned, as they
        # are read on every lookup of recent keys.
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        # Most lookups are of instances not in the store yet (each start): a Bloom filter
        # answers those without reading a data block. Index and filter partitioned, with only
        # their small top levels pinned: whole per-file index and filter blocks, evicted from
        # a small cache by one another, were loaded again on nearly every lookup, and a lookup
        # of a missing key went from 2 us with 100,000 instances to 117 us with 1,000,000
        # (docs/benchmarks.md, 2026-12-02 19:10); partitioned, it stays at 6-8 us.
        table.set_bloom_filter(10, False)
        table.set_index_type(BlockBasedIndexType.two_level_index_search())
        table.set_partition_filters(True)
        table.set_pin_top_level_index_and_filter(True)
        options.set_block_based_table_factory(table)
        options.set_write_buffer_size(self.write_buffer_mb * _MB)
        options.set_max_write_buffer_number(self.write_buffers)
        options.set_db_write_buffer_size(self.write_buffer_mb * self.write_buffers * _MB)
        return options


@dataclass
class Slot:
    """A claimed store folder; the lock lasts as long as the process (or ``release``).

    ``identity`` is made once, when the folder is first claimed, and kept in it: a process that
    restarts on the same folder is the same member to Kafka (same transactional and group
    instance id, so it fences its crashed predecessor at once), while two processes with
    different folders, on one machine or many, never share an identity.
    """

    index: int
    path: Path
    identity: str
    _lock: IO[bytes]

    def release(self) -> None:
        self._lock.close()


def claim_slot(base: Path, limit: int = 64) -> Slot:
    """Lock and return the lowest-numbered free ``slot-N`` folder under ``base``."""
    base.mkdir(parents=True, exist_ok=True)
    for index in range(limit):
        path = base / f"slot-{index}"
        path.mkdir(exist_ok=True)
        lock = (path / "LOCK.sagalog").open("wb")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        identity_file = path / "IDENTITY"
        if not identity_file.exists():
            identity_file.write_text(uuid.uuid4().hex)
        return Slot(index, path, identity_file.read_text().strip(), lock)
    raise RuntimeError(f"all {limit} store slots under {base} are in use")


def _snapshot_key(partition: int, instance_id: str) -> bytes:
    return b"s" + _PARTITION.pack(partition) + instance_id.encode()


def _successor(prefix: bytes) -> bytes:
    """The first key after every key that starts with ``prefix`` (not all 0xFF bytes)."""
    stripped = prefix.rstrip(b"\xff")
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _offset_key(partition: int) -> bytes:
    return b"o" + _PARTITION.pack(partition)


_DUE = struct.Struct(">q")
_CHANGELOG_ID = b"c"


class Due(Enum):
    """The store's two indexes of things due at a time, both scanned the same way."""

    TIMER = b"t"  # an instance has a timer due (a retry, a timeout, a deadline)
    EXPIRY = b"x"  # a finished instance's snapshot leaves the store (retention)


#: An index entry: (index, partition, due in epoch ms, instance id).
DueRef = tuple[Due, int, int, str]


def _due_key(ref: DueRef) -> bytes:
    # Sorted by due time within a partition, so "what is due" is one range scan from the start.
    index, partition, due_ms, instance_id = ref
    return index.value + _PARTITION.pack(partition) + _DUE.pack(due_ms) + instance_id.encode()


def index_entries(
    partition: int,
    instance_id: str,
    timer_due_ms: Iterable[int],
    finished_at_ms: int | None,
    retention_ms: int | None,
) -> list[DueRef]:
    """The index entries of one snapshot: its timers, and its expiry once it is finished."""
    entries = [(Due.TIMER, partition, due, instance_id) for due in timer_due_ms]
    if finished_at_ms is not None and retention_ms is not None:
        entries.append((Due.EXPIRY, partition, finished_at_ms + retention_ms, instance_id))
    return entries


class SnapshotStore:
    """Committed snapshots per partition, with the changelog offset they are current to."""

    def __init__(self, path: Path, bounds: MemoryBounds | None = None) -> None:
        self.path = path
        self._db = self._open(path, bounds or MemoryBounds.from_environment())

    @staticmethod
    def _open(path: Path, bounds: MemoryBounds) -> Rdict:
        options = bounds.options()
        options.create_if_missing(True)
        # Named for the default column family too: otherwise rocksdict opens an existing store
        # with the column family options saved in it (its OPTIONS file), and neither today's
        # bounds nor its table settings would apply to a store made by an earlier version.
        families = {"default": options}
        try:
            return Rdict(str(path), options, column_families=families)
        except Exception as error:  # rocksdict raises plain Exceptions for corruption
            # A store is only a cache of the changelog: a corrupt one is dropped and rebuilt.
            log.warning("snapshot store at %s is unreadable (%s); rebuilding it", path, error)
            shutil.rmtree(path, ignore_errors=True)
            return Rdict(str(path), options, column_families=families)

    def get(self, partition: int, instance_id: str) -> bytes | None:
        value = self._db.get(_snapshot_key(partition, instance_id))
        return None if value is None else bytes(value)

    def changelog_offset(self, partition: int) -> int | None:
        """The last changelog offset applied for ``partition``, or None if never restored."""
        value = self._db.get(_offset_key(partition))
        return None if value is None else int(_OFFSET.unpack(bytes(value))[0])

    def write(
        self,
        snapshots: Iterable[tuple[int, str, bytes | None]],
        offsets: dict[int, int],
        index: Iterable[DueRef] = (),
        done: Iterable[DueRef] = (),
    ) -> None:
        """Apply snapshots (None deletes), offsets and index changes atomically."""
        batch = WriteBatch(raw_mode=True)
        for ref in done:
            batch.delete(_due_key(ref))
        for ref in index:
            batch.put(_due_key(ref), b"")
        for partition, instance_id, value in snapshots:
            key = _snapshot_key(partition, instance_id)
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        for partition, offset in offsets.items():
            batch.put(_offset_key(partition), _OFFSET.pack(offset))
        self._db.write(batch)

    def write_restored(
        self,
        partition: int,
        snapshots: Iterable[tuple[bytes, bytes | None]],
        offset: int,
        index: Iterable[DueRef],
    ) -> None:
        """``write`` for a restore: one partition's snapshots keyed by the changelog records'
        own key bytes (the instance id, UTF-8), not decoded and encoded again."""
        batch = WriteBatch(raw_mode=True)
        for ref in index:
            batch.put(_due_key(ref), b"")
        prefix = b"s" + _PARTITION.pack(partition)
        for key, value in snapshots:
            if value is None:
                batch.delete(prefix + key)
            else:
                batch.put(prefix + key, value)
        batch.put(_offset_key(partition), _OFFSET.pack(offset))
        self._db.write(batch)

    def due(self, index: Due, partition: int, now_ms: int) -> Iterator[DueRef]:
        """Entries of ``index`` in ``partition`` due at or before ``now_ms``, earliest first."""
        prefix = index.value + _PARTITION.pack(partition)
        end = _due_key((index, partition, now_ms + 1, ""))
        iterator = self._db.iter()
        iterator.seek(prefix)
        while iterator.valid():
            key = bytes(iterator.key())
            if key >= end or not key.startswith(prefix):
                break
            (due,) = _DUE.unpack(key[3:11])
            yield index, partition, int(due), key[11:].decode()
            iterator.next()

    def instances(self, partition: int, within: str = "") -> Iterator[tuple[str, bytes]]:
        """The rows of ``partition`` (those whose key starts with ``within``), by key; keys are
        yielded without ``within``."""
        prefix = b"s" + _PARTITION.pack(partition) + within.encode()
        iterator = self._db.iter()
        iterator.seek(prefix)
        while iterator.valid():
            key = bytes(iterator.key())
            if not key.startswith(prefix):
                break
            yield key[len(prefix) :].decode(), bytes(iterator.value())
            iterator.next()

    def instances_after(self, partition: int, after: str, most: int) -> list[tuple[str, bytes]]:
        """Up to ``most`` rows of ``partition`` whose key comes after ``after`` (``""``: from
        the first), by key: a long scan done a bounded read at a time (counting a restored
        partition's instances), each read through an iterator dropped before it returns.

        Why not one iterator for the whole scan: a live iterator pins every memtable it saw,
        including the active one it goes on filling. Held through a scan of minutes by each of
        eight partitions, they were most of the memory that grew with the number of instances
        (28 to 40 MB at a million). (rocksdict's snapshot iterators would not do either: they read
        the current state, not the snapshot's.)
        """
        prefix = b"s" + _PARTITION.pack(partition)
        options = ReadOptions()
        options.fill_cache(False)  # type: ignore[call-arg]  # (the stub forgets the argument)
        iterator = self._db.iter(options)
        iterator.seek(prefix + after.encode() + b"\x00")  # the least key after ``after``'s
        rows: list[tuple[str, bytes]] = []
        while len(rows) < most and iterator.valid():
            key = bytes(iterator.key())
            if not key.startswith(prefix):
                break
            rows.append((key[len(prefix) :].decode(), bytes(iterator.value())))
            iterator.next()
        return rows

    def drop_partition(self, partition: int) -> None:
        """Forget a partition entirely (the next restore reads its changelog from the start).

        Range deletions, not one per key: a lookup then skips the dropped keys at once, where
        a tombstone per key (as many as the partition had instances) is read past one by one
        until compaction removes it."""
        batch = WriteBatch(raw_mode=True)
        for prefix in (b"s", *(index.value for index in Due)):
            start = prefix + _PARTITION.pack(partition)
            batch.delete_range(start, _successor(start))
        batch.delete(_offset_key(partition))
        self._db.write(batch)

    def changelog_id(self) -> str | None:
        """The topic id of the changelog this store was restored from, if recorded."""
        value = self._db.get(_CHANGELOG_ID)
        return None if value is None else bytes(value).decode()

    def set_changelog_id(self, changelog_id: str) -> None:
        self._db.put(_CHANGELOG_ID, changelog_id.encode())

    def adopt_changelog(self, changelog_id: str) -> bool:
        """Make the store follow changelog ``changelog_id``; forget everything if it was another.

        A changelog deleted and created again (``sagas replay``) has new offsets: what a store
        restored from the old one cannot be continued from the new. Returns True if it dropped.
        """
        known = self.changelog_id()
        dropped = known is not None and known != changelog_id
        if dropped:
            batch = WriteBatch(raw_mode=True)
            batch.delete_range(b"", b"\xff")  # every key: each starts with an ASCII kind byte
            self._db.write(batch)
        self.set_changelog_id(changelog_id)
        return dropped

    @classmethod
    def read_only(cls, path: Path) -> SnapshotStore:
        """Open a store another process may be writing, for lookups (``sagas history``)."""
        store = cls.__new__(cls)
        store.path = path
        options = MemoryBounds.from_environment().options()
        store._db = Rdict(
            str(path),
            options,
            column_families={"default": options},  # see ``_open``
            access_type=AccessType.read_only(),
        )
        return store

    def close(self) -> None:
        self._db.close()


def default_state_dir(saga: str) -> Path:
    return Path(os.environ.get("SAGALOG_STATE_DIR", ".sagalog/state")) / saga
