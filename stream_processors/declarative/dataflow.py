"""The States Language's data flow: from a state's input to its effective input, and from its
result to its output.

    state input ─InputPath─► ─Parameters─► effective input ─► the state's work ─► result
    result ─ResultSelector─► ─ResultPath (into the state input)─► ─OutputPath─► state output

Paths are JSONPath, evaluated by python-jsonpath (RFC 9535 with the usual extensions: filters
``[?(@.price > 10)]``, recursive descent ``..``, slices). It was chosen over jsonpath-ng because
it is typed (it ships ``py.typed``, so strict mypy checks the calls), follows the RFC, and tells
a *singular* query (one that can select at most one node, the States Language's *Reference
Path*) from the others, which is the rule for what a path returns: a singular path gives the
value it selects, any other path gives the list of everything it selects (possibly empty).

A path beginning ``$$`` reads the *context object* (the execution's id, the state's name, ...)
instead of the input. The rules this module implements, from the specification:

- ``InputPath``/``OutputPath`` ``"$"`` (the default) passes the whole document; ``null`` passes
  ``{}``; a singular path that selects nothing is a ``States.Runtime`` error.
- In a payload template (``Parameters``, ``ResultSelector``) a key ending in ``.$`` takes its
  value from a path into the input, a ``$$`` path into the context object, or an intrinsic
  function call; the key loses its ``.$``. Other values are copied, objects and arrays
  recursively. A path there that selects nothing is ``States.ParameterPathFailure``.
- ``ResultPath`` ``"$"`` (the default) makes the result the output; ``null`` discards the
  result and passes the state input on; a reference path such as ``$.a.b`` puts the result
  there in a copy of the state input, creating missing objects on the way; a value in the way
  that is not an object (or an array index that is out of range) is
  ``States.ResultPathMatchFailure``.

Every function returns new values and never changes its arguments.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import lru_cache

import jsonpath
from jsonpath.selectors import IndexSelector, NameSelector

from stream_processors.declarative import intrinsics
from stream_processors.declarative.errors import (
    PARAMETER_PATH_FAILURE,
    RESULT_PATH_MATCH_FAILURE,
    RUNTIME,
    StatesError,
)
from stream_processors.declarative.values import JSON, compact

#: The default of InputPath, OutputPath and ResultPath: the whole document.
WHOLE = "$"


@lru_cache(maxsize=4096)
def _compiled(path: str) -> jsonpath.JSONPath:
    compiled = jsonpath.compile(path)
    if not isinstance(compiled, jsonpath.JSONPath):  # a compound query (a | b): not a Path
        raise jsonpath.JSONPathSyntaxError(f"{path!r} joins queries", token=None)  # type: ignore[arg-type]
    return compiled


def path_problem(path: str, *, reference: bool = False, context: bool = True) -> str | None:
    """What is wrong with ``path`` as a Path (or, with ``reference``, a Reference Path), or None.

    The compiler calls it for every path in a definition, so a bad path fails at load. Pass
    ``context=False`` where a ``$$`` path cannot stand (``ResultPath`` writes into the input).
    """
    if path.startswith("$$") and not context:
        return f"{path!r}: a path here cannot read the context object ($$)"
    text = path[1:] if path.startswith("$$") else path
    if not text.startswith("$"):
        return f"{path!r} is not a path (a path begins with '$')"
    try:
        compiled = _compiled(text)
    except jsonpath.JSONPathError as exc:
        return f"{path!r} is not a valid JSONPath: {str(exc).splitlines()[0]}"
    if reference and not compiled.singular_query():
        return f"{path!r} is not a Reference Path (it may select more than one node)"
    return None


def select(doc: JSON, path: str | None, context: JSON = None, *, error: str = RUNTIME) -> JSON:
    """The value ``path`` selects in ``doc`` (or, for a ``$$`` path, in ``context``).

    None selects ``{}``. A singular path gives its one value or raises ``StatesError(error)``
    naming the path; any other path gives the list of the values it selects.
    """
    if path is None:
        return {}
    if path.startswith("$$"):
        doc, path = context, path[1:]
    if path == WHOLE:
        return doc
    try:
        steps = _reference_steps(path)
    except jsonpath.JSONPathError as exc:
        raise StatesError(error, f"invalid path {path!r}: {exc}") from None
    if steps is None:
        found: list[JSON] = _compiled(path).findall(doc)  # type: ignore[assignment]
        return found
    for step in steps:
        doc = _child(doc, step, error, path)
    return doc


def _child(doc: JSON, step: str | int, error: str, path: str) -> JSON:
    """One step of a Reference Path, as python-jsonpath takes it (a name in an object, an index,
    negative from the end, in an array), done directly: it is the hot path of every state."""
    if isinstance(step, str) and isinstance(doc, dict) and step in doc:
        return doc[step]
    if isinstance(step, int) and isinstance(doc, list) and -len(doc) <= step < len(doc):
        return doc[step]
    raise StatesError(error, f"the path {path!r} selects nothing in {_excerpt(doc)}")


def _excerpt(doc: JSON) -> str:
    text = compact(doc)
    return text if len(text) <= 200 else text[:200] + "..."


def parameters(template: JSON, doc: JSON, context: JSON = None, seed: str = "") -> JSON:
    """A payload template filled from ``doc`` and ``context`` (see the module doc).

    ``seed`` feeds the intrinsic functions that draw random values (``States.UUID``,
    ``States.MathRandom``); each call mixes in where it sits in the template, so two calls in
    one template draw different values, and the same seed draws the same ones again.
    """
    if isinstance(template, list):
        return [parameters(item, doc, context, f"{seed}/{i}") for i, item in enumerate(template)]
    if not isinstance(template, dict):
        return template
    filled: dict[str, JSON] = {}
    for key, value in template.items():
        where = f"{seed}/{key}"
        if key.endswith(".$"):
            filled[key[:-2]] = _dynamic(key, value, doc, context, where)
        else:
            filled[key] = parameters(value, doc, context, where)
    return filled


def _dynamic(key: str, value: JSON, doc: JSON, context: JSON, seed: str) -> JSON:
    if not isinstance(value, str):
        raise StatesError(PARAMETER_PATH_FAILURE, f"the value of {key!r} must be a string")
    if value.startswith("$"):
        return select(doc, value, context, error=PARAMETER_PATH_FAILURE)
    try:
        call = intrinsics.parse(value)
    except ValueError as exc:
        raise StatesError(PARAMETER_PATH_FAILURE, f"{key!r}: {exc}") from None
    resolve = lambda path: select(doc, path, context, error=PARAMETER_PATH_FAILURE)  # noqa: E731
    return intrinsics.evaluate(call, resolve, seed)


def effective_input(
    state_input: JSON,
    input_path: str | None = WHOLE,
    parameters_template: JSON = None,
    context: JSON = None,
    seed: str = "",
) -> JSON:
    """``InputPath`` then ``Parameters`` (None: no Parameters field) applied to the state input."""
    selected = select(state_input, input_path, context)
    if parameters_template is None:
        return selected
    return parameters(parameters_template, selected, context, seed)


def place(state_input: JSON, result: JSON, result_path: str | None) -> JSON:
    """``ResultPath``: ``result`` put into a copy of ``state_input`` (see the module doc)."""
    if result_path is None:
        return state_input
    if result_path == WHOLE:
        return result
    try:
        steps = _reference_steps(result_path)
    except jsonpath.JSONPathError as exc:
        raise StatesError(
            RESULT_PATH_MATCH_FAILURE, f"invalid path {result_path!r}: {exc}"
        ) from None
    if not steps:  # None: not a Reference Path; (): "$" written another way
        raise StatesError(RESULT_PATH_MATCH_FAILURE, f"{result_path!r} is not a Reference Path")
    output = copy.deepcopy(state_input)
    holder: JSON = output
    for index, step in enumerate(steps):
        last = index == len(steps) - 1
        holder = _step_into(holder, step, result if last else None, last, result_path)
    return output


@lru_cache(maxsize=4096)
def _reference_steps(path: str) -> tuple[str | int, ...] | None:
    """The names and indexes of a Reference Path (a singular query), or None for other paths."""
    compiled = _compiled(path)
    if not compiled.singular_query():
        return None
    return tuple(_step(segment.selectors[0]) for segment in compiled.segments)


def _step(selector: object) -> str | int:
    if isinstance(selector, NameSelector):
        return selector.name
    assert isinstance(selector, IndexSelector)  # a singular query holds names and indexes only
    return selector.index


def _step_into(holder: JSON, step: str | int, result: JSON, last: bool, path: str) -> JSON:
    """One step of ResultPath: set the value (``last``) or go into it, creating ``{}``."""
    if isinstance(step, str) and isinstance(holder, dict):
        if last:
            holder[step] = result
        return holder.setdefault(step, {})
    if isinstance(step, int) and isinstance(holder, list) and -len(holder) <= step < len(holder):
        if last:
            holder[step] = result
        return holder[step]
    raise StatesError(
        RESULT_PATH_MATCH_FAILURE,
        f"cannot apply ResultPath {path!r}: {compact(holder)[:200]} has no place for {step!r}",
    )


def apply_result(
    state_input: JSON,
    result: JSON,
    result_selector: Mapping[str, JSON] | None = None,
    result_path: str | None = WHOLE,
    output_path: str | None = WHOLE,
    context: JSON = None,
    seed: str = "",
) -> JSON:
    """A state's output: ``ResultSelector`` on the result, ``ResultPath``, then ``OutputPath``."""
    if result_selector is not None:
        result = parameters(dict(result_selector), result, context, seed)
    return select(place(state_input, result, result_path), output_path, context)


