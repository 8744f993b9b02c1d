"""The README's examples run: every ```python block marked with a ``<!-- test -->`` line.

Each marked block runs in a namespace of its own, as a module would; then every function in it
whose name starts with ``test_`` is called. A block fails the test with its line in the README.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
#: A marker line, blank lines, then a fenced python block up to its closing fence.
MARKED = re.compile(r"^<!-- test -->\n(?:\s*\n)*```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def marked_blocks() -> list[tuple[int, str]]:
    """(line of the block's first code line, code) of every marked block."""
    text = README.read_text()
    return [
        (text.count("\n", 0, found.start(1)) + 1, found.group(1)) for found in MARKED.finditer(text)
    ]


def test_the_readme_has_marked_blocks() -> None:
    assert BLOCKS, f"no ```python block marked <!-- test --> in {README}"


BLOCKS = marked_blocks()


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_block(line: int, code: str) -> None:
    namespace: dict[str, object] = {"__name__": f"readme_line_{line}"}
    # Blank lines first, so tracebacks point at README lines.
    exec(compile("\n" * (line - 1) + code, str(README), "exec"), namespace)
    tests = [value for name, value in namespace.items() if name.startswith("test_")]
    for function in tests:
        assert callable(function)
        function()
