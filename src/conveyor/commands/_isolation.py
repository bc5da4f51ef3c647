"""Where a job runs: as given, in a fresh directory, or in its own git worktree.

A worktree job gets `git worktree add -b conveyor/<key> <path> <HEAD>` from
the repository containing its cwd. After a clean success the worktree is
removed, and its branch too when the job left no commit on it; after a
failure, a cancellation, uncommitted changes or `keep=True`, both stay and
the result says where.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ._expand import branch_name
from ._types import IsolationError

__all__ = ["GIT_ENV_VARS", "Isolation", "Workspace", "finish", "prepare"]

Isolation = Literal["none", "dir", "worktree"]

log = logging.getLogger("conveyor.commands")

#: Variables that pin git to one repository; a worktree job must not inherit them.
GIT_ENV_VARS = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_COMMON_DIR",
    "GIT_PREFIX",
)

_LOCK_ATTEMPTS = 12
_MAX_BRANCH_ATTEMPTS = 100


@dataclass(slots=True)
class Workspace:
    """The directory a job runs in, and what to clean up afterwards."""

    kind: Isolation
    cwd: Path
    root: Path | None = None
    repo: Path | None = None
    branch: str | None = None
    base: str | None = None


def _git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in GIT_ENV_VARS}
    # Lock errors are recognised by their text, so keep git's messages in English.
    env["LC_ALL"] = "C"
    env["GIT_TERMINAL_PROMPT"] = "0"
    return env


async def _finish_subprocess(
    proc: asyncio.subprocess.Process,
) -> tuple[bytes, bytes]:
    # A git command cut off half-way leaves a lock file or a half-made worktree;
    # let it finish (it is quick), then honour the cancellation.
    task = asyncio.ensure_future(proc.communicate())
    cancelled = False
    while True:
        try:
            out, err = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return out, err


def _is_transient(err: str) -> bool:
    """A failure caused by another git process working on the same repository."""
    if ".lock" in err and any(
        s in err for s in ("File exists", "Unable to create", "could not lock", "cannot lock")
    ):
        return "reference already exists" not in err
    # `worktree add` reads every .git/worktrees/* entry; one being added or
    # removed at that moment makes it fail half-way through.
    return "worktrees/" in err and any(
        s in err for s in ("failed to read", "No such file", "could not open", "unable to")
    )


def _backoff(attempt: int) -> float:
    # Jittered so that jobs which collided once do not collide again.
    return min(0.5, 0.02 * 2.0**attempt) * (0.5 + random.random())


_repo_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Path, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def _repo_lock(repo: Path) -> asyncio.Lock:
    """One lock per repository and event loop around worktree add/remove.

    Git does not lock `.git/worktrees` as a whole, so jobs of this process
    take turns; other processes are handled by retrying transient failures.
    """
    per_loop = _repo_locks.setdefault(asyncio.get_running_loop(), {})
    return per_loop.setdefault(repo.resolve(), asyncio.Lock())


async def _git(cwd: Path, *args: str, key: str, retry: bool = True) -> tuple[int, str, str]:
    """Run git, retrying briefly (when `retry`) while another git holds the repository."""
    for attempt in range(_LOCK_ATTEMPTS):
        try:
            proc = await asyncio.create_subprocess_exec(
                "git",
                *args,
                cwd=cwd,
                env=_git_env(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except FileNotFoundError as exc:
            raise IsolationError(
                "isolate='worktree' needs git, and no `git` was found on PATH; install git",
                key=key,
            ) from exc
        out_b, err_b = await _finish_subprocess(proc)
        out = out_b.decode("utf-8", "replace").strip()
        err = err_b.decode("utf-8", "replace").strip()
        rc = proc.returncode if proc.returncode is not None else -1
        if retry and rc != 0 and _is_transient(err) and attempt + 1 < _LOCK_ATTEMPTS:
            await asyncio.sleep(_backoff(attempt))
            continue
        return rc, out, err
    raise AssertionError("unreachable")  # pragma: no cover


def _inside(cwd: Path, repo: Path) -> Path:
    """Where cwd sits inside the repository: a job started in repo/sub runs in <worktree>/sub."""
    try:
        return cwd.resolve().relative_to(repo.resolve())
    except ValueError:
        return Path()


async def _make_worktree(key: str, job_dir: Path, cwd: Path) -> Workspace:
    rc, top, err = await _git(cwd, "rev-parse", "--show-toplevel", key=key)
    if rc != 0:
        raise IsolationError(
            f"isolate='worktree' needs a git repository, and {cwd} is not inside one "
            f"({err or 'git rev-parse failed'}); run `git init` and commit, or set cwd= "
            "to a directory inside a repository",
            key=key,
        )
    repo = Path(top)
    rc, head, err = await _git(repo, "rev-parse", "--verify", "--quiet", "HEAD^{commit}", key=key)
    if rc != 0 or not head:
        raise IsolationError(
            f"the git repository {repo} has no commit yet, so there is nothing to branch "
            "a worktree from; commit once, then run again",
            key=key,
        )
    sub = _inside(cwd, repo)
    async with _repo_lock(repo):
        root, branch = await _add_worktree(repo, head, key, job_dir)
    return Workspace("worktree", root / sub, root=root, repo=repo, branch=branch, base=head)


async def _add_worktree(repo: Path, head: str, key: str, job_dir: Path) -> tuple[Path, str]:
    attempt = 1
    transient = 0
    while attempt <= _MAX_BRANCH_ATTEMPTS:
        branch = branch_name(key, attempt)
        path = Path(tempfile.mkdtemp(prefix="worktree-", dir=job_dir))
        rc, _, err = await _git(
            repo, "worktree", "add", "-b", branch, str(path), head, key=key, retry=False
        )
        if rc == 0:
            return path, branch
        shutil.rmtree(path, ignore_errors=True)
        if "already exists" in err and f"'{branch}'" in err:
            attempt += 1
            continue
        if _is_transient(err) and transient + 1 < _LOCK_ATTEMPTS:
            # git made the branch before failing on the worktree: drop it and try
            # the same name again. `branch -D` refuses a branch checked out anywhere.
            await _git(repo, "branch", "-D", branch, key=key)
            await asyncio.sleep(_backoff(transient))
            transient += 1
            continue
        raise IsolationError(
            f"`git worktree add -b {branch} {path} {head[:12]}` failed in {repo}: {err}; "
            "see `git worktree list` and `git worktree prune`",
            key=key,
        )
    raise IsolationError(
        f"branches {branch_name(key)} to {branch_name(key, _MAX_BRANCH_ATTEMPTS)} all exist "
        f"in {repo}; delete old ones (`git branch -D`) or use other keys",
        key=key,
    )


async def prepare(isolate: Isolation, key: str, job_dir: Path, cwd: Path) -> Workspace:
    """Set up the job's working directory; raises IsolationError when it cannot."""
    if isolate == "none":
        return Workspace("none", cwd)
    if isolate == "dir":
        root = Path(tempfile.mkdtemp(prefix="work-", dir=job_dir))
        return Workspace("dir", root, root=root)
    return await _make_worktree(key, job_dir, cwd)


