"""_batchapi: OpenAI's Files and Batch API served locally, shared by `conveyor mock` and
`conveyor serve`: the objects (`FileRecord`, `BatchRecord`), their store (in memory or on
disk), the lifecycle (`BatchService`: validating -> in_progress -> finalizing -> completed,
failed, expired, cancelling -> cancelled), the aiohttp routes (`dispatch`) and the
`Processor` a server plugs in to answer a batch's lines. Imports only _base.

References (shapes and codes are checked against them; see each module):
- https://platform.openai.com/docs/api-reference/batch (the Batch object, create/list/cancel)
- https://platform.openai.com/docs/api-reference/files (the File object, upload, content)
- https://platform.openai.com/docs/guides/batch (lifecycle, expiry, output/error files)
- openai-python `src/openai/types/batch.py`, `batch_error.py`, `file_object.py`
"""

from ._errors import ApiError, error_body, json_object
from ._objects import BatchRecord, FileRecord
from ._routes import dispatch, is_batch_path
from ._service import BatchService, Job, Limits, Processor
from ._store import Store

__all__ = [
    "ApiError",
    "BatchRecord",
    "BatchService",
    "FileRecord",
    "Job",
    "Limits",
    "Processor",
    "Store",
    "dispatch",
    "error_body",
    "is_batch_path",
    "json_object",
]
