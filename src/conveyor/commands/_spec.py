"""Exec run settings and the journal identity of a command."""

from __future__ import annotations

import hashlib
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from .._base._exceptions import ConfigError
from .._journal._journal import Journal, JournalError, check_identity

if TYPE_CHECKING:
    from collections.abc import (
        Callable,
        Mapping,
    )

from ._jobs import (
    EXEC_KIND,
    JOBLOG_NAME,
    JOBS_DIR,
    JOURNAL_NAME,
    ExecContext,
    JobOutcome,
    Template,
    _argv,
    _check_template,
    _pack,
    _raw,
    _shell_text,
    _utf8,
)

# --- run settings, journal identity ---------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    template: list[str] | str
    ctx: ExecContext
    jobs: int
    retries: int
    halt_on_fail: bool
    keep_order: bool
    grace: float
    artifacts: Path
    joblog: Path
    journal: Path
    force: bool = False
    on_job: Callable[[JobOutcome], Any] | None = None
    keep_results: bool = True
    monitor: Any = None  # a conveyor.Monitor: resources sampled while the jobs run

    def settings(self) -> str:
        """What `retry_commands` needs to run the same jobs again (no env: secrets)."""
        t = self.template
        return orjson.dumps(
            {
                "template": _pack(t) if isinstance(t, str) else [_pack(a) for a in t],
                "shell": self.ctx.shell,
                "isolate": self.ctx.isolate,
                "timeout": self.ctx.timeout,
                "keep": self.ctx.keep,
                "kill_grace": self.ctx.kill_grace,
                "cwd": str(self.ctx.cwd) if self.ctx.cwd is not None else None,
                "jobs": self.jobs,
                "retries": self.retries,
                "halt_on_fail": self.halt_on_fail,
                "artifacts": str(self.artifacts),
                "joblog": str(self.joblog),
            }
        ).decode()


def _command_digest(template: Template, shell: bool) -> str:
    text = _shell_text(template) if shell else "\0".join(_argv(template))
    return hashlib.sha256(_raw(text)).hexdigest()


def _identity(template: Template, shell: bool) -> dict[str, str]:
    text = _shell_text(template) if shell else shlex.join(_argv(template))
    identity = {"kind": EXEC_KIND, "shell": "yes" if shell else "no", "command": text}
    try:
        if not _utf8(text):
            raise JournalError("not UTF-8")
        check_identity(identity)
    except JournalError:
        # Not storable as text (raw bytes, or what looks like a credential): a hash.
        del identity["command"]
        identity["command_sha256"] = _command_digest(template, shell)
    return identity


def is_exec_journal(identity: Mapping[str, str]) -> bool:
    """Whether a journal's identity says `conveyor exec` wrote it."""
    return identity.get("kind") == EXEC_KIND


def default_artifacts(template: Template, *, shell: bool = False) -> Path:
    """`./conveyor-exec-<hash of the command>`: the same command finds its journal again."""
    return Path(f"conveyor-exec-{_command_digest(template, shell)[:10]}")


_DEFAULTS: dict[str, Any] = {
    "jobs": None,
    "timeout": None,
    "retries": 0,
    "halt_on_fail": False,
    "isolate": "none",
    "keep": False,
    "shell": False,
    "artifacts": None,
    "joblog": None,
    "journal": None,
    "keep_order": False,
    "force": False,
    "on_job": None,
    "cwd": None,
    "env": None,
    "kill_grace": 5.0,
    "grace": 10.0,
    "keep_results": True,
    "monitor": None,
}


def _spec(command: Template, options: Mapping[str, Any]) -> _Spec:
    unknown = sorted(set(options) - set(_DEFAULTS))
    if unknown:
        raise ConfigError(unknown[0], options[unknown[0]], "not an option of run_commands")
    o = {**_DEFAULTS, **options}
    shell = bool(o["shell"])
    _check_template(command, shell)
    template: list[str] | str = (
        _shell_text(command) if shell else [os.fspath(a) for a in _argv(command)]
    )
    jobs = o["jobs"] if o["jobs"] is not None else (os.cpu_count() or 1)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= 100_000:
        raise ConfigError("jobs", jobs, "a whole number 1..100000")
    retries = o["retries"]
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 1000:
        raise ConfigError("retries", retries, "a whole number 0..1000")
    grace = o["grace"]
    if isinstance(grace, bool) or not isinstance(grace, int | float) or not grace >= 0:
        raise ConfigError("grace", grace, "seconds >= 0")
    art = Path(o["artifacts"] or default_artifacts(template, shell=shell)).absolute()
    ctx = ExecContext(
        isolate=o["isolate"],
        timeout=o["timeout"],
        shell=shell,
        keep=bool(o["keep"]),
        kill_grace=o["kill_grace"],
        cwd=Path(o["cwd"] or Path.cwd()).absolute(),
        artifacts_dir=art / JOBS_DIR,
        env=o["env"],
    )
    return _Spec(
        template=template,
        ctx=ctx,
        jobs=jobs,
        retries=retries,
        halt_on_fail=bool(o["halt_on_fail"]),
        keep_order=bool(o["keep_order"]),
        grace=float(grace),
        artifacts=art,
        joblog=Path(o["joblog"] or art / JOBLOG_NAME).absolute(),
        journal=Path(o["journal"] or art / JOURNAL_NAME).absolute(),
        force=bool(o["force"]),
        on_job=o["on_job"],
        keep_results=bool(o["keep_results"]),
        monitor=o["monitor"],
    )


def _open_journal(spec: _Spec) -> Journal:
    try:
        spec.artifacts.mkdir(parents=True, exist_ok=True)
        ignore = spec.artifacts / ".gitignore"
        if not ignore.exists():
            # Keeps the artifacts (and job worktrees) out of `git status` / `git add .`.
            ignore.write_text("# created by conveyor exec\n*\n")
        spec.journal.parent.mkdir(parents=True, exist_ok=True)
        spec.joblog.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            "artifacts", str(spec.artifacts), f"a directory conveyor can create and write ({exc})"
        ) from exc
    journal = Journal.open(
        spec.journal,
        identity=_identity(spec.template, spec.ctx.shell),
        force=spec.force,
        store_items=True,
    )
    try:
        journal.set_meta("exec", spec.settings())
    except BaseException:
        journal.close()
        raise
    return journal
