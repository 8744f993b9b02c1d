"""Definitions whose state is JSON documents, one per path: the seam declarative ones plug into.

A States Language state machine passes a JSON document from state to state, and a parallel's
branches and a map's iterations each work on their own copy. A definition compiled from one
keeps ``Documents`` as its saga state: the document of every path that runs, by *scope* (the
main path is ``""``; a block activation's branch is ``"<block key>#<branch>"``), the execution's
original input, and how many retries each retrier of a step has spent.

Its ``SagaDefinition.documents`` is a ``DocumentFlow``: the decider asks it what a path's
document becomes when a task succeeds, a flow state passes, a catcher takes an error or a block
joins, and journals the answer (``DocumentSet``: the scope and the new document as JSON). Fold
only stores what the journal says, so a replay never evaluates a path again, and a definition
edited later cannot rewrite an execution's history.

The flow's functions (builders, choice conditions, a wait's ``until``) are called with a
``Scope``: the path's document and the context a definition may read (``$$`` in the States
Language). Anything they cannot do with the document (a path that selects nothing, a field of
the wrong type) they raise as ``PathFailure``, which names a States Language error a ``Catch``
may match.

This module is pure: no Kafka, no clock, no randomness.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from stream_processors.codecs.records import State

#: The scope of the main path's document.
ROOT_SCOPE = ""
#: Where ``Documents`` keeps the execution's input (no scope is named so: scopes are "" or
#: contain "#").
INPUT_SCOPE = "$input"


class Documents(State, schema="sagalog.Documents"):
    """A document-flow definition's saga state: JSON texts by scope, retries by retrier."""

    documents: dict[str, str]
    retries: dict[str, int]

    def document(self, scope: str) -> Any:
        """The document of ``scope`` (decoded); null if the path has none yet."""
        text = self.documents.get(scope)
        return None if text is None else json.loads(text)

    def spent(self, step: str, retriers: int) -> list[int]:
        """The retries each of a step's ``retriers`` has spent, in order."""
        return [self.retries.get(retry_key(step, index), 0) for index in range(retriers)]


def scope_of(block: str, branch: int) -> str:
    """The scope of a path: the main path, or a block activation's branch (or map item)."""
    return f"{block}#{branch}" if block else ROOT_SCOPE


def retry_key(step: str, retrier: int) -> str:
    return f"{step}#{retrier}"


def document_text(document: Any) -> str:
    """A document as journaled: compact JSON, key order kept (raises for what is not JSON)."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def begin_documents(document: Any) -> Documents:
    """The state an execution starts with: its input is the main path's document."""
    text = document_text(document)
    return Documents(documents={ROOT_SCOPE: text, INPUT_SCOPE: text}, retries={})


def with_document(data: Documents, scope: str, text: str) -> Documents:
    return Documents(documents={**data.documents, scope: text}, retries=data.retries)


def without_block(data: Documents, block: str) -> Documents:
    """The state without the documents of a block's branches (and of blocks nested in them),
    once the block has ended: their results are in the outer document, or not wanted."""
    prefix = f"{block}#"
    kept = {scope: text for scope, text in data.documents.items() if not scope.startswith(prefix)}
    return Documents(documents=kept, retries=data.retries)


def with_retry(data: Documents, step: str, retrier: int) -> Documents:
    key = retry_key(step, retrier)
    return Documents(
        documents=data.documents, retries={**data.retries, key: data.retries.get(key, 0) + 1}
    )


@dataclass(frozen=True, slots=True)
class Scope:
    """What a definition's function sees: its path's document and the execution's context."""

    document: Any
    execution: str
    state: str
    entered_ms: int
    started_ms: int
    input: Any
    retry_count: int = 0
    #: Inside a map's iteration: its index and item (the innermost map's).
    item_index: int | None = None
    item: Any = None


class PathFailure(Exception):
    """A document the definition cannot work with: ``error`` is the States Language error name
    (``States.Runtime``, ``States.ResultPathMatchFailure``...), ``cause`` says what and where."""

    def __init__(self, error: str, cause: str) -> None:
        super().__init__(f"{error}: {cause}")
        self.error = error
        self.cause = cause


class DocumentFlow(Protocol):
    """What a document-flow definition answers for each node, by the node's name."""

    def task_output(self, node: str, scope: Scope, result: Any) -> Any:
        """The path's document after task ``node`` succeeded with ``result`` (raises
        ``PathFailure``)."""

    def flow_output(self, node: str, scope: Scope) -> Any:
        """The path's document after a flow node (a pass, choice, wait or succeed) passes."""

    def retry(
        self, node: str, errors: Sequence[str], spent: Sequence[int], seed: str
    ) -> tuple[int, int] | None:
        """(retrier index, delay in ms) if a retrier takes the failure, given the retries each
        has spent; None if none does. ``seed`` makes any jitter repeatable."""

    def retriers(self, node: str) -> int:
        """How many retriers node ``node`` declares."""

    def caught(
        self, node: str, errors: Sequence[str], cause: str, scope: Scope
    ) -> tuple[str, Any] | None:
        """(target node, the path's document for it) of the first catcher that matches."""

    def branch_inputs(self, node: str, scope: Scope) -> list[Any]:
        """A block's branch inputs: one per branch of a parallel, one per item of a map."""

    def joined(self, node: str, scope: Scope, results: Sequence[Any]) -> Any:
        """The path's document after block ``node`` joined with its branches' outputs."""

    def failure(self, node: str, scope: Scope) -> tuple[str, str]:
        """(error, cause) of a failing end (a Fail state)."""


def documents_of(data: object) -> Documents:
    """``data`` as ``Documents`` (an instance of a document-flow definition has no other)."""
    if not isinstance(data, Documents):
        raise TypeError(f"a document-flow definition's state is Documents, not {type(data)}")
    return data


def documents_after_block(data: object, block: str) -> Documents | None:
    """For fold: the documents without a finished block's, if ``data`` holds documents."""
    return without_block(data, block) if isinstance(data, Documents) else None
