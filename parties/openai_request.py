"""OpenAI request bodies read as Veil generation requests, every option checked once.

The gateway (:mod:`veil.parties.gateway`) accepts what OpenAI's ``/v1/completions`` and
``/v1/chat/completions`` accept where Veil can honour it, and refuses the rest with
OpenAI's 400 error naming the option, so that a client never gets an answer computed with
an option silently dropped.  Defaults are OpenAI's: ``temperature`` 1 (sampling; 0 is
greedy), ``top_p`` 1 (no nucleus), ``max_tokens`` 16.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_TOKENS = 16
_MAX_STOP_STRINGS = 4  # OpenAI's limit
_IGNORED = frozenset({"user"})
"""Accepted and without effect on the answer: the end user's label, for OpenAI's abuse checks."""
_NEUTRAL = {
    "n": 1,
    "best_of": 1,
    "echo": False,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logprobs": None,
    "top_logprobs": None,
    "logit_bias": None,
    "suffix": None,
    "seed": None,
    "tools": None,
    "tool_choice": None,
    "functions": None,
    "function_call": None,
    "response_format": None,
    "parallel_tool_calls": None,
}
"""Options Veil does not implement, accepted only at the value that changes nothing."""
_COMMON = frozenset({"model", "max_tokens", "temperature", "top_p", "stream", "stream_options"})
_COMPLETION = _COMMON | {"prompt", "stop"}
_CHAT = _COMMON | {"messages", "max_completion_tokens", "stop"}


class OpenAIError(ValueError):
    """A request the gateway refuses: OpenAI's error body, with ``param`` the option."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        status: int = 400,
        kind: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.param, self.status, self.kind = param, status, kind

    def body(self) -> dict[str, Any]:
        error = {"message": str(self), "type": self.kind, "param": self.param, "code": None}
        return {"error": error}


@dataclass(frozen=True)
class Generation:
    """What to generate, in Veil's terms; ``prompt`` is text or chat messages."""

    model: str
    prompt: str | list[dict[str, str]]
    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_p: float | None
    stream: bool
    stop: tuple[str, ...]
    include_usage: bool = False
    """Streaming: end with a chunk that reports token usage (``stream_options``)."""


def read_completion(body: dict[str, Any]) -> Generation:
    """A ``/v1/completions`` body (one prompt: Veil answers one choice per request)."""
    _check_options(body, _COMPLETION)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise OpenAIError("prompt must be one string", "prompt")
    return _generation(body, prompt, body.get("max_tokens"))


def read_chat(body: dict[str, Any]) -> Generation:
    """A ``/v1/chat/completions`` body; messages are (role, text content) pairs."""
    _check_options(body, _CHAT)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise OpenAIError("messages must be a non-empty list", "messages")
    chat = [
        {"role": str(message.get("role", "user")), "content": _text_content(i, message)}
        for i, message in enumerate(messages)
    ]
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    return _generation(body, chat, limit)


def _text_content(index: int, message: Any) -> str:
    """A message's text: a string, or OpenAI's list of ``{"type": "text"}`` parts."""
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        for part in content
    ):
        return "".join(part["text"] for part in content)
    if not isinstance(content, str):
        raise OpenAIError(f"messages[{index}] must have text content", "messages")
    return content


def _check_options(body: dict[str, Any], known: frozenset[str]) -> None:
    if not isinstance(body, dict):
        raise OpenAIError("the request body must be a JSON object")
    for key, value in body.items():
        if key in known or key in _IGNORED:
            continue
        if key in _NEUTRAL and value == _NEUTRAL[key]:
            continue
        if key in _NEUTRAL:
            raise OpenAIError(
                f"{key}={value!r} is not supported by Veil (only {_NEUTRAL[key]!r})", key
            )
        raise OpenAIError(f"unknown or unsupported option {key!r}", key)
    if not isinstance(body.get("model"), str):
        raise OpenAIError("model is required", "model")


def _generation(body: dict[str, Any], prompt, limit) -> Generation:
    max_new = DEFAULT_MAX_TOKENS if limit is None else limit
    if not isinstance(max_new, int) or isinstance(max_new, bool) or max_new < 1:
        raise OpenAIError(f"max_tokens must be a positive integer, got {limit!r}", "max_tokens")
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0.0:
        raise OpenAIError("top_p must be above 0", "top_p")
    stop = body.get("stop")
    stops = () if stop is None else (stop,) if isinstance(stop, str) else stop
    if not isinstance(stops, (list, tuple)) or not all(isinstance(s, str) for s in stops):
        raise OpenAIError("stop must be a string or a list of strings", "stop")
    if len(stops) > _MAX_STOP_STRINGS:
        raise OpenAIError(f"at most {_MAX_STOP_STRINGS} stop strings", "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise OpenAIError("stream must be true or false", "stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict) or set(stream_options) - {"include_usage"}:
        raise OpenAIError("stream_options takes only include_usage", "stream_options")
    return Generation(
        model=body["model"],
        prompt=prompt,
        max_new_tokens=max_new,
        do_sample=temperature > 0,
        temperature=temperature or 1.0,
        top_p=None if top_p == 1.0 else top_p,
        stream=stream,
        stop=tuple(stops),
        include_usage=bool(stream_options.get("include_usage", False)),
    )


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise OpenAIError(f"{key} must be a number in [{low:g}, {high:g}], got {value!r}", key)
    return float(value)
