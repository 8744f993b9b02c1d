"""``stream_processors.declarative.loader``: JSON and YAML definitions, with a line for every node,
and refusals that name the line (duplicate keys, non-JSON values, syntax errors).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_processors.codecs.records import DeclarationError
from stream_processors.declarative.loader import DefinitionError, load, loads
from stream_processors.declarative.problems import line_for, locate, with_line

DEFINITIONS = Path(__file__).parent / "definitions"
SEED_001 = DEFINITIONS / "seed_001_user_onboarding.json"

YAML = """\
Comment: onboarding, in YAML
StartAt: CreateUser
States:
  CreateUser:
    Type: Task
    Resource: AuthService:createUser
    Retry:
      - ErrorEquals: [States.TaskFailed]
        MaxAttempts: 2
    Next: Wait
  Wait:
    Type: Wait
    Timestamp: 2016-03-14T01:59:00Z
    Next: Done
  Done:
    Type: Succeed
    Comment: yes
"""


def test_the_seed_definition_loads_as_printed_with_its_lines() -> None:
    loaded = load(SEED_001)
    assert loaded.format == "json"
    assert loaded.doc["StartState"] == "CreateUser"
    text = SEED_001.read_text().splitlines()
    for path in [
        ("States", "ProvisionResources", "Retry"),
        ("States", "ProvisionResources", "Retry", "MaxAttempts"),
        ("States", "CreateUser", "Catch", 0),
        ("States", "SendErrorNotification", "End"),
    ]:
        line = loaded.line(path)
        assert line is not None
        assert str(path[-1] if isinstance(path[-1], str) else "ErrorEquals") in text[line - 1]


def test_yaml_keeps_timestamps_and_yes_as_strings_and_lines_per_node() -> None:
    loaded = loads(YAML, source="flow.yaml")
    assert loaded.format == "yaml"
    states = loaded.doc["States"]
    assert isinstance(states, dict)
    assert states["Wait"] == {"Type": "Wait", "Timestamp": "2016-03-14T01:59:00Z", "Next": "Done"}
    assert states["Done"] == {"Type": "Succeed", "Comment": "yes"}
    assert loaded.line(("States", "CreateUser", "Retry", 0, "MaxAttempts")) == 9
    assert loaded.line(("States", "CreateUser", "Retry", 0)) == 8
    assert loaded.line(("States", "Wait", "Timestamp")) == 13


def test_yaml_anchors_and_merge_keys_resolve() -> None:
    loaded = loads("base: &b {Type: Pass, End: true}\nStates:\n  A:\n    <<: *b\n    Comment: c\n")
    assert loaded.doc["States"] == {"A": {"Type": "Pass", "End": True, "Comment": "c"}}


@pytest.mark.parametrize(
    ("text", "source", "expected"),
    [
        ('{"a": 1}', "x.def", "json"),
        ('  {"a": [1]}', "x", "json"),
        ("a: 1", "x", "yaml"),
        ("{a: 1}", "x.yml", "yaml"),
        ('{"a": 1}', "x.YAML", "yaml"),
    ],
)
def test_the_format_follows_the_extension_then_the_content(
    text: str, source: str, expected: str
) -> None:
    assert loads(text, source=source).format == expected


@pytest.mark.parametrize(
    ("text", "source", "line", "state", "field", "words"),
    [
        (
            '{"States": {\n "A": {"Type": "Pass",\n "Type": "Wait"}}}',
            "d.json",
            3,
            "A",
            "Type",
            "twice",
        ),
        ("States:\n  A:\n    Next: B\n    Next: C\n", "d.yaml", 4, "A", "Next", "twice"),
        ("States:\n  A:\n    1: x\n", "d.yaml", 3, "A", None, "not a string"),
        ("States:\n  A:\n    Seconds: !!binary aGk=\n", "d.yaml", 3, "A", "Seconds", "not JSON"),
        ("States:\n  A: [\n", "d.yaml", 3, None, None, "YAML"),
        ('{\n"StartAt": "A",\n"States": {}\n,}', "d.json", 4, None, None, "JSON"),
        ("- 1\n- 2\n", "d.yaml", 1, None, None, "object"),
        ('{"Seconds": NaN}', "d.json", None, None, None, "NaN is not a JSON number"),
        ("", "d.yaml", None, None, None, "empty"),
    ],
)
def test_refusals_name_the_line(
    text: str, source: str, line: int | None, state: str | None, field: str | None, words: str
) -> None:
    with pytest.raises(DefinitionError) as caught:
        loads(text, source=source)
    error = caught.value
    assert isinstance(error, DeclarationError)
    assert (error.line, error.state, error.field) == (line, state, field)
    assert words in str(error)


def test_json_that_yaml_cannot_read_still_loads_without_lines() -> None:
    loaded = loads('{"a":\t"tab\\u00e9"}', source="d.json")  # a tab YAML's flow scanner refuses
    assert loaded.doc == {"a": "tab\u00e9"}


def test_message_format() -> None:
    error = DefinitionError("must be positive", state="Wait", field="Seconds", line=7)
    assert str(error) == "state 'Wait', field 'Seconds' (line 7): must be positive"
    assert str(DefinitionError("bad")) == "definition: bad"


def test_a_missing_file() -> None:
    with pytest.raises(DefinitionError, match="cannot read"):
        load(DEFINITIONS / "nope.json")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (("States", "A", "Retry", 1, "MaxAttempts"), ("A", "Retry[1].MaxAttempts")),
        (("States", "P", "Branches", 0, "States", "Q", "Next"), ("Q", "Next")),
        (("States", "M", "ItemProcessor", "States", "I", "Type"), ("I", "Type")),
        (("States", "M", "Iterator", "States", "I"), ("I", None)),
        (("States", "T", "Parameters", "States", "x"), ("T", "Parameters.States.x")),
        (("states", "START", "on_event"), ("START", "on_event")),
        (("StartAt",), (None, "StartAt")),
        ((), (None, None)),
    ],
)
def test_locate(path: tuple[str | int, ...], expected: tuple[str | None, str | None]) -> None:
    assert locate(path) == expected


@pytest.mark.parametrize(
    ("state", "field", "line"),
    [
        ("CreateUser", "Retry[0].MaxAttempts", 9),
        ("CreateUser", "Retry[0]", 8),
        ("CreateUser", "Retry[0].BackoffRate", 8),  # absent: its Retrier's line
        ("CreateUser", "Next", 10),
        ("CreateUser", "Catch[0].Next", 4),  # no Catch at all: the state's line
        ("Wait", None, 11),
        ("Nope", "Next", None),
    ],
)
def test_line_for_finds_a_compilers_error_in_the_file(
    state: str, field: str | None, line: int | None
) -> None:
    loaded = loads(YAML, source="flow.yaml")
    assert line_for(loaded.lines, state, field) == line


def test_with_line_fills_in_the_line() -> None:
    loaded = loads(YAML, source="flow.yaml")
    error = with_line(DefinitionError("names no state", state="Wait", field="Next"), loaded.lines)
    assert str(error) == "state 'Wait', field 'Next' (line 14): names no state"
    assert with_line(error, {}) is error
