"""The options of every entry point are declared once (`conveyor._core._settings`)."""

from __future__ import annotations

import inspect

import pytest

import conveyor
from conveyor._core._options import build_options
from conveyor._core._settings import (
    ClusterOptions,
    EngineOptions,
    RayOptions,
    RunOptions,
    parse_settings,
)
from conveyor.ray import arun_ray, run_ray, stream_ray

# Set by front ends, not by users: auto_until_limits is how `conveyor run` makes
# "auto" its default (`openai._run.DEFAULT_AUTO`).
_INTERNAL = {"previous", "shared_limiter", "validate_item", "auto_until_limits"}


def test_engine_options_are_build_options_parameters() -> None:
    """Every engine option a user may pass is a typed key of `EngineOptions`, and the
    other way round: a new option of `build_options` cannot miss the public signatures."""
    params = set(inspect.signature(build_options).parameters) - _INTERNAL
    assert set(EngineOptions.__annotations__) == params


@pytest.mark.parametrize(
    ("fn", "options"),
    [
        (conveyor.run, RunOptions),
        (conveyor.arun, RunOptions),
        (conveyor.stream, RunOptions),
        (conveyor.astream, RunOptions),
        (run_ray, RayOptions),
        (arun_ray, RayOptions),
        (stream_ray, RayOptions),
    ],
)
def test_entry_points_take_the_one_typed_options(fn: object, options: type) -> None:
    """Each entry point's `**options` is `Unpack` of the shared TypedDict (what an IDE
    and mypy read), so no entry point keeps its own copy of the option list."""
    param = inspect.signature(fn).parameters["options"]  # type: ignore[arg-type]
    assert param.kind is inspect.Parameter.VAR_KEYWORD
    assert param.annotation == f"Unpack[{options.__name__}]"


def test_ray_options_are_engine_and_cluster_options() -> None:
    """Ray's entry points take the engine's options plus the cluster's, nothing else."""
    assert set(RayOptions.__annotations__) == set(EngineOptions.__annotations__) | set(
        ClusterOptions.__annotations__
    )


def test_settings_split_by_user() -> None:
    """`parse_settings` hands each option to the part that uses it."""
    s = parse_settings(
        {"backend": "ray", "concurrency": 4, "actors": 3, "journal": "j.db", "rerun": "failed"}
    )
    assert s.backend == "ray"
    assert s.engine == {"concurrency": 4}
    assert s.cluster == {"actors": 3}
    assert s.journal == "j.db"
    assert conveyor.Status.FAILED in s.rerun


def test_cluster_option_on_the_local_backend_is_refused() -> None:
    """A Ray option without backend="ray" is a misspelt option on this machine."""
    with pytest.raises(TypeError, match="actors"):
        parse_settings({"actors": 2})


def test_ray_entry_points_take_no_journal() -> None:
    """`run_ray` has no journal (that is `conveyor.run(journal=, backend="ray")`)."""
    with pytest.raises(TypeError, match="journal"):
        parse_settings({"journal": "x.db"}, backend="ray", pipeline=False)
