"""Token estimates for OpenAI-style request bodies, before they are sent.

The scheduler reserves ``prompt + max_output`` tokens per request against a
tokens-per-minute budget, the way providers do, and settles the difference
from the response's ``usage``. So an estimate needs to be cheap and close,
not exact, and it must never raise on a body a user wrote by hand.

Counting text:

- With ``tiktoken`` installed *and* the encoding's file already in its cache
  (``TIKTOKEN_CACHE_DIR``, else ``DATA_GYM_CACHE_DIR``, else
  ``<tmp>/data-gym-cache``; the file is named by the sha1 of the encoding's
  URL and must match tiktoken's sha256), text is counted exactly. The file
  is checked before ``tiktoken.get_encoding`` is called, because tiktoken
  downloads whatever is missing or corrupt: conveyor never downloads.
- Otherwise a heuristic: ``ceil(chars / 4)`` for ASCII; for other text the
  larger of that and ``ceil(utf8_bytes / 4.5)``, which is ``chars / 1.5`` for
  CJK (3 bytes a character) and stays ``chars / 4`` for accented Latin.

Fixed costs (OpenAI's published accounting, rounded up):

- 3 tokens per chat/responses request (reply priming), 4 per message, 1 per
  ``name``;
- an image part is 765 tokens (``detail`` high/auto on a 1024x1024 image:
  85 + 4 tiles x 170) or 85 with ``"detail": "low"`` - the image's size is
  not known without fetching it;
- tool definitions and JSON schemas count as their JSON text.

Output: ``max_completion_tokens`` / ``max_output_tokens`` / ``max_tokens``,
else `DEFAULT_MAX_OUTPUT_TOKENS` (1024): providers reserve the maximum when
none is given, so the estimate does too. Embeddings produce no output tokens.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import tempfile
from typing import TYPE_CHECKING, Any, Final

import orjson

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "DEFAULT_MAX_OUTPUT_TOKENS",
    "EXACT_MAX_CHARS",
    "IMAGE_TOKENS",
    "IMAGE_TOKENS_LOW",
    "TokenCounter",
    "encoding_for_model",
    "estimate_prompt_tokens",
    "estimate_request_tokens",
    "heuristic_tokens",
    "max_output_tokens",
    "request_multiplier",
    "tokenizer_name",
]

DEFAULT_MAX_OUTPUT_TOKENS: Final = 1024
IMAGE_TOKENS: Final = 765
IMAGE_TOKENS_LOW: Final = 85
TOKENS_PER_REQUEST: Final = 3
TOKENS_PER_MESSAGE: Final = 4
TOKENS_PER_NAME: Final = 1
# Texts longer than this are estimated, not tokenized: tiktoken's list of ids
# costs ~40 bytes a token (a 50 MB text would take 500 MB) and its merges slow
# down on long unbroken runs; 1M characters is past every context window's use.
EXACT_MAX_CHARS: Final = 1_000_000

# tiktoken's source URL and sha256 for the encodings conveyor maps models to
# (tiktoken_ext/openai_public.py). The cache file name is sha1(url).
_ENCODING_FILES: Final[dict[str, tuple[str, str]]] = {
    "cl100k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
    "o200k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
}

_O200K_PREFIXES: Final = ("gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4")
_CL100K_PREFIXES: Final = (
    "gpt-4",
    "gpt-3.5",
    "gpt-35",
    "text-embedding-",
    "davinci-002",
    "babbage-002",
)
_TEXT_PART_TYPES: Final = frozenset({"text", "input_text", "output_text"})
_IMAGE_PART_TYPES: Final = frozenset({"image_url", "input_image"})


def encoding_for_model(model: Any) -> str:
    """The tiktoken encoding a model uses; ``o200k_base`` for unknown models.

    Unknown (open) models get the newest large vocabulary as the closer
    guess. ``ft:`` and ``provider/`` prefixes (LiteLLM style) are ignored.
    """
    if not isinstance(model, str) or not model:
        return "o200k_base"
    m = model.lower().removeprefix("ft:").rsplit("/", 1)[-1]
    if m.startswith(_O200K_PREFIXES):
        return "o200k_base"
    if m.startswith(_CL100K_PREFIXES):
        return "cl100k_base"
    return "o200k_base"


def heuristic_tokens(text: str) -> int:
    """Tokens in ``text`` without a tokenizer (see the module docstring)."""
    n = len(text)
    if n == 0:
        return 0
    by_chars = (n + 3) // 4
    if text.isascii():
        return by_chars
    nbytes = len(text.encode("utf-8", "surrogatepass"))
    return max(by_chars, math.ceil(nbytes / 4.5))


def _tiktoken_cache_dir() -> str:
    # The same lookup order as tiktoken.load.read_file_cached.
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        return os.environ["TIKTOKEN_CACHE_DIR"]
    if "DATA_GYM_CACHE_DIR" in os.environ:
        return os.environ["DATA_GYM_CACHE_DIR"]
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def _cached_offline(name: str) -> bool:
    """True if tiktoken would load ``name`` from its cache without any download."""
    source = _ENCODING_FILES.get(name)
    cache_dir = _tiktoken_cache_dir()
    if source is None or cache_dir == "":
        return False  # an empty dir disables tiktoken's cache: it would download
    url, sha256 = source
    path = os.path.join(cache_dir, hashlib.sha1(url.encode()).hexdigest())
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return False
    # tiktoken deletes and re-fetches a file whose hash does not match.
    return hashlib.sha256(data).hexdigest() == sha256


class TokenCounter:
    """Counts text tokens with a cached tiktoken encoder, or the heuristic.

    The offline check runs once per encoding and its answer is kept, so
    per-call cost is one dict lookup plus the count.
    """

    def __init__(self, *, use_tiktoken: bool = True) -> None:
        self._use_tiktoken = use_tiktoken
        self._encoders: dict[str, Callable[[str], list[int]] | None] = {}
        self._by_model: dict[str, Callable[[str], int]] = {}

    def _encoder(self, name: str) -> Callable[[str], list[int]] | None:
        try:
            return self._encoders[name]
        except KeyError:
            pass
        enc: Callable[[str], list[int]] | None = None
        if self._use_tiktoken and _cached_offline(name):
            try:
                import tiktoken  # optional: the [tokens] extra

                enc = tiktoken.get_encoding(name).encode_ordinary
            except Exception:  # any failure here means "use the heuristic"
                enc = None
        self._encoders[name] = enc
        return enc

    def tokenizer_name(self, model: Any = None) -> str:
        """``tiktoken:<encoding>`` when that encoding is usable offline, else ``heuristic``."""
        name = encoding_for_model(model)
        return f"tiktoken:{name}" if self._encoder(name) is not None else "heuristic"

    def count(self, text: str, model: Any = None) -> int:
        """Tokens in one text for ``model``."""
        return self.counter_for(model)(text) if text else 0

    def counter_for(self, model: Any) -> Callable[[str], int]:
        """`count` for one model, its encoder looked up once (kept per model name:
        a run has a handful, so the table stays small)."""
        if isinstance(model, str) and (known := self._by_model.get(model)) is not None:
            return known
        enc = self._encoder(encoding_for_model(model))
        fn: Callable[[str], int] = heuristic_tokens if enc is None else _counting(enc)
        if isinstance(model, str) and len(self._by_model) < _MODELS_KEPT:
            self._by_model[model] = fn
        return fn


_MODELS_KEPT: Final = 256


def _counting(enc: Callable[[str], list[int]]) -> Callable[[str], int]:
    def count(text: str) -> int:
        if not text:
            return 0
        return heuristic_tokens(text) if len(text) > EXACT_MAX_CHARS else len(enc(text))

    return count


_DEFAULT_COUNTER = TokenCounter()


def tokenizer_name(model: Any = None) -> str:
    """Which method the module-level estimates use for ``model``."""
    return _DEFAULT_COUNTER.tokenizer_name(model)


@functools.lru_cache(maxsize=64)  # a run has one or two endpoints; three calls a request
def _kind(endpoint: str) -> str:
    e = endpoint.rstrip("/")
    for kind in ("chat/completions", "completions", "embeddings", "responses"):
        if e == kind or e.endswith("/" + kind):
            return kind
    return "other"


class _Estimator:
    """Walks one body; every branch checks types, so odd bodies cost tokens, not errors."""

    __slots__ = ("count_text", "model")

    def __init__(self, counter: TokenCounter, model: Any) -> None:
        self.model = model
        self.count_text = counter.counter_for(model)

    def text(self, value: Any) -> int:
        return self.count_text(value) if isinstance(value, str) else 0

    def json(self, value: Any) -> int:
        if value is None:
            return 0
        try:
            text = orjson.dumps(value).decode()
        except TypeError:  # orjson.JSONEncodeError: huge ints, deep nesting
            text = str(value)
        return self.count_text(text)

    def part(self, part: Any) -> int:
        if isinstance(part, str):
            return self.text(part)
        if not isinstance(part, dict):
            return 0
        kind = part.get("type")
        if kind in _IMAGE_PART_TYPES:
            image = part.get("image_url")
            detail = image.get("detail") if isinstance(image, dict) else part.get("detail")
            return IMAGE_TOKENS_LOW if detail == "low" else IMAGE_TOKENS
        if kind in _TEXT_PART_TYPES or "text" in part:
            return self.text(part.get("text"))
        return 0

    def content(self, content: Any) -> int:
        if isinstance(content, list):
            return sum(self.part(p) for p in content)
        return self.text(content)

    def message(self, msg: Any) -> int:
        total = TOKENS_PER_MESSAGE
        if not isinstance(msg, dict):
            return total
        content = msg.get("content")
        if isinstance(content, str):  # the usual message: its text (one call, not two)
            total += self.count_text(content)
        else:
            total += self.content(content)
        name = msg.get("name")
        if isinstance(name, str):
            total += TOKENS_PER_NAME + self.text(name)
        calls = msg.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict):
                    total += self.text(fn.get("name")) + self.text(fn.get("arguments"))
        # Responses API items that are not messages carry their text here.
        if "output" in msg:
            total += self.text(msg["output"])
        if "arguments" in msg:
            total += self.text(msg["arguments"])
        return total

    def token_list(self, value: Any) -> int:
        """A prompt/input that is text, a list of texts, or token ids."""
        if isinstance(value, str):
            return self.text(value)
        if not isinstance(value, list):
            return 0
        total = 0
        for item in value:
            if isinstance(item, str):
                total += self.text(item)
            elif isinstance(item, int):
                total += 1
            elif isinstance(item, list):
                total += len(item)
        return total

    def tools(self, body: dict[str, Any]) -> int:
        total = 0
        if "tools" in body:  # (most bodies have none of these: no call each)
            total += self.json(body["tools"])
        if "functions" in body:
            total += self.json(body["functions"])
        fmt = body.get("response_format")
        if isinstance(fmt, dict):
            total += self.json(fmt.get("json_schema"))
        text = body.get("text")
        if isinstance(text, dict):
            total += self.json(text.get("format"))
        return total

    def estimate(self, body: dict[str, Any], kind: str) -> int:
        if kind == "chat/completions":
            msgs = body.get("messages")
            total = TOKENS_PER_REQUEST + self.tools(body)
            if isinstance(msgs, list):
                message = self.message
                for m in msgs:
                    total += message(m)
            return total
        if kind == "completions":
            return self.token_list(body.get("prompt")) + self.text(body.get("suffix"))
        if kind == "embeddings":
            return self.token_list(body.get("input"))
        if kind == "responses":
            total = TOKENS_PER_REQUEST + self.text(body.get("instructions")) + self.tools(body)
            items = body.get("input")
            if isinstance(items, list):
                total += sum(self.message(m) for m in items)
            else:
                total += self.text(items)
            return total
        return self.json(body)


def estimate_prompt_tokens(body: Any, endpoint: str, *, counter: TokenCounter | None = None) -> int:
    """Estimated input tokens of one request body (``endpoint`` with or without ``/v1``).

    Never raises; a non-object body is 0.
    """
    if not isinstance(body, dict):
        return 0
    est = _Estimator(counter or _DEFAULT_COUNTER, body.get("model"))
    return est.estimate(body, _kind(endpoint))


def _positive_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


_OUTPUT_LIMITS: Final = ("max_completion_tokens", "max_output_tokens", "max_tokens")


def max_output_tokens(body: Any, endpoint: str) -> int:
    """Output tokens one completion may use: the body's limit, else the default."""
    if _kind(endpoint) == "embeddings":
        return 0
    if isinstance(body, dict):
        for key in _OUTPUT_LIMITS:
            limit = _positive_int(body.get(key))
            if limit is not None:
                return limit
    return DEFAULT_MAX_OUTPUT_TOKENS


