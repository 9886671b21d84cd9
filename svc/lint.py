"""`python -m svc lint-migrations`: every revision's SQL, as Alembic renders it offline for PostgreSQL, checked by squawk.

Each revision from base to head (svc's, the SERVICE's, and any extra version locations) is
rendered on its own (`alembic upgrade --sql DOWN:REV`) and given to squawk (the `squawk-cli`
wheel of the dev dependency group) with the rules chosen in `.squawk.toml`. A revision opts out of
one rule for one statement with `squawk_ignore(rule, why=...)` just before it, which writes
squawk's own comment, `-- squawk-ignore RULE -- WHY`, into the SQL; an opt-out written any other way
must have that shape too (one rule, a reason), and `squawk-ignore-file` is refused.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from svc.schema import SCRIPT_LOCATION
from svc.settings import Settings

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["SQUAWK_CONFIG", "Finding", "LintError", "lint", "render_revisions", "squawk_ignore"]

SQUAWK_CONFIG = SCRIPT_LOCATION.parent / ".squawk.toml"
RULE = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
# squawk's opt-out comment, as this project requires it: one rule, then " -- " and the reason.
_IGNORE = re.compile(r"^\s*--\s*squawk-ignore(?P<file>-file)?\b(?P<rest>.*)$")
_IGNORE_WITH_REASON = re.compile(r"\s+(?P<rule>\S+)\s+--\s*(?P<why>\S.*)")
_STATEMENT_SHOWN = 240  # characters of a statement quoted in a finding


class LintError(Exception):
    """The revisions could not be linted (squawk missing or failing, a script that does not load)."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: the revision, the rule, what squawk says, and the statement (one line, shortened)."""

    revision: str
    rule: str
    message: str
    statement: str

    def render(self) -> str:
        return f"{self.revision}: {self.rule}: {self.message}\n    {self.statement}"


def squawk_ignore(rule: str, *, why: str) -> None:
    """In a revision's `upgrade()`, just before the operation: squawk skips `rule` for that one statement.

    Writes `-- squawk-ignore RULE -- WHY` into the offline SQL (nothing runs online). `why` is
    required: it says why the statement is safe anyway, for the reviewer and the next reader.
    """
    from alembic import op

    if not RULE.fullmatch(rule):
        raise ValueError(f"not a squawk rule name: {rule!r}")
    reason = " ".join(why.split())
    if not reason:
        raise ValueError(f"squawk_ignore({rule!r}) needs a reason: why=...")
    context = op.get_context()
    if context.as_sql:
        # Straight to the output: alembic's static_output() adds a blank line, after which squawk no longer
        # applies the comment to the next statement.
        buffer = context.impl.output_buffer
        assert buffer is not None  # offline mode always writes somewhere
        buffer.write(f"-- squawk-ignore {rule} -- {reason}\n")


def render_revisions(cfg: Config) -> list[tuple[str, str]]:
    """Each revision's id and upgrade SQL (offline, PostgreSQL), base first."""
    from alembic import command
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(cfg)
    rendered = []
    for revision in reversed(list(script.walk_revisions())):
        down = revision.down_revision
        if isinstance(down, (tuple, list)):
            # A merge has no single range; alembic would render its other parents' branches with it.
            raise LintError(f"{revision.revision} merges {', '.join(down)}: merge revisions cannot be linted alone")
        buffer = io.StringIO()
        cfg.output_buffer = buffer
        try:
            command.upgrade(cfg, revision.revision if down is None else f"{down}:{revision.revision}", sql=True)
        finally:
            cfg.output_buffer = None
        rendered.append((revision.revision, buffer.getvalue()))
    return rendered


def _squawk_binary() -> str:
    """The squawk of this environment (next to its python), else one on PATH."""
    beside = Path(sysconfig.get_path("scripts")) / "squawk"
    found = str(beside) if beside.is_file() else shutil.which("squawk")
    if found is None:
        raise LintError("squawk is not installed: it is the squawk-cli package of the dev dependency group (uv sync)")
    return found


def _statement_at(sql: str, line: int) -> str:
    """The statement around 0-based `line` of alembic's output (statements are separated by blank lines)."""
    lines = sql.splitlines()
    start = line
    while start > 0 and lines[start - 1].strip():
        start -= 1
    end = line
    while end < len(lines) - 1 and lines[end + 1].strip():
        end += 1
    text = " ".join(part.strip() for part in lines[start : end + 1] if not part.strip().startswith("--"))
    return text if len(text) <= _STATEMENT_SHOWN else text[: _STATEMENT_SHOWN - 1] + "…"


def _check_opt_outs(revision: str, sql: str) -> list[Finding]:
    """Opt-outs that do not name one rule and say why, and file-wide ones."""
    findings = []
    for number, line in enumerate(sql.splitlines()):
        if (found := _IGNORE.match(line)) is None:
            continue
        statement = _statement_at(sql, min(number + 1, len(sql.splitlines()) - 1))
        rest = _IGNORE_WITH_REASON.fullmatch(found["rest"])
        if found["file"]:
            problem = "squawk-ignore-file is not allowed: opt out for one statement, with squawk_ignore(rule, why=...)"
        elif rest is None:
            problem = "an opt-out needs a reason: -- squawk-ignore RULE -- WHY (svc.lint.squawk_ignore)"
        elif not RULE.fullmatch(rest["rule"]):
            problem = f"an opt-out names one rule, not {rest['rule']!r}"
        else:
            continue
        findings.append(Finding(revision, "squawk-ignore", problem, statement))
    return findings


def _squawk(binary: str, revision: str, sql: str) -> list[Finding]:
    result = subprocess.run(  # noqa: S603 - the project's own squawk, on SQL the project's revisions produce
        [binary, "--config", str(SQUAWK_CONFIG), "--reporter", "json", "--stdin-filepath", f"{revision}.sql"],
        input=sql,
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        reported = json.loads(result.stdout) if result.returncode in (0, 1) else None
    except json.JSONDecodeError:
        reported = None
    if not isinstance(reported, list):
        raise LintError(f"squawk failed on {revision} (exit {result.returncode}): {result.stderr.strip()}")
    return [
        Finding(revision, item["rule_name"], item["message"], _statement_at(sql, item["line"])) for item in reported
    ]


def lint(settings: Settings, *, version_locations: Iterable[Path] = ()) -> tuple[int, list[Finding]]:
    """Lint every revision (svc's, the SERVICE's, `version_locations`'); how many were checked, and the findings."""
    from alembic.util import CommandError

    from svc.migrations import alembic_config

    cfg = alembic_config(settings, version_locations=version_locations)
    binary = _squawk_binary()
    try:
        rendered = render_revisions(cfg)
    except CommandError as exc:
        raise LintError(str(exc)) from exc
    findings = []
    for revision, sql in rendered:
        findings += _check_opt_outs(revision, sql)
        findings += _squawk(binary, revision, sql)
    return len(rendered), findings
