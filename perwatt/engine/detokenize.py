"""Token ids back to text for a response: streamed deltas that never split a character, and
byte-level tokenizers made visible.

:class:`IncrementalDetokenizer` is what every response (streaming or not) is built with, so a
token's text is the same whichever way the client asked for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol


class Tokenizer(Protocol):
    """Text <-> token ids. The engine's tokenizer (or its byte-level fallback) implements it."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class IncrementalDetokenizer:
    """Turn a growing list of token ids into text deltas without splitting characters.

    As vLLM (and transformers' ``TextStreamer``) do: decode a short window
    (``prefix_offset``..end) and emit only what goes beyond the already-emitted part, once it no
    longer ends in U+FFFD (a byte-level or byte-fallback token that stops inside a UTF-8
    character decodes to that; its bytes are held until the character completes).

    The window starts with the last few prompt tokens (``prompt_ids``), special ones included,
    so a tokenizer that strips the leading space of a decoded text (SentencePiece ``▁`` in
    Llama-2/Mistral) strips it from prompt context, not from the first generated word. Generated
    special tokens (EOS, ...) are left out of the text, as vLLM's ``skip_special_tokens``.
    """

    #: Prompt tokens kept as context: enough for any decoder's look-behind (vLLM keeps 5).
    CONTEXT_TOKENS = 6

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int] = ()) -> None:
        self.tok = tokenizer
        self._decode: Callable[[Sequence[int]], str] = getattr(
            tokenizer, "decode_with_special", tokenizer.decode
        )
        self._special: frozenset[int] = frozenset(getattr(tokenizer, "special_ids", ()))
        self.ids: list[int] = list(prompt_ids[-self.CONTEXT_TOKENS :]) if prompt_ids else []
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.text = ""

    def push(self, token_id: int) -> str:
        if token_id in self._special:
            return ""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            delta = full[len(prefix) :]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            self.text += delta
            return delta
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end: the request
        stopped inside it, so its bytes are shown as U+FFFD, as vLLM and transformers do)."""
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        delta = full[len(prefix) :] if len(full) > len(prefix) else ""
        self.prefix_offset = self.read_offset = len(self.ids)
        self.text += delta
        return delta


class VisibleByteTokenizer:
    """A byte-level tokenizer whose ids beyond the 256 bytes decode to visible text.

    Random-weight shapes use the engine's byte tokenizer: ids 0..255 are UTF-8 bytes and every
    other id (most of a 128k vocabulary) decodes to nothing. A server whose tokens are mostly
    invisible breaks every benchmark client, which times TTFT and inter-token latency from chunks
    that carry text. So the server renders such an id as ``<t1234>`` (BOS/EOS stay invisible):
    one token, one piece of text, as with a real vocabulary.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.kind = "byte-visible"
        self.special_ids: frozenset[int] = frozenset(getattr(inner, "special_ids", ()))
        self.eos_ids: tuple[int, ...] = tuple(getattr(inner, "eos_ids", ()))

    def encode(self, text: str) -> list[int]:
        return list(self.inner.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        parts: list[str] = []
        run = bytearray()
        for i in ids:
            if 0 <= i < 256 and i not in self.special_ids:
                run.append(i)
                continue
            if run:
                parts.append(_visible_bytes(bytes(run), at_end=False))
                run.clear()
            if i not in self.special_ids:
                parts.append(f"<t{i}>")
        if run:
            parts.append(_visible_bytes(bytes(run), at_end=True))
        return "".join(parts)

    def token_bytes(self, token_id: int) -> bytes:
        if 0 <= token_id < 256 and token_id not in self.special_ids:
            return bytes([token_id])
        return self.decode([token_id]).encode("utf-8")


def _incomplete_tail(data: bytes) -> int:
    """Length of a UTF-8 sequence that ``data`` ends in the middle of (0 if none)."""
    for k in range(1, min(3, len(data)) + 1):
        lead = data[-k]
        if 0x80 <= lead < 0xC0:
            continue  # a continuation byte: look further back for the lead
        need = 0  # bytes in the character this lead byte starts (0: not a lead byte)
        if 0xC2 <= lead < 0xE0:
            need = 2
        elif 0xE0 <= lead < 0xF0:
            need = 3
        elif 0xF0 <= lead < 0xF5:
            need = 4
        return k if need > k else 0
    return 0


def _visible_bytes(data: bytes, *, at_end: bool) -> str:
    """UTF-8 text of random byte tokens, with every byte that cannot be part of a character
    written ``<0xNN>`` (SentencePiece's name for a byte piece) instead of U+FFFD, so a stream
    never carries replacement characters for bytes that are simply not text. A character still
    being built at the very end (``at_end``) stays U+FFFD: that is the mark the incremental
    detokenizer holds bytes back on until the character completes."""
    tail = _incomplete_tail(data) if at_end else 0
    body = data[: len(data) - tail]
    text = "".join(
        f"<0x{ord(c) - 0xDC00:02X}>" if 0xDC80 <= ord(c) <= 0xDCFF else c
        for c in body.decode("utf-8", errors="surrogateescape")
    )
    return text + ("\ufffd" if tail else "")


def serving_tokenizer(tokenizer: Any) -> Any:
    """The tokenizer the server uses: the engine's, with byte tokenizers made visible."""
    return (
        VisibleByteTokenizer(tokenizer) if getattr(tokenizer, "kind", "") == "byte" else tokenizer
    )