def request_multiplier(body: Any, endpoint: str) -> int:
    """How many completions one request asks for: ``n`` (or ``best_of``) times prompts.

    A legacy completions request with a list of prompts completes each one.
    """
    if not isinstance(body, dict):
        return 1
    n = max(_positive_int(body.get("n")) or 1, 1)
    if _kind(endpoint) == "completions":
        n = max(n, _positive_int(body.get("best_of")) or 1)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and all(isinstance(p, str | list) for p in prompt):
            n *= len(prompt)
    return n


def request_estimate(
    body: Any, endpoint: str, *, counter: TokenCounter | None = None
) -> tuple[int, int]:
    """(prompt, output) tokens one request reserves: the estimated prompt, and the
    max output times the completions it asks for (`n`, `best_of`, prompts). The one
    estimate behind the rate limiter's cost, `validate_file` and `--dry-run`."""
    kind = _kind(endpoint)
    if kind != "chat/completions" or not isinstance(body, dict):
        prompt = estimate_prompt_tokens(body, endpoint, counter=counter)
        return prompt, max_output_tokens(body, endpoint) * request_multiplier(body, endpoint)
    # The usual request (it runs for every one): the same three figures in one
    # pass over the body, the endpoint's kind looked up once.
    prompt = _Estimator(counter or _DEFAULT_COUNTER, body.get("model")).estimate(body, kind)
    output = DEFAULT_MAX_OUTPUT_TOKENS
    for key in _OUTPUT_LIMITS:
        value = body.get(key)
        if value is not None and (limit := _positive_int(value)) is not None:
            output = limit
            break
    n = body.get("n")
    if n is not None:
        output *= max(_positive_int(n) or 1, 1)
    return prompt, output


def estimate_request_tokens(
    body: Any, endpoint: str, *, counter: TokenCounter | None = None
) -> int:
    """Tokens to reserve for one request: prompt + max output x completions asked for."""
    prompt, output = request_estimate(body, endpoint, counter=counter)
    return prompt + output
