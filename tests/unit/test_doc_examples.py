"""The Python examples of the documentation run, as written.

Each ```` ```python ```` block of the pages below is run from the repository's root, in order,
in one namespace per page: an example that stops working fails here, not in a reader's hands.
(Pages whose examples need a broker are not listed: their code is exercised by the integration
tests.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PAGES = ["docs/definitions.md"]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


@pytest.mark.parametrize("page", PAGES)
def test_the_python_examples_of_a_page_run(page: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    blocks = BLOCK.findall((ROOT / page).read_text())
    assert blocks, f"{page} has no Python example"
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, page, "exec"), namespace)
