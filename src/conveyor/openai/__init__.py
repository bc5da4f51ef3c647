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
