"""Token estimates for request bodies (`conveyor.openai._tokens`)."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.openai._tokens import (
    DEFAULT_MAX_OUTPUT_TOKENS,
    EXACT_MAX_CHARS,
    IMAGE_TOKENS,
    IMAGE_TOKENS_LOW,
    TokenCounter,
    encoding_for_model,
    estimate_prompt_tokens,
    estimate_request_tokens,
    heuristic_tokens,
    max_output_tokens,
    request_multiplier,
)

if TYPE_CHECKING:
    from pathlib import Path

HEURISTIC = TokenCounter(use_tiktoken=False)
CHAT = "/v1/chat/completions"
O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"


def chat_tokens(body: dict[str, Any]) -> int:
    return estimate_prompt_tokens(body, CHAT, counter=HEURISTIC)


def test_heuristic_chars_over_four_and_cjk_denser() -> None:
    """ASCII is ceil(chars/4); CJK (3 UTF-8 bytes a char) is chars/1.5; Latin text with
    accents stays near chars/4; empty text is 0."""
    assert heuristic_tokens("") == 0
    assert heuristic_tokens("a") == 1
    assert heuristic_tokens("x" * 400) == 100
    assert heuristic_tokens("漢" * 300) == 200
    french = "Les élèves étudient la littérature française à l'université. " * 10
    assert abs(heuristic_tokens(french) - len(french) / 4) <= 0.1 * len(french) / 4
    assert heuristic_tokens("\ud800") >= 1  # a lone surrogate does not raise


def test_chat_counts_messages_names_and_request_overhead() -> None:
    """Chat = 3 per request + 4 per message + text + 1 per name (+ name text)."""
    assert chat_tokens({"messages": []}) == 3
    body = {
        "messages": [
            {"role": "system", "content": "x" * 40},
            {"role": "user", "content": "y" * 8, "name": "abcd"},
        ]
    }
    assert chat_tokens(body) == 3 + 4 + 10 + 4 + 2 + 1 + 1


def test_chat_multipart_content_and_images() -> None:
    """Text parts are counted; an image part costs a fixed 765, or 85 with detail low."""
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "z" * 40},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
                    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                ],
            }
        ]
    }
    assert chat_tokens(body) == 3 + 4 + 10 + IMAGE_TOKENS + IMAGE_TOKENS_LOW


def test_chat_tools_and_tool_calls_count() -> None:
    """Tool definitions and the arguments of earlier tool calls add to the prompt."""
    base = {"messages": [{"role": "user", "content": "hi"}]}
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "1", "function": {"name": "lookup", "arguments": "x" * 80}}],
    }
    assert chat_tokens({**base, "tools": tools}) > chat_tokens(base)
    with_call = chat_tokens({"messages": [*base["messages"], call]})
    assert with_call == chat_tokens(base) + 4 + 2 + 20


def test_completions_prompt_forms_and_multiplier() -> None:
    """Completions count a string, a list of strings, token ids or lists of token ids;
    a list of prompts multiplies the completions asked for, as does n / best_of."""
    ep = "/v1/completions"
    assert estimate_prompt_tokens({"prompt": "x" * 40}, ep, counter=HEURISTIC) == 10
    assert estimate_prompt_tokens({"prompt": ["x" * 4, "y" * 8]}, ep, counter=HEURISTIC) == 3
    assert estimate_prompt_tokens({"prompt": [1, 2, 3]}, ep, counter=HEURISTIC) == 3
    assert estimate_prompt_tokens({"prompt": [[1, 2], [3]]}, ep, counter=HEURISTIC) == 3
    assert request_multiplier({"prompt": ["a", "b"], "n": 3}, ep) == 6
    assert request_multiplier({"prompt": "a", "n": 2, "best_of": 5}, ep) == 5
    assert request_multiplier({"prompt": [1, 2, 3]}, ep) == 1  # one prompt of token ids


def test_embeddings_have_no_output_and_count_every_input_form() -> None:
    """Embeddings count str / list of str / token ids with no overhead, and reserve no output."""
    ep = "/embeddings"
    assert estimate_prompt_tokens({"input": "x" * 8}, ep, counter=HEURISTIC) == 2
    assert estimate_prompt_tokens({"input": ["x" * 8, "y" * 4]}, ep, counter=HEURISTIC) == 3
    assert estimate_prompt_tokens({"input": [5, 6, 7, 8]}, ep, counter=HEURISTIC) == 4
    assert max_output_tokens({"input": "x", "max_tokens": 50}, ep) == 0
    assert estimate_request_tokens({"input": "x" * 8}, ep, counter=HEURISTIC) == 2


def test_responses_input_forms_and_instructions() -> None:
    """Responses count instructions plus input as text or as a list of message items."""
    ep = "/v1/responses"
    text = {"input": "x" * 40, "instructions": "y" * 20}
    assert estimate_prompt_tokens(text, ep, counter=HEURISTIC) == 3 + 10 + 5
    items = {
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "x" * 40}]},
            {"type": "function_call_output", "call_id": "c", "output": "z" * 12},
        ]
    }
    assert estimate_prompt_tokens(items, ep, counter=HEURISTIC) == 3 + 4 + 10 + 4 + 3


def test_max_output_precedence_and_default() -> None:
    """max_completion_tokens wins over max_output_tokens over max_tokens; an absent or
    invalid limit (bool, negative, text) means the documented default."""
    assert max_output_tokens({"max_tokens": 10, "max_completion_tokens": 20}, CHAT) == 20
    assert max_output_tokens({"max_output_tokens": 30, "max_tokens": 10}, "/responses") == 30
    assert max_output_tokens({"max_tokens": 10}, CHAT) == 10
    assert max_output_tokens({}, CHAT) == DEFAULT_MAX_OUTPUT_TOKENS == 1024
    for bad in (True, -5, "100", 1.5, None):
        assert max_output_tokens({"max_tokens": bad}, CHAT) == DEFAULT_MAX_OUTPUT_TOKENS


def test_request_tokens_are_prompt_plus_output_times_n() -> None:
    """A request reserves prompt + max output x n."""
    body = {"messages": [{"role": "user", "content": "x" * 40}], "max_tokens": 100, "n": 3}
    assert estimate_request_tokens(body, CHAT, counter=HEURISTIC) == chat_tokens(body) + 300


def test_model_to_encoding_map() -> None:
    """gpt-4o/4.1/5 and o-series use o200k_base; gpt-4/3.5 and embeddings cl100k_base;
    unknown or prefixed names fall back sensibly."""
    for m in ("gpt-4o-mini", "gpt-4.1", "gpt-5-nano", "o3-mini", "o1", "ft:gpt-4o:org::x"):
        assert encoding_for_model(m) == "o200k_base", m
    for m in ("gpt-4", "gpt-4-turbo", "gpt-3.5-turbo", "text-embedding-3-small", "openai/gpt-4"):
        assert encoding_for_model(m) == "cl100k_base", m
    for odd in ("llama-3.1-8b", None, 42, ""):
        assert encoding_for_model(odd) == "o200k_base"


def test_no_cached_encoding_means_heuristic_and_no_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With an empty tiktoken cache dir the heuristic is used and nothing is fetched
    into the cache (tiktoken would download there)."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    counter = TokenCounter()
    assert counter.tokenizer_name("gpt-4o") == "heuristic"
    assert counter.count("x" * 40, "gpt-4o") == 10
    assert list(tmp_path.iterdir()) == []


def test_corrupt_cached_encoding_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache file whose sha256 does not match is ignored (tiktoken would delete it and
    re-download): the heuristic is used and the file is left as it was."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    cached = tmp_path / hashlib.sha1(O200K_URL.encode()).hexdigest()
    cached.write_bytes(b"not an encoding\n")
    counter = TokenCounter()
    assert counter.tokenizer_name("gpt-4o") == "heuristic"
    assert cached.read_bytes() == b"not an encoding\n"


def test_a_huge_text_is_estimated_not_tokenized() -> None:
    """A text past EXACT_MAX_CHARS never reaches the tokenizer (its id list would cost
    ~10x the text's memory: the 50 MB line of #12); shorter ones do."""
    seen: list[int] = []

    def encode(text: str) -> list[int]:  # one id a character, and a record of the call
        seen.append(len(text))
        return [0] * len(text)

    counter = TokenCounter()
    counter._encoders["o200k_base"] = encode  # as if the encoding were cached offline
    assert counter.count("ab", "gpt-4o") == 2
    huge = "x" * (EXACT_MAX_CHARS + 1)
    assert counter.count(huge, "gpt-4o") == heuristic_tokens(huge)
    assert seen == [2]


def test_empty_cache_dir_setting_disables_tiktoken(monkeypatch: pytest.MonkeyPatch) -> None:
    """TIKTOKEN_CACHE_DIR="" turns tiktoken's cache off (it would always download),
    so the heuristic is used."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    assert TokenCounter().tokenizer_name("gpt-4o") == "heuristic"


_SAMPLES = [
    "The quick brown fox jumps over the lazy dog. " * 10,
    "def f(x):\n    return {'a': [1, 2, 3], 'b': x ** 2}\n" * 5,
    "Les élèves étudient la littérature française à l'université. " * 6,
    "東京は日本の首都であり、世界有数の大都市です。" * 8,
]


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4"])
def test_heuristic_within_a_band_of_tiktoken(model: str) -> None:
    """Where an encoding is cached, the heuristic stays within 0.5x-2.5x of tiktoken."""
    exact = TokenCounter()
    if exact.tokenizer_name(model) == "heuristic":
        pytest.skip(
            f"no tiktoken encoding for {model} cached offline (TIKTOKEN_CACHE_DIR / "
            "DATA_GYM_CACHE_DIR / <tmp>/data-gym-cache); conveyor never downloads one"
        )
    for text in _SAMPLES:
        real = exact.count(text, model)
        guess = heuristic_tokens(text)
        assert 0.5 * real <= guess <= 2.5 * real, (text[:30], real, guess)


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.text(max_size=30)
    | st.sampled_from(["text", "image_url", "input_text", "low", "user", "input_image"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "text",
                    "content",
                    "image_url",
                    "detail",
                    "name",
                    "tool_calls",
                    "function",
                    "arguments",
                    "output",
                    "role",
                    "x",
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=20,
)
_body = st.dictionaries(
    st.sampled_from(
        [
            "model",
            "messages",
            "prompt",
            "input",
            "instructions",
            "tools",
            "functions",
            "response_format",
            "text",
            "suffix",
            "n",
            "best_of",
            "max_tokens",
            "max_completion_tokens",
            "max_output_tokens",
        ]
    ),
    _json,
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(
    body=st.one_of(_body, _json),
    endpoint=st.sampled_from(
        ["/v1/chat/completions", "/completions", "/v1/embeddings", "/responses", "/v1/other", ""]
    ),
)
def test_estimates_never_raise_and_are_non_negative(body: Any, endpoint: str) -> None:
    """Any JSON-ish body, on any endpoint, gives non-negative integer estimates."""
    for value in (
        estimate_prompt_tokens(body, endpoint),
        max_output_tokens(body, endpoint),
        request_multiplier(body, endpoint),
        estimate_request_tokens(body, endpoint),
    ):
        assert isinstance(value, int)
        assert value >= 0
