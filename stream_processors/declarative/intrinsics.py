"""The States Language's intrinsic functions, as written in a payload template's ``.$`` values.

``parse`` reads an expression such as ``States.Format('Hello, {}', $.name)`` into a ``Call``
(arguments: string, number, boolean and null literals, paths, and nested calls); it is checked
when a definition is compiled, so a misspelt function or a bad argument list fails at load.
``evaluate`` runs it, reading paths through a resolver the caller passes (the data flow's
``select``), so this module knows nothing of JSONPath. A call that fails (a wrong argument type,
an unbalanced ``States.Format``) raises ``StatesError('States.IntrinsicFailure', ...)``.

Strings are single-quoted; a backslash escapes ``'``, ``{``, ``}`` and ``\\``. ``States.UUID``
and ``States.MathRandom`` draw from a seed the caller passes (the command id, say) instead of a
random source: the same seed gives the same values, so deciding stays a pure function.
``States.StringSplit`` splits at any one of the delimiter characters and drops empty pieces.
``States.JsonMerge`` merges shallowly as Step Functions does; ``true`` merges nested objects too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from stream_processors.declarative.errors import INTRINSIC_FAILURE, StatesError, unit_fraction
from stream_processors.declarative.values import JSON, canonical, compact, is_number

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>'(?:[^'\\]|\\.)*')
    | (?P<call>States\.[A-Za-z0-9]+)\s*\(
    | (?P<path>\$(?:\[[^\]]*\]|[^,()\s\[])*)
    | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
    | (?P<word>true|false|null)
    | (?P<punct>[,)])
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Literal:
    """A literal argument; a string keeps its escapes until it is used (Format needs them)."""

    value: JSON
    raw: bool = False


@dataclass(frozen=True)
class PathArg:
    """A path argument, read through the resolver when the call runs."""

    path: str


@dataclass(frozen=True)
class Call:
    """A call of a ``States.*`` function with its arguments."""

    name: str
    args: tuple[Literal | PathArg | Call, ...]


Resolver = Callable[[str], JSON]


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = self._tokens(text)
        self.at = 0

    @staticmethod
    def _tokens(text: str) -> list[tuple[str, str]]:
        tokens, at = [], 0
        while text[at:].strip():
            match = _TOKEN.match(text, at)
            if not match or match.lastgroup is None:
                raise ValueError(f"cannot read {text[at:].strip()!r} in {text!r}")
            tokens.append((match.lastgroup, match.group(match.lastgroup)))
            at = match.end()
        return tokens

    def take(self) -> tuple[str, str]:
        if self.at >= len(self.tokens):
            raise ValueError(f"{self.text!r} ends too early")
        self.at += 1
        return self.tokens[self.at - 1]

    def call(self, name: str) -> Call:
        if name not in FUNCTIONS:
            raise ValueError(f"{name} is not an intrinsic function")
        args: list[Literal | PathArg | Call] = []
        kind, text = self.take()
        while (kind, text) != ("punct", ")"):
            args.append(self.argument(kind, text))
            kind, text = self.take()
            if (kind, text) == ("punct", ","):
                kind, text = self.take()
            elif (kind, text) != ("punct", ")"):
                raise ValueError(f"expected ',' or ')' in {self.text!r}, found {text!r}")
        arity = FUNCTIONS[name][1]
        if not arity[0] <= len(args) <= arity[1]:
            raise ValueError(f"{name} takes {_arity_text(arity)} arguments, got {len(args)}")
        return Call(name, tuple(args))

    def argument(self, kind: str, text: str) -> Literal | PathArg | Call:
        if kind == "call":
            return self.call(text)
        if kind == "path":
            return PathArg(text)
        if kind == "string":
            return Literal(text[1:-1], raw=True)
        if kind in ("number", "word"):
            value: JSON = json.loads(text)
            return Literal(value)
        raise ValueError(f"unexpected {text!r} in {self.text!r}")


@lru_cache(maxsize=1024)
def parse(expression: str) -> Call:
    """Read an intrinsic function call; ``ValueError`` says what is wrong with it."""
    parser = _Parser(expression)
    kind, name = parser.take()
    if kind != "call":
        raise ValueError(f"{expression!r} is not an intrinsic function call")
    call = parser.call(name)
    if parser.at != len(parser.tokens):
        raise ValueError(f"unexpected text after the call in {expression!r}")
    return call


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _fail(name: str, message: str) -> StatesError:
    return StatesError(INTRINSIC_FAILURE, f"{name}: {message}")


@dataclass(frozen=True)
class _Context:
    name: str
    seed: str


def evaluate(call: Call, resolve: Resolver, seed: str) -> JSON:
    """Run a parsed call; paths are read with ``resolve``; ``seed`` feeds UUID and MathRandom."""
    values: list[JSON] = []
    for index, arg in enumerate(call.args):
        if isinstance(arg, Call):
            values.append(evaluate(arg, resolve, f"{seed}/{index}"))
        elif isinstance(arg, PathArg):
            values.append(resolve(arg.path))
        elif arg.raw and call.name == "States.Format" and index == 0:
            values.append(arg.value)  # Format reads the escapes itself
        else:
            values.append(_unescape(arg.value) if isinstance(arg.value, str) else arg.value)
    return FUNCTIONS[call.name][0](_Context(call.name, seed), values)


def _arity_text(arity: tuple[int, int]) -> str:
    low, high = arity
    if low == high:
        return str(low)
    return f"at least {low}" if high >= _MANY else f"{low} to {high}"


def _string(ctx: _Context, value: JSON, what: str) -> str:
    if not isinstance(value, str):
        raise _fail(ctx.name, f"{what} must be a string, not {compact(value)}")
    return value


def _array(ctx: _Context, value: JSON, what: str) -> list[JSON]:
    if not isinstance(value, list):
        raise _fail(ctx.name, f"{what} must be an array, not {compact(value)}")
    return value


def _integer(ctx: _Context, value: JSON, what: str) -> int:
    if is_number(value) and float(value) == int(value):  # type: ignore[arg-type]
        return int(value)  # type: ignore[arg-type]
    raise _fail(ctx.name, f"{what} must be an integer, not {compact(value)}")


def _format(ctx: _Context, args: list[JSON]) -> JSON:
    template = _string(ctx, args[0], "the template")
    pieces = re.split(r"(\\.|\{\})", template)
    out, used = [], 0
    for piece in pieces:
        if piece == "{}":
            if used + 1 >= len(args):
                raise _fail(ctx.name, "more {} than arguments")
            value = args[used + 1]
            if isinstance(value, dict | list):
                raise _fail(ctx.name, "an argument must be a string, number, boolean or null")
            out.append(value if isinstance(value, str) else compact(value))
            used += 1
        else:
            out.append(piece[1] if piece.startswith("\\") and len(piece) == 2 else piece)
    if used != len(args) - 1:
        raise _fail(ctx.name, f"{len(args) - 1} arguments for {used} {{}}")
    return "".join(out)


def _string_to_json(ctx: _Context, args: list[JSON]) -> JSON:
    try:
        value: JSON = json.loads(_string(ctx, args[0], "the argument"))
    except json.JSONDecodeError as exc:
        raise _fail(ctx.name, f"not JSON: {exc}") from None
    return value


def _array_partition(ctx: _Context, args: list[JSON]) -> JSON:
    items = _array(ctx, args[0], "the first argument")
    size = _integer(ctx, args[1], "the chunk size")
    if size < 1:
        raise _fail(ctx.name, "the chunk size must be positive")
    return [items[at : at + size] for at in range(0, len(items), size)]


def _array_contains(ctx: _Context, args: list[JSON]) -> JSON:
    wanted = canonical(args[1])
    return any(canonical(item) == wanted for item in _array(ctx, args[0], "the first argument"))


def _array_range(ctx: _Context, args: list[JSON]) -> JSON:
    start, end, step = (_integer(ctx, a, "each argument") for a in args)
    if step == 0:
        raise _fail(ctx.name, "the step must not be 0")
    values: list[JSON] = list(range(start, end + (1 if step > 0 else -1), step))
    if len(values) > 1000:
        raise _fail(ctx.name, "a range may hold at most 1000 items")
    return values


def _array_get_item(ctx: _Context, args: list[JSON]) -> JSON:
    items = _array(ctx, args[0], "the first argument")
    index = _integer(ctx, args[1], "the index")
    if not 0 <= index < len(items):
        raise _fail(ctx.name, f"index {index} is outside an array of {len(items)}")
    return items[index]


def _array_unique(ctx: _Context, args: list[JSON]) -> JSON:
    seen: dict[str, JSON] = {}
    for item in _array(ctx, args[0], "the argument"):
        seen.setdefault(canonical(item), item)
    return list(seen.values())


def _base64_decode(ctx: _Context, args: list[JSON]) -> JSON:
    try:
        return base64.b64decode(_string(ctx, args[0], "the argument"), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise _fail(ctx.name, f"not base64 of UTF-8 text: {exc}") from None


_HASHES = {"MD5": "md5", "SHA-1": "sha1", "SHA-256": "sha256", "SHA-384": "sha384"}
_HASHES["SHA-512"] = "sha512"


def _hash(ctx: _Context, args: list[JSON]) -> JSON:
    data = args[0] if isinstance(args[0], str) else compact(args[0])
    algorithm = _string(ctx, args[1], "the algorithm")
    if algorithm not in _HASHES:
        raise _fail(ctx.name, f"the algorithm must be one of {', '.join(_HASHES)}")
    return hashlib.new(_HASHES[algorithm], data.encode()).hexdigest()


def _merge(left: dict[str, JSON], right: dict[str, JSON], deep: bool) -> dict[str, JSON]:
    merged = dict(left)
    for key, value in right.items():
        old = merged.get(key)
        nested = deep and isinstance(old, dict) and isinstance(value, dict)
        merged[key] = _merge(old, value, deep) if nested else value  # type: ignore[arg-type]
    return merged


def _json_merge(ctx: _Context, args: list[JSON]) -> JSON:
    left, right, deep = args
    if not isinstance(left, dict) or not isinstance(right, dict) or not isinstance(deep, bool):
        raise _fail(ctx.name, "takes two objects and a boolean")
    return _merge(left, right, deep)


def _math_random(ctx: _Context, args: list[JSON]) -> JSON:
    start = _integer(ctx, args[0], "the start")
    end = _integer(ctx, args[1], "the end")
    if end <= start:
        raise _fail(ctx.name, "the end must be greater than the start")
    seed = ctx.seed if len(args) < 3 else f"seed:{_integer(ctx, args[2], 'the seed')}"
    return start + int(unit_fraction(seed) * (end - start))


def _math_add(ctx: _Context, args: list[JSON]) -> JSON:
    return _integer(ctx, args[0], "the first number") + _integer(ctx, args[1], "the second")


def _string_split(ctx: _Context, args: list[JSON]) -> JSON:
    text = _string(ctx, args[0], "the string")
    delimiters = _string(ctx, args[1], "the delimiters")
    if not delimiters:
        return [text]
    pattern = "[" + "".join(re.escape(c) for c in delimiters) + "]"
    return [piece for piece in re.split(pattern, text) if piece]


def _uuid(ctx: _Context, args: list[JSON]) -> JSON:
    digest = hashlib.sha256(f"uuid:{ctx.seed}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


_MANY = 1 << 30
_Function = Callable[[_Context, list[JSON]], JSON]
#: Each function with the least and the most arguments it takes.
FUNCTIONS: dict[str, tuple[_Function, tuple[int, int]]] = {
    "States.Format": (_format, (1, _MANY)),
    "States.StringToJson": (_string_to_json, (1, 1)),
    "States.JsonToString": (lambda ctx, a: compact(a[0]), (1, 1)),
    "States.Array": (lambda ctx, a: list(a), (0, _MANY)),
    "States.ArrayPartition": (_array_partition, (2, 2)),
    "States.ArrayContains": (_array_contains, (2, 2)),
    "States.ArrayRange": (_array_range, (3, 3)),
    "States.ArrayGetItem": (_array_get_item, (2, 2)),
    "States.ArrayLength": (lambda ctx, a: len(_array(ctx, a[0], "the argument")), (1, 1)),
    "States.ArrayUnique": (_array_unique, (1, 1)),
    "States.Base64Encode": (
        lambda ctx, a: base64.b64encode(_string(ctx, a[0], "the argument").encode()).decode(),
        (1, 1),
    ),
    "States.Base64Decode": (_base64_decode, (1, 1)),
    "States.Hash": (_hash, (2, 2)),
    "States.JsonMerge": (_json_merge, (3, 3)),
    "States.MathRandom": (_math_random, (2, 3)),
    "States.MathAdd": (_math_add, (2, 2)),
    "States.StringSplit": (_string_split, (2, 2)),
    "States.UUID": (_uuid, (0, 0)),
}
