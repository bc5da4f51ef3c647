"""Shell commands as jobs: timeout kill (exit 124), isolation, GNU parallel strings, job log.

```python
task = CommandTask(["agent", "--task", "fix-42"], key="fix-42", timeout=600,
                   isolate="worktree", artifacts_dir=Path("runs/1"))
result = await task()          # CommandResult; raises CommandFailed / CommandTimeout
print(result.exit_code, result.stdout_text(), result.branch)
```

Each job starts in its own session and process group. On timeout, or when
the awaiting coroutine is cancelled, the whole group gets SIGTERM, then
SIGKILL after `kill_grace` seconds, so grandchildren die too; the call
returns (or re-raises the cancellation) only after the process is reaped.
Output goes to `<artifacts_dir>/<key>/stdout` and `stderr` (a fresh temp
directory when no `artifacts_dir` is given), never through memory. Without
`shell=True` no shell is involved, so no input can inject a command.

Background processes that a command leaves running after it exits on its
own are not touched (as with GNU parallel); only a timeout or a
cancellation kills the group.

The job sees `CONVEYOR_JOB_KEY` and `CONVEYOR_JOB_DIR` (its artifacts
directory, for files it wants to leave behind) in its environment.
"""

from ._batch import ExecContext, arun_commands, command_fn, retry_commands, run_commands
from ._expand import expand, expand_shell
from ._isolation import Isolation
from ._joblog import JOBLOG_HEADER, JobLog, JobLogEntry, read_joblog
from ._task import CommandTask
from ._types import (
    TIMEOUT_EXIT_CODE,
    CommandFailed,
    CommandNotFound,
    CommandResult,
    CommandTimeout,
    IsolationError,
)

__all__ = [
    "CommandFailed",
    "CommandNotFound",
    "CommandResult",
    "CommandTask",
    "CommandTimeout",
    "ExecContext",
    "Isolation",
    "IsolationError",
    "JOBLOG_HEADER",
    "JobLog",
    "JobLogEntry",
    "TIMEOUT_EXIT_CODE",
    "arun_commands",
    "command_fn",
    "expand",
    "expand_shell",
    "read_joblog",
    "retry_commands",
    "run_commands",
]
