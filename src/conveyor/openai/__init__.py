"""OpenAI-compatible batches: Batch API files in and out, any compatible endpoint.

    from conveyor.openai import run_file
    report = run_file("requests.jsonl", output="results.jsonl", rpm=500, tpm=200_000)

Structured outputs: `run_file(..., schema=MyModel)` (a Pydantic model or a JSON
Schema) validates every answer and re-asks invalid ones; `read_parsed(output,
MyModel)` then yields typed results.

At half price through the provider's Batch API, done by a deadline regardless
(the same output, each custom_id once; resumable):

    run_file("requests.jsonl", output="results.jsonl", mode="batch", deadline="6h")

Works with OpenAI, vLLM, Ollama, llama.cpp and LiteLLM proxies
(`base_url=` or `OPENAI_BASE_URL`; key from `OPENAI_API_KEY` or `api_key_env=`).
"""

import typing as _typing

from .._base._lazy import LazyExports as _LazyExports

if _typing.TYPE_CHECKING:
    from ._batchfile import (
        BadLine,
        FileCheck,
        RequestLine,
        format_error,
        format_response,
        read_output,
        read_requests,
        validate_file,
    )
    from ._http import Answer, AuthError, Endpoint, HTTPClientError, HTTPRetryable, OpenAIClient
    from ._run import RunSettings, arun_file, default_journal_path, run_file
    from ._structured import ParsedLine, read_parsed
    from ._template import PromptTemplate, Record, build_requests, read_records
    from ._tokens import estimate_prompt_tokens, estimate_request_tokens, tokenizer_name

# Imported on first use (`_base._lazy`): the checks before a run and `--help`
# reach `conveyor.openai._probe` without loading aiohttp and the whole run.
_lazy = _LazyExports(
    __name__,
    globals(),
    {
        "Answer": "._http",
        "AuthError": "._http",
        "BadLine": "._batchfile",
        "Endpoint": "._http",
        "FileCheck": "._batchfile",
        "HTTPClientError": "._http",
        "HTTPRetryable": "._http",
        "OpenAIClient": "._http",
        "ParsedLine": "._structured",
        "PromptTemplate": "._template",
        "Record": "._template",
        "RequestLine": "._batchfile",
        "RunSettings": "._run",
        "arun_file": "._run",
        "build_requests": "._template",
        "default_journal_path": "._run",
        "estimate_prompt_tokens": "._tokens",
        "estimate_request_tokens": "._tokens",
        "format_error": "._batchfile",
        "format_response": "._batchfile",
        "read_output": "._batchfile",
        "read_parsed": "._structured",
        "read_records": "._template",
        "read_requests": "._batchfile",
        "run_file": "._run",
        "tokenizer_name": "._tokens",
        "validate_file": "._batchfile",
    },
)

__all__ = [
    "Answer",
    "AuthError",
    "BadLine",
    "Endpoint",
    "FileCheck",
    "HTTPClientError",
    "HTTPRetryable",
    "OpenAIClient",
    "ParsedLine",
    "PromptTemplate",
    "Record",
    "RequestLine",
    "RunSettings",
    "arun_file",
    "build_requests",
    "default_journal_path",
    "estimate_prompt_tokens",
    "estimate_request_tokens",
    "format_error",
    "format_response",
    "read_output",
    "read_parsed",
    "read_records",
    "read_requests",
    "run_file",
    "tokenizer_name",
    "validate_file",
]


def __getattr__(name: str) -> _typing.Any:
    return _lazy.load(name)


def __dir__() -> list[str]:
    return _lazy.names(__all__)
