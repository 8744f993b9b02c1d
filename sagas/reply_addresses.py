"""Where a worker may send replies: a command's ``sagalog.reply_to`` is checked before anything.

A worker writes its reply to the topic the command names, in its own transaction, with its own
(write-everywhere-it-needs) credentials. Unchecked, whoever can write a command topic chooses
where the worker writes: a saga's snapshots changelog (after which no processor restores), its
journal, ``_sagalog.schemas``, another group's handled topic. So a worker answers only to topics
it allows, and dead-letters any other command as ``bad-reply-address`` without running its
handler or consulting what it handled.

A worker knows the command types it handles, not the sagas that send them, so the default is a
shape: ``*.inbox``, the topic every saga's replies go to (``<saga>.inbox``), and never one of the
engine's other topics (``.journal``, ``.snapshots``, ``.dlq``, ``.handled``, ``_sagalog.*``).
Its consequence: any saga's inbox on the cluster is allowed, so a forged command can still make
the worker answer into another saga's inbox, where the reply is matched against the attempt the
instance waits for (and, with signing on, never gets that far: docs/security.md). Give the exact
list (``Worker(..., reply_to=["order_fulfillment.inbox"])`` or ``sagas worker --reply-to``) to
allow only the sagas that really send the worker commands. Entries are exact topic names or
``fnmatch`` patterns (``*``, ``?``, ``[...]``); a reply address must also be a legal topic name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

#: The dead-letter reason of a command whose reply address is not allowed.
BAD_REPLY_ADDRESS = "bad-reply-address"
#: What a worker allows unless told otherwise: every saga's inbox.
DEFAULT_REPLY_TO: tuple[str, ...] = ("*.inbox",)

_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


@dataclass(frozen=True)
class ReplyAddresses:
    """The topics a worker may answer to: exact names or ``fnmatch`` patterns."""

    patterns: tuple[str, ...] = DEFAULT_REPLY_TO

    @classmethod
    def of(cls, patterns: Iterable[str] | None) -> ReplyAddresses:
        """The given patterns (at least one), or the default for None."""
        if patterns is None:
            return cls()
        chosen = tuple(p.strip() for p in patterns if p.strip())
        if not chosen:
            raise ValueError("reply_to: give at least one topic or pattern")
        return cls(chosen)

    def refusal(self, topic: str) -> str | None:
        """Why a reply may not go to ``topic`` (the dead letter's detail), or None if it may."""
        if not _TOPIC.fullmatch(topic) or topic in (".", ".."):
            return f"{topic[:100]!r} is not a topic name"
        if any(fnmatchcase(topic, pattern) for pattern in self.patterns):
            return None
        return f"{topic!r} is not among the allowed reply topics ({', '.join(self.patterns)})"


__all__ = ["BAD_REPLY_ADDRESS", "DEFAULT_REPLY_TO", "ReplyAddresses"]
