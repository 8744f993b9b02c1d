"""Running ``sagas console`` as a local OS process and waiting until it answers: for the demo
(``make demo KEEP=1``), the screenshots script (tools/console_screenshots.py) and the browser
test. The process is a ``sagas.local.LocalProcess``: it is stopped (SIGTERM) like the others.
"""

from __future__ import annotations

import sys
import time
import urllib.request
from pathlib import Path

from sagas.local import LocalProcess, free_port


def start_console(
    targets: list[str],
    log_path: Path,
    token: str,
    env: dict[str, str],
    port: int | None = None,
    timeout: float = 30,
) -> tuple[LocalProcess, str]:
    """Start a console of ``targets`` logging in with ``token``; returns it and its URL once
    its login page answers. ``env`` is the processes' (``SAGALOG_STATE_DIR`` above all: the
    console keeps each saga's index in its state folder and reads the processor's store)."""
    port = port or free_port()
    command = [sys.executable, "-m", "sagas", "console", *targets, "--port", str(port)]
    process = LocalProcess([], log_path, env=env, program=[*command, "--token", token]).start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_page(process, f"{url}/login", timeout)
    except BaseException:
        process.stop()
        raise
    return process, url


def wait_for_page(process: LocalProcess, url: str, timeout: float) -> None:
    """Return once ``url`` answers 200; ``RuntimeError`` if the process exits or it takes
    longer than ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if not process.running or time.monotonic() > deadline:
            raise RuntimeError(f"no console at {url}: {process.log_tail(20)}")
        time.sleep(0.2)
