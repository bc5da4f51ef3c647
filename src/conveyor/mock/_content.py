"""What the simulated server answers: pure functions of the request body.

Everything here is deterministic and independent of server state, so a test
can recompute the exact answer any request should have received.

Token heuristic (`count_prompt_tokens`), documented because tests and the
rate limiter rely on it:

- text costs ``ceil(characters / 4)`` tokens;
- a chat message costs 4 tokens of overhead plus its text (string content, or
  the ``text`` of each content part; any non-text part such as an image costs
  a flat 85) plus its ``name``; a chat request adds 3 tokens of reply priming;
- a completions prompt / embeddings input is a string, a list of strings, a
  list of token ids (one token each) or a list of such lists;
- a responses ``input`` is a string (text cost) or a list of items costed like
  chat messages; ``instructions`` cost like one more message.
"""

from __future__ import annotations

import base64
import hashlib
import sys
from array import array
from typing import Any

import orjson

__all__ = [
    "EMBEDDING_DIM",
    "count_prompt_tokens",
    "embedding_vector",
    "expected_content",
    "expected_embeddings",
    "float32_base64",
]

EMBEDDING_DIM = 8
"""Length of embedding vectors unless the request asks for `dimensions`."""

_MESSAGE_OVERHEAD = 4
_REPLY_PRIMING = 3
_NON_TEXT_PART = 85


def _text_tokens(text: str) -> int:
    return (len(text) + 3) // 4


def _content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return _text_tokens(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, str):
                total += _text_tokens(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                total += _text_tokens(part["text"])
            else:
                total += _NON_TEXT_PART
        return total
    return 0


def _message_tokens(message: Any) -> int:
    if not isinstance(message, dict):
        return _MESSAGE_OVERHEAD + _content_tokens(message)
    name = message.get("name")
    extra = _text_tokens(name) if isinstance(name, str) else 0
    return _MESSAGE_OVERHEAD + _content_tokens(message.get("content")) + extra


def _prompt_tokens(prompt: Any) -> int:
    """A string, list of strings, token ids, or list of token-id lists."""
    if isinstance(prompt, str):
        return _text_tokens(prompt)
    if isinstance(prompt, list):
        total = 0
        for item in prompt:
            if isinstance(item, str):
                total += _text_tokens(item)
            elif isinstance(item, list):
                total += len(item)
            else:
                total += 1
        return total
    return 0


def count_prompt_tokens(body: dict[str, Any]) -> int:
    """Prompt tokens the mock charges for `body` (heuristic in the module doc)."""
    if "messages" in body:
        messages = body["messages"]
        if not isinstance(messages, list):
            return 0
        return _REPLY_PRIMING + sum(_message_tokens(m) for m in messages)
    if "prompt" in body:
        return _prompt_tokens(body["prompt"])
    total = 0
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        total += _MESSAGE_OVERHEAD + _text_tokens(instructions)
    items = body.get("input")
    if _is_embedding_input(items):
        total += _prompt_tokens(items)
    elif isinstance(items, list):
        total += sum(_message_tokens(m) for m in items)
    return total


def _is_embedding_input(value: Any) -> bool:
    """True for the shapes an embeddings `input` (or a completions prompt) takes."""
    if isinstance(value, str):
        return True
    if not isinstance(value, list):
        return False
    return all(isinstance(v, str | int | list) and not isinstance(v, bool) for v in value)


def _canonical(value: Any) -> bytes:
    # Sorted keys make the hash independent of the client's key order.
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


def expected_content(body: dict[str, Any]) -> str:
    """The text the mock answers for a chat, completions or responses body.

    Derived from a hash of the model and the request's messages (chat), prompt
    (completions) or input plus instructions (responses): the same request
    always gets the same text, different requests get different text. Its
    length does not follow `usage.completion_tokens`, which the server sets
    from its config and the request's token cap.

    Raises ValueError when the body has none of messages, prompt or input.
    """
    if "messages" in body:
        key: dict[str, Any] = {"messages": body["messages"]}
    elif "prompt" in body:
        key = {"prompt": body["prompt"]}
    elif "input" in body:
        key = {"input": body["input"], "instructions": body.get("instructions")}
    else:
        raise ValueError("request body has no 'messages', 'prompt' or 'input' to answer")
    key["model"] = body.get("model")
    digest = hashlib.blake2b(_canonical(key), digest_size=8).hexdigest()
    return f"Mock reply {digest}."


def embedding_vector(model: Any, item: Any, dim: int = EMBEDDING_DIM) -> list[float]:
    """Unit vector of `dim` float32-exact values derived from the model and one input.

    The values are exactly representable as float32, so the JSON floats and
    the base64 float32 encoding decode to the same numbers.
    """
    raw = hashlib.shake_256(_canonical({"model": model, "input": item})).digest(2 * dim)
    values = [
        int.from_bytes(raw[i : i + 2], "little") / 32767.5 - 1.0 for i in range(0, 2 * dim, 2)
    ]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return array("f", [v / norm for v in values]).tolist()


def _embedding_items(value: Any) -> list[Any]:
    # A flat list of token ids is one input; a list of strings or of token
    # lists is one input per element, as in the OpenAI API.
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [value]
    if isinstance(value, list):
        return list(value)
    return [value]


def expected_embeddings(body: dict[str, Any]) -> list[list[float]]:
    """The vectors the mock answers for an embeddings body, one per input."""
    if "input" not in body:
        raise ValueError("embeddings request body has no 'input'")
    dim = body.get("dimensions") or EMBEDDING_DIM
    model = body.get("model")
    return [embedding_vector(model, item, dim) for item in _embedding_items(body["input"])]


def float32_base64(vector: list[float]) -> str:
    """A vector as little-endian float32 bytes in base64 (`encoding_format: base64`)."""
    packed = array("f", vector)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")
