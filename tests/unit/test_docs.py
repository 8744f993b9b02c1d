"""Documents the code points to are in the repository.

Module docstrings cite ``docs/<name>.md`` for the reasoning behind them; a citation of a page
that is not there (as the processor once cited a design document kept outside the repository)
sends a reader nowhere.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CITATION = re.compile(r"\b(docs/[\w./-]+\.md|[A-Z][A-Z_]+\.md)\b")


def test_every_document_a_module_cites_exists() -> None:
    cited = {
        (path.relative_to(ROOT), name)
        for package in ("sagas", "stream_processors")
        for path in (ROOT / package).rglob("*.py")
        for name in CITATION.findall(path.read_text())
    }
    assert cited, "no module cites a document: the pattern is wrong"
    missing = sorted(f"{path}: {name}" for path, name in cited if not (ROOT / name).is_file())
    assert missing == []
