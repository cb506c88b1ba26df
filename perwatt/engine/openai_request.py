"""OpenAI request validation: a JSON body to a :class:`ParsedRequest`, or an :class:`APIError`.

Errors are OpenAI-style JSON ``{"error": {"message", "type", "param", "code"}}``: 400 for bad
parameters or a prompt that does not fit ``max_seq_len``; 404 for an unknown model. ``param``
names the offending field as vLLM does (``max_completion_tokens``, ``messages[1].content``).
Everything here runs before a response starts, so a bad request is one JSON error, never an SSE
stream that fails midway. No HTTP and no engine here: the server passes the batcher's fit check
in (``check_fit``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from perwatt.engine.batcher import SamplingParams
from perwatt.engine.detokenize import Tokenizer
from perwatt.errors import ConfigError

# OpenAI's chat API takes top_logprobs "between 0 and 20" (platform.openai.com/docs/api-reference
# /chat/create); the batcher's SamplingParams has the same bound.
MAX_TOP_LOGPROBS = 20


class APIError(Exception):
    """An error answered as OpenAI-style JSON with an HTTP status."""

    def __init__(self, status: int, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    @property
    def kind(self) -> str:
        return {
            400: "BadRequestError",
            404: "NotFoundError",
            413: "BadRequestError",
            500: "InternalServerError",
            503: "ServiceUnavailableError",
        }.get(self.status, "BadRequestError")

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.status,
            }
        }


def render_chat(tokenizer: Any, messages: list[dict[str, Any]]) -> list[int]:
    """Token ids for a chat: the checkpoint's own template when it has one, else a plain one.

    The checkpoint's template (see :mod:`perwatt.engine.chat_template`) is what vLLM and
    transformers use; one that refuses the conversation (e.g. roles that do not alternate)
    raises :class:`ValueError` with its message. The plain template (``<|role|>\\ncontent\\n``
    per message, then ``<|assistant|>\\n``) is what checkpoints without one and random-weight
    shapes get; energy per token does not depend on it.
    """
    apply = getattr(tokenizer, "apply_chat_template", None)
    if callable(apply):
        out = apply(messages)
        if out is not None:
            return [int(t) for t in out]
    text = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages) + "<|assistant|>\n"
    return list(tokenizer.encode(text))


def _get(body: Mapping[str, Any], key: str, types: tuple[type, ...], default: Any) -> Any:
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) and bool not in types:
        raise APIError(400, f"'{key}' must be {'/'.join(t.__name__ for t in types)}", param=key)
    if not isinstance(v, types):
        raise APIError(400, f"'{key}' must be {'/'.join(t.__name__ for t in types)}", param=key)
    return v


def parse_messages(messages: Any) -> list[dict[str, str]]:
    """Chat ``messages`` as ``[{"role", "content"}]`` with text content, or a 400 naming the field.

    Every message needs a string ``role``. ``content`` is a string, a list of text parts
    (``[{"type": "text", "text": ...}]``, joined with "\n" as vLLM joins them), or null/missing,
    read as "" for every role as vLLM reads it (an assistant turn that only made tool calls, a
    tool turn with no output). Another type, or a non-text part (an image), is refused rather
    than dropped: that would measure a different prompt than the client sent. The error names
    the field the way vLLM's validation does (``messages[1].content``).
    """
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list", param="messages")
    out: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise APIError(400, f"{where} must be an object with 'role' and 'content'", param=where)
        role = m.get("role")
        if not isinstance(role, str) or not role:
            raise APIError(
                400, f"{where}.role is required: a string such as 'user'", param=f"{where}.role"
            )
        content = m.get("content")
        if content is None:
            content = ""
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            texts: list[str] = []
            for j, part in enumerate(content):
                pwhere = f"{where}.content[{j}]"
                if not isinstance(part, dict):
                    raise APIError(
                        400,
                        f"{pwhere} must be an object {{'type': 'text', 'text': ...}}",
                        param=pwhere,
                    )
                kind = part.get("type", "text")
                if kind != "text":
                    raise APIError(
                        400,
                        f"{pwhere} is of type {kind!r}: only text parts are supported",
                        param=pwhere,
                    )
                if not isinstance(part.get("text"), str):
                    raise APIError(400, f"{pwhere}.text must be a string", param=f"{pwhere}.text")
                texts.append(part["text"])
            content = "\n".join(texts)
        if not isinstance(content, str):
            raise APIError(
                400,
                f"{where}.content must be a string or a list of text parts, got "
                f"{type(content).__name__}",
                param=f"{where}.content",
            )
        out.append({"role": role, "content": content})
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedRequest:
    prompt_ids: list[int]
    params: SamplingParams
    stream: bool
    include_usage: bool
    chat: bool
    logprobs_format: str | None  # "completions" | "chat" | None


class RequestParser:
    """Validates completion and chat requests for one served model."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        model_name: str,
        max_seq_len: int,
        check_fit: Callable[[int, int], None],
        vocab_size: int | None = None,
        aliases: Sequence[str] = (),
    ) -> None:
        """``check_fit(prompt_tokens, max_tokens)`` raises :class:`ConfigError` when a request
        cannot fit (the batcher's :meth:`~perwatt.engine.batcher.Batcher.check`)."""
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.names = {model_name, *aliases}
        self.max_seq_len = max_seq_len
        self.check_fit = check_fit
        self.vocab_size = vocab_size

    def _check_model(self, body: Mapping[str, Any]) -> None:
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise APIError(400, "'model' must be a string", param="model")
        if model is not None and model not in self.names:
            raise APIError(
                404,
                f"The model `{model}` does not exist. This server serves `{self.model_name}`.",
                param="model",
            )

    def parse(self, body: Any, *, chat: bool) -> ParsedRequest:
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        self._check_model(body)
        n = _get(body, "n", (int,), 1)
        if n < 1:
            raise APIError(400, f"'n' must be at least 1, got {n}", param="n")
        if n > 1:
            raise APIError(400, "n > 1 is not supported; send one request per sample", param="n")
        if body.get("stop"):
            raise APIError(
                400, "'stop' strings are not supported; use 'stop_token_ids'", param="stop"
            )
        if body.get("echo"):
            raise APIError(400, "'echo' is not supported", param="echo")
        for key in ("presence_penalty", "frequency_penalty", "repetition_penalty"):
            v = body.get(key)
            neutral = 1.0 if key == "repetition_penalty" else 0.0
            if v is not None and v != neutral:
                # Refused rather than ignored: silently dropping it would change the answers.
                raise APIError(400, f"'{key}' is not supported (only {neutral:g})", param=key)
        max_key: str | None = "max_tokens"
        if chat:
            prompt_key = "messages"
            try:
                prompt_ids = render_chat(self.tokenizer, parse_messages(body.get("messages")))
            except ValueError as e:
                raise APIError(400, str(e), param="messages") from None
            max_tokens = _get(body, "max_completion_tokens", (int,), None)
            if max_tokens is None:
                max_tokens = _get(body, "max_tokens", (int,), None)
            elif body.get("max_completion_tokens") is not None:
                max_key = "max_completion_tokens"
        else:
            prompt_key = "prompt"
            prompt_ids = self._prompt_ids(body.get("prompt"))
            max_tokens = _get(body, "max_tokens", (int,), 16)  # OpenAI/vLLM default
        if not prompt_ids:
            raise APIError(400, "the prompt is empty: send at least one token", param=prompt_key)
        if max_tokens is None:
            # Not sent: the rest of the context, so a prompt that leaves no room is the
            # prompt's fault, not a max_tokens the client never gave.
            max_key = None
            max_tokens = max(1, self.max_seq_len - len(prompt_ids))
        if max_tokens < 1:
            raise APIError(400, f"'{max_key}' must be at least 1, got {max_tokens}", param=max_key)
        try:
            self.check_fit(len(prompt_ids), max_tokens)
        except ConfigError as e:
            if max_key is None:
                raise APIError(
                    400,
                    f"the prompt is {len(prompt_ids)} tokens: it leaves no room to generate "
                    f"within the {self.max_seq_len}-token context ({e})",
                    param=prompt_key,
                ) from None
            raise APIError(400, str(e), param=max_key) from None
        if chat:
            lp = bool(_get(body, "logprobs", (bool,), False))
            top = _get(body, "top_logprobs", (int,), None)
            if top is not None and not 0 <= top <= MAX_TOP_LOGPROBS:
                raise APIError(
                    400,
                    f"'top_logprobs' must be in [0, {MAX_TOP_LOGPROBS}], got {top}",
                    param="top_logprobs",
                )
            if top and not lp:
                # vLLM refuses this too: top_logprobs alone would silently return none.
                raise APIError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
            logprobs: int | None = (top or 0) if lp else None
        else:
            logprobs = _get(body, "logprobs", (int,), None)
        stop_ids = _get(body, "stop_token_ids", (list,), [])
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in stop_ids):
            raise APIError(
                400, "'stop_token_ids' must be a list of integers", param="stop_token_ids"
            )
        stream = bool(_get(body, "stream", (bool,), False))
        stream_options = _get(body, "stream_options", (dict,), {})
        if stream_options and not stream:
            raise APIError(400, "'stream_options' needs 'stream': true", param="stream_options")
        include_usage = stream_options.get("include_usage")
        if include_usage is None:  # null is the default, as in vLLM's and OpenAI's schema
            include_usage = False
        if not isinstance(include_usage, bool):
            raise APIError(
                400,
                "'stream_options.include_usage' must be true or false",
                param="stream_options.include_usage",
            )
        try:
            params = SamplingParams(
                max_tokens=max_tokens,
                temperature=float(_get(body, "temperature", (int, float), 1.0)),
                top_p=float(_get(body, "top_p", (int, float), 1.0)),
                seed=_get(body, "seed", (int,), None),
                ignore_eos=bool(_get(body, "ignore_eos", (bool,), False)),
                min_tokens=_get(body, "min_tokens", (int,), 0),
                stop_token_ids=frozenset(stop_ids),
                logprobs=logprobs,
            )
        except ConfigError as e:
            # SamplingParams names the field first ("top_p must be ..."): say it in `param`.
            key = str(e).split(" ", 1)[0]
            if key == "logprobs" and chat:
                key = "top_logprobs"
            raise APIError(400, str(e), param=key if key in body else None) from None
        return ParsedRequest(
            prompt_ids=prompt_ids,
            params=params,
            stream=stream,
            include_usage=include_usage,
            chat=chat,
            logprobs_format=None if logprobs is None else ("chat" if chat else "completions"),
        )

    def _prompt_ids(self, prompt: Any) -> list[int]:
        # One prompt: a string, a list of token ids, or a one-element list of either.
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]
        if isinstance(prompt, str):
            return list(self.tokenizer.encode(prompt))
        if (
            isinstance(prompt, list)
            and prompt
            and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
        ):
            v = self.vocab_size
            if v is not None and not all(0 <= t < v for t in prompt):
                raise APIError(
                    400, f"prompt token ids must be in 0..{v - 1} (the vocabulary)", param="prompt"
                )
            return list(prompt)
        if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, str) for p in prompt):
            raise APIError(
                400,
                "batched prompts are not supported; send one request per prompt",
                param="prompt",
            )
        raise APIError(400, "'prompt' must be a string or a list of token ids", param="prompt")