def template_problems(template: JSON, where: str = "") -> list[tuple[str, str]]:
    """``(field, message)`` for each ``.$`` entry of a payload template that cannot run.

    A ``.$`` value must be a string: a path (checked as JSONPath) or an intrinsic function call
    (checked by parsing it). ``field`` is the entry's place in the template, ``a.b.$``.
    """
    if isinstance(template, list):
        return [
            p for i, item in enumerate(template) for p in template_problems(item, f"{where}[{i}]")
        ]
    if not isinstance(template, dict):
        return []
    found: list[tuple[str, str]] = []
    for key, value in template.items():
        field = f"{where}.{key}" if where else key
        if not key.endswith(".$"):
            found += template_problems(value, field)
        elif not isinstance(value, str):
            found.append(
                (field, f"a '.$' field takes a path or an intrinsic function, not {compact(value)}")
            )
        elif value.startswith("$"):
            problem = path_problem(value)
            found += [(field, problem)] if problem else []
        else:
            try:
                intrinsics.parse(value)
            except ValueError as exc:
                found.append((field, str(exc)))
    return found


def map_item_inputs(
    effective: JSON,
    items_path: str = WHOLE,
    item_selector: Mapping[str, JSON] | None = None,
    context: JSON = None,
    seed: str = "",
) -> list[JSON]:
    """The inputs of a Map state's iterations, from its effective input.

    ``ItemsPath`` must select an array (else ``States.Runtime``). Without ``ItemSelector`` (or
    the older ``Parameters``) each item is its iteration's input; with it, the template is
    filled from the effective input, with ``$$.Map.Item.Index`` and ``$$.Map.Item.Value`` in
    the context object.
    """
    items = select(effective, items_path, context)
    if not isinstance(items, list):
        raise StatesError(
            RUNTIME, f"ItemsPath {items_path!r} selects {compact(items)[:200]}, not an array"
        )
    if item_selector is None:
        return list(items)
    base = context if isinstance(context, dict) else {}
    return [
        parameters(
            dict(item_selector),
            effective,
            {**base, "Map": {"Item": {"Index": index, "Value": item}}},
            f"{seed}/{index}",
        )
        for index, item in enumerate(items)
    ]