async def finish(
    ws: Workspace, *, success: bool, keep: bool, key: str
) -> tuple[Path | None, str | None]:
    """Clean up after the job; returns (workspace kept, branch still existing)."""
    if ws.kind == "none" or ws.root is None:
        return None, None
    if keep or not success:
        return ws.root, ws.branch
    if ws.kind == "dir":
        # A job's directory can be large (a build, node_modules): keep the loop free.
        await asyncio.to_thread(shutil.rmtree, ws.root, ignore_errors=True)
        return None, None
    assert ws.repo is not None
    assert ws.branch is not None
    rc, status, err = await _git(
        ws.root, "status", "--porcelain", "--untracked-files=normal", key=key
    )
    if rc != 0 or status:
        # Removing would throw away work the job did not commit: keep it instead.
        log.warning(
            "job %r succeeded but left uncommitted changes in its worktree %s (branch %s); "
            "kept it: commit or remove it with `git worktree remove --force %s`",
            key,
            ws.root,
            ws.branch,
            ws.root,
        )
        return ws.root, ws.branch
    _, tip, _ = await _git(ws.root, "rev-parse", "HEAD", key=key)
    async with _repo_lock(ws.repo):
        rc, _, err = await _git(ws.repo, "worktree", "remove", "--force", str(ws.root), key=key)
        if rc != 0:
            log.warning("job %r: could not remove its worktree %s: %s", key, ws.root, err)
            return ws.root, ws.branch
        if tip != ws.base:
            return None, ws.branch
        # No commit on the branch: it holds nothing the base does not.
        rc, _, err = await _git(ws.repo, "branch", "-D", ws.branch, key=key)
    if rc != 0:
        log.warning("job %r: could not delete its branch %s: %s", key, ws.branch, err)
        return None, ws.branch
    return None, None
