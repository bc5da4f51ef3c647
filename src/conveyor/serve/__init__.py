"""`conveyor serve`: OpenAI's Batch API, locally, in front of any OpenAI-compatible server.

    from conveyor.serve import BatchServer, ServeSettings
    async with BatchServer(ServeSettings(upstream="http://127.0.0.1:8000/v1")) as server:
        ...  # the official SDK at server.base_url: files.create, batches.create, ...

The Files and Batch API objects, store and routes are `conveyor._batchapi`'s (shared
with `conveyor mock`); each batch's lines run through `openai.arun_file` with a journal
(`serve._processor`), so a killed server resumes every batch without sending a finished
line again. Everything lives under the data directory.
"""

from ._server import BatchServer, ServeSettings, serve

__all__ = ["BatchServer", "ServeSettings", "serve"]
