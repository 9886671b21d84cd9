"""`alive`: what the metrics sweep and the embedded server's holders ask of a worker's pid."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from svc.process import alive


def test_a_running_process_is_alive_and_a_reaped_one_is_not() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert alive(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not alive(child.pid)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="tells zombies apart through /proc")
def test_an_exited_process_its_parent_has_not_reaped_is_not_alive() -> None:
    """A killed worker stays a zombie until uvicorn's supervisor waits for it: its metric files must go all the same."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        stat = Path(f"/proc/{child.pid}/stat")
        deadline = time.monotonic() + 10
        while stat.read_text().rpartition(")")[2].split()[0] != "Z":  # exited; not waited for
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.01)
        assert not alive(child.pid)
    finally:
        child.wait()
