"""Multiprocess mode's files: one directory per server run, one file per worker in it.

Each worker replaces its own file (a new file renamed over the old one, so a reader sees a whole
report or the previous one) and a scrape reads all the files of its run. Files stay for the whole
run, exited workers' too, since their counts stay in the totals; the directories of servers that
have exited are removed.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path

import msgspec

from svc.metrics.report import Report
from svc.process import alive

__all__ = ["WorkerFile", "default_base", "open_run", "read_run", "run_directory", "sweep"]

_RUN_NAME = re.compile(r"(\d+)-[0-9a-f]{16}")
_SUFFIX = ".report"


class Publication(msgspec.Struct, array_like=True):
    """A worker's file: its report, its pid, and whether it still serves (False once it has exited)."""

    pid: int
    serving: bool
    report: Report


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Publication)


def default_base() -> Path:
    user = f"-{os.getuid()}" if hasattr(os, "getuid") else ""
    return Path(tempfile.gettempdir()) / f"svc-metrics{user}"


def run_directory(base: Path) -> Path:
    """The multiprocess directory of this server run under `base`: `<server pid>-<run id>`.

    uvicorn's supervisor spawns the workers with multiprocessing, and every spawned process
    inherits its parent's `authkey`, 32 random bytes drawn when the supervisor started. A digest
    of it therefore names the run identically in every worker, and a new server (even one that
    gets a recycled pid, as in a restarted container) starts in a new, empty directory. The pid
    only serves to recognise the runs whose server has gone, so their directories can be removed.
    """
    parent = multiprocessing.parent_process()
    server_pid = parent.pid if parent is not None and parent.pid is not None else os.getpid()
    run_id = hashlib.sha256(b"svc-metrics:" + bytes(multiprocessing.current_process().authkey)).hexdigest()[:16]
    return base / f"{server_pid}-{run_id}"


def open_run(base: Path) -> Path:
    """Create (if needed) this run's directory under `base`, owned by this user only, and sweep old runs."""
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    if hasattr(os, "getuid") and base.stat().st_uid != os.getuid():
        raise RuntimeError(f"The metrics directory {base} belongs to another user.")
    run_dir = run_directory(base)
    run_dir.mkdir(mode=0o700, exist_ok=True)
    sweep(run_dir)
    return run_dir


def sweep(run_dir: Path) -> None:
    """Remove the directories of the other runs under the same base whose server has exited."""
    for sibling in run_dir.parent.iterdir():
        if sibling != run_dir and (m := _RUN_NAME.fullmatch(sibling.name)) and not alive(int(m[1])):
            shutil.rmtree(sibling, ignore_errors=True)


class WorkerFile:
    """This process's file in `run_dir`. Its name is drawn afresh, so that a worker which gets the pid
    of an exited one does not replace (and lose) that one's counts."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        name = f"{os.getpid()}-{secrets.token_hex(8)}"
        self.path = run_dir / (name + _SUFFIX)
        self._temporary = run_dir / (name + ".tmp")

    def write(self, report: Report, *, serving: bool) -> None:
        self._temporary.write_bytes(_encoder.encode(Publication(os.getpid(), serving, report)))
        os.replace(self._temporary, self.path)


def read_run(run_dir: Path) -> list[tuple[Report, bool]]:
    """Every report of the run, each with whether its worker is live (serving, and its process running)."""
    reports = []
    for path in run_dir.glob("*" + _SUFFIX):
        publication = _decoder.decode(path.read_bytes())
        reports.append((publication.report, publication.serving and alive(publication.pid)))
    return reports
