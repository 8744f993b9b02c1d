"""What a worker remembers of the commands it handled: their replies, by command id.

Workers see a command twice when they crash after its side effect and before committing its
offset, or when an operator redrives it. A command id names one attempt of one step of one
instance, so a worker that finds the id here answers with the reply it gave the first time
instead of running the handler (and its side effect) again. The store is a local RocksDB
(rocksdict, raw mode): a reply written before the offset commit survives a kill -9 of the
process. It is local to the worker's machine; workers of one service on several machines that
must not repeat an effect across them need the handler's own idempotency (the command id is
passed to it as ``context.idempotency_key``).
"""

from __future__ import annotations

from pathlib import Path

from rocksdict import AccessType, Options, Rdict

from stream_processors.store import Slot, claim_slot


class HandledCommands:
    """Replies by command id, in the first free store slot under ``base``."""

    def __init__(self, base: Path) -> None:
        self._slot: Slot = claim_slot(base)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        self._db = Rdict(str(self._slot.path / "handled"), options)

    @property
    def identity(self) -> str:
        """Stable across restarts of the process that uses this store (see ``store.Slot``)."""
        return self._slot.identity

    def reply(self, command_id: str) -> bytes | None:
        value = self._db.get(command_id.encode())
        return None if value is None else bytes(value)

    def remember(self, command_id: str, reply: bytes) -> None:
        self._db.put(command_id.encode(), reply)

    def close(self) -> None:
        self._db.close()
        self._slot.release()


def recorded_replies(base: Path) -> dict[str, bytes]:
    """Every reply recorded under ``base`` (all slots), read-only: for audits and tests."""
    replies: dict[str, bytes] = {}
    for path in sorted(base.glob("slot-*/handled")):
        store = Rdict(str(path), Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            for key, value in store.items():
                if isinstance(key, bytes) and isinstance(value, bytes):
                    replies[key.decode()] = value
        finally:
            store.close()
    return replies
