"""Whether another process still runs: for state that processes leave behind them (metric files, server holds)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["alive"]


def alive(pid: int) -> bool:
    """Whether process `pid` runs; an exited process its parent has not reaped yet (a zombie) does not.

    A worker killed under a supervisor that has not waited for it yet is such a zombie: whatever it
    held must be released as if it were gone, which `os.kill(pid, 0)` alone would not tell.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs (macOS): trust kill()
    # The state follows the command name, which is in parentheses and may itself contain ") ".
    return stat.rpartition(")")[2].split()[0] != "Z"
