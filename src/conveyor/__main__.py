"""`python -m conveyor` is the `conveyor` command."""

from .cli import entry

entry()
