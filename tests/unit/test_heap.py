"""Memory a restore freed goes back to the operating system once restoring and counting end."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from stream_processors.engine import heap, metrics
from tests.unit.processor_rig import Rig


def test_free_pages_are_released_where_the_c_library_can() -> None:
    assert heap.release_freed() is (platform.libc_ver()[0] == "glibc")


def test_the_processor_releases_freed_memory_after_a_restore_and_after_its_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = Rig(tmp_path)
    first.start()
    for number in range(6):
        first.place(f"o-{number}")
    for _ in range(3):
        first.age_transaction()
        first.steps()
    first.processor.close()
    released: list[bool] = []
    monkeypatch.setattr(heap, "release_freed", lambda: released.append(True) or True)
    monkeypatch.setattr(metrics, "SCAN_SECONDS", 0.0)  # one chunk of two snapshots per turn
    monkeypatch.setattr(metrics, "SCAN_CHUNK", 2)

    again = Rig(tmp_path, broker=first.broker)
    again.start()  # restored, being counted
    assert again.processor._measures.scanning
    assert released == []
    again.steps(1)
    assert released == [True]  # once restored
    again.steps(8)

    assert not again.processor._measures.scanning
    assert released == [True, True]  # and once counted
    again.steps(2)
    assert released == [True, True]
    again.processor.close()
