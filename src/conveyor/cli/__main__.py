"""`python -m conveyor.cli` is the `conveyor` command."""

from ._main import entry

entry()
