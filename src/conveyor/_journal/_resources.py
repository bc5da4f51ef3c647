"""A run's resource samples (`monitor=`) kept in its journal, for `conveyor report`.

Each session of a run (a first run and every resume) appends its sampled
series to the journal's meta entry `resources`: a JSON list of sessions,
each with its wall-clock start, so the report can lay them on one time axis.
Only the last `MAX_SESSIONS` are kept; each session is already bounded by the
sampler (`_core._sampler`), so the entry stays small.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from ._journal import Journal

__all__ = ["MAX_SESSIONS", "META_KEY", "add_resource_session", "resource_sessions"]

META_KEY = "resources"
MAX_SESSIONS = 20


def resource_sessions(journal: Journal) -> list[dict[str, Any]]:
    """The sessions stored so far (oldest first); [] when none or unreadable."""
    raw = journal.get_meta(META_KEY)
    if not raw:
        return []
    try:
        found = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return []
    return [s for s in found if isinstance(s, dict)] if isinstance(found, list) else []


def add_resource_session(journal: Journal, started_at: float, section: dict[str, Any]) -> None:
    """Append one session's `resources` section (as the report carries it)."""
    session = {"started_at": started_at, **section}
    sessions = [*resource_sessions(journal), session][-MAX_SESSIONS:]
    journal.set_meta(META_KEY, orjson.dumps(sessions, default=repr).decode())
