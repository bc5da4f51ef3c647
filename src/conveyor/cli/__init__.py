"""The `conveyor` command.

Subcommands live in their own modules and are imported only when used, so
`conveyor --help` stays instant and one command's dependencies never slow
another.
"""

from ._main import COMMANDS, LazyGroup, entry, main

__all__ = ["COMMANDS", "LazyGroup", "entry", "main"]
