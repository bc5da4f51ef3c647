"""`conveyor serve`: the flags; the server is `conveyor.serve`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from .._base._exceptions import ConfigError
from ._common import cli_errors
from ._run import _ConcurrencyType

__all__ = ["serve_cmd"]


@click.command("serve")
@click.option(
    "--upstream", required=True, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("conveyor-serve-data"),
    show_default=True,
    help="Directory for files, batches and their journals (kept across restarts).",
)
@click.option(
    "--api-key-env",
    default="CONVEYOR_SERVE_API_KEY",
    show_default=True,
    help="Environment variable holding the bearer key clients must send.",
)
@click.option("--no-auth", is_flag=True, help="Accept requests without a key (loopback use).")
@click.option(
    "--upstream-key-env",
    default="OPENAI_API_KEY",
    show_default=True,
    help="Environment variable holding the upstream's key (sent only to the upstream).",
)
@click.option(
    "-c",
    "--concurrency",
    type=_ConcurrencyType(),
    default="100",
    show_default=True,
    help="Requests in flight per batch, or 'auto' (found from the upstream's latency).",
)
@click.option(
    "--rpm", type=float, help="The upstream's requests per minute, shared by all batches."
)
@click.option("--tpm", type=float, help="The upstream's tokens per minute, shared by all batches.")
@click.option(
    "--max-upload-bytes",
    type=click.IntRange(min=1),
    default=512 * 1024 * 1024,
    show_default=True,
    help="Largest upload accepted (larger ones get a 413).",
)
@click.option("--allow-remote", is_flag=True, help="Allow a --host other than loopback.")
@cli_errors
def serve_cmd(api_key_env: str, no_auth: bool, **o: Any) -> None:
    """Serve OpenAI's Files and Batch API in front of any OpenAI-compatible server;
    every other /v1 request is forwarded to it. Batches survive restarts."""
    from ..serve import ServeSettings, serve

    key = None
    if not no_auth:
        key = os.environ.get(api_key_env)
        if not key:
            raise ConfigError(
                "api-key-env",
                api_key_env,
                f"set the environment variable {api_key_env} to the key clients must send, "
                "or pass --no-auth to accept requests without one",
            )
    serve(ServeSettings(api_key=key, **o))
