"""Tokenizers: a checkpoint's own ``tokenizer.json`` (through the ``tokenizers`` package), or a
byte-level tokenizer for shapes with random weights.

:class:`HFTokenizer` behaves as ``transformers``' fast tokenizer loaded from the same directory:

* ``encode`` adds special tokens exactly as the tokenizer's own post-processor says (BOS for
  Llama and Mistral, nothing for Qwen), never a BOS taken from ``config.json``;
* ``decode`` skips special tokens (what a served completion shows, as vLLM does);
* the chat template is the checkpoint's (``chat_template.jinja``, else ``tokenizer_config.json``
  ``chat_template``), rendered in a sandbox by :mod:`perwatt.engine.chat_template`;
* its EOS (``tokenizer_config.json`` ``eos_token``) and every id marked special are known, so the
  server can stop on it and keep special tokens out of the text.

The byte tokenizer maps UTF-8 bytes to ids 0..255 and uses the model's BOS/EOS ids from
``config.json``; without any, 256/257 (the tiny presets' ids). It is exact for random-weight shapes
(which have no vocabulary of their own) and for tests; it is *not* the tokenizer of a real
checkpoint, so :func:`load_tokenizer` refuses to substitute it silently for a ``tokenizer.json``
it cannot read. ``Tokenizer.kind`` says which one is in use.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from perwatt.errors import ConfigError, DataFormatError

if TYPE_CHECKING:
    from perwatt.engine.chat_template import ChatTemplate


class Tokenizer(Protocol):
    kind: str  # "byte" or "hf-tokenizers"
    bos_id: int | None
    eos_id: int | None
    eos_ids: tuple[int, ...]  # every id this tokenizer says ends a turn
    special_ids: frozenset[int]  # ids decode() leaves out of the text

    def encode(self, text: str, *, add_bos: bool = True) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, plus BOS/EOS ids (the config's, else 256/257)."""

    kind = "byte"

    def __init__(
        self,
        vocab_size: int,
        bos_id: int | None = None,
        eos_id: int | None = None,
        *,
        eos_ids: Iterable[int] = (),
    ):
        if vocab_size < 258:
            raise ConfigError(f"a byte tokenizer needs a vocabulary of >= 258, got {vocab_size}")
        self.vocab_size = vocab_size
        ids = [i for i in (eos_id, *eos_ids) if i is not None and 0 <= i < vocab_size]
        self._bos = bos_id if bos_id is not None and 0 <= bos_id < vocab_size else 256
        self.eos_ids: tuple[int, ...] = tuple(dict.fromkeys(ids)) or (257,)
        self.bos_id: int | None = self._bos
        self.eos_id: int | None = self.eos_ids[0]
        self.special_ids = frozenset((self._bos, *self.eos_ids))

    def encode(self, text: str, *, add_bos: bool = True) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [self._bos, *ids] if add_bos else ids

    def decode(self, ids: Sequence[int]) -> str:
        data = bytes(i for i in ids if 0 <= i < 256 and i not in self.special_ids)
        return data.decode("utf-8", errors="replace")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-to-printable-character table, which byte-level BPE vocabularies (Llama 3,
    Qwen, GPT-2) are written in."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


_UNICODE_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _decoder_types(node: Any) -> set[str]:
    """Every decoder type in a ``tokenizer.json`` decoder (Sequence decoders flattened)."""
    if not isinstance(node, dict):
        return set()
    out = {str(node.get("type"))}
    for sub in node.get("decoders") or ():
        out |= _decoder_types(sub)
    return out


def _token_text(value: Any) -> str | None:
    """A special-token entry of tokenizer_config.json: a string or an AddedToken object."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


_SPECIAL_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


class HFTokenizer:
    """A checkpoint directory's ``tokenizer.json`` (+ ``tokenizer_config.json``, chat template)."""

    kind = "hf-tokenizers"

    def __init__(self, directory: Path) -> None:
        import tokenizers  # an optional dependency (the engine extra)

        path = directory / "tokenizer.json"
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            self._tok: Any = tokenizers.Tokenizer.from_str(json.dumps(raw))
        except Exception as e:  # json errors, and the package raises its own Exception type
            raise DataFormatError(f"{path}: cannot read tokenizer: {e}") from e
        decoders = _decoder_types(raw.get("decoder"))
        self._byte_level = "ByteLevel" in decoders
        model = raw.get("model") or {}
        self._byte_fallback = bool(model.get("byte_fallback"))
        self._metaspace = bool(decoders & {"Metaspace", "Replace"})
        added = self._tok.get_added_tokens_decoder()
        self.special_ids = frozenset(int(i) for i, t in added.items() if t.special)
        cfg = _read_json(directory / "tokenizer_config.json")
        self.special_tokens: dict[str, str] = {}
        for key in _SPECIAL_KEYS:
            text = _token_text(cfg.get(key))
            if text is not None:
                self.special_tokens[key] = text
        self.bos_id = self._id_of(self.special_tokens.get("bos_token"))
        self.eos_id = self._id_of(self.special_tokens.get("eos_token"))
        self.eos_ids: tuple[int, ...] = () if self.eos_id is None else (self.eos_id,)
        self.chat_template: ChatTemplate | None = self._chat_template(directory, cfg)

    def _id_of(self, token: str | None) -> int | None:
        if token is None:
            return None
        i = self._tok.token_to_id(token)
        return None if i is None else int(i)

    def _chat_template(self, directory: Path, cfg: Mapping[str, Any]) -> ChatTemplate | None:
        # transformers >= 4.43 saves the template as its own file and prefers it on load.
        source: str | None = None
        origin = directory / "chat_template.jinja"
        if origin.is_file():
            source = origin.read_text(encoding="utf-8")
        else:
            origin = directory / "tokenizer_config.json"
            value = cfg.get("chat_template")
            if isinstance(value, list):  # [{"name": "default", "template": ...}, ...]
                named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
                value = named.get("default")
            if isinstance(value, str):
                source = value
        if source is None:
            return None
        from perwatt.engine.chat_template import ChatTemplate  # jinja2: only with a template

        return ChatTemplate(source, self.special_tokens, origin=str(origin))

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, *, add_bos: bool = True) -> list[int]:
        """Token ids; with ``add_bos`` the special tokens the tokenizer's post-processor adds
        (a Llama BOS; nothing for Qwen), else none."""
        return list(self._tok.encode(text, add_special_tokens=add_bos).ids)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` without special tokens (what a completion shows)."""
        return str(self._tok.decode(list(ids), skip_special_tokens=True))

    def decode_with_special(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` with special tokens written out (context for incremental decoding)."""
        return str(self._tok.decode(list(ids), skip_special_tokens=False))

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes one token stands for (may be part of a UTF-8 character)."""
        piece = self._tok.id_to_token(token_id)
        if piece is None:
            return b""
        if token_id in self.special_ids:
            return str(piece).encode("utf-8")
        m = _BYTE_PIECE.fullmatch(piece)
        if self._byte_fallback and m:
            return bytes([int(m.group(1), 16)])
        if self._byte_level and all(c in _UNICODE_TO_BYTE for c in piece):
            return bytes(_UNICODE_TO_BYTE[c] for c in piece)
        if self._metaspace:
            return str(piece).replace("\u2581", " ").encode("utf-8")
        return self.decode_with_special([token_id]).encode("utf-8")

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]]) -> list[int] | None:
        """Token ids of ``messages`` rendered by the checkpoint's template with the assistant
        prompt added, or None when the checkpoint has no template."""
        if self.chat_template is None:
            return None
        text = self.chat_template.render(messages, add_generation_prompt=True)
        return self.encode(text, add_bos=False)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataFormatError(f"{path}: cannot parse: {e}") from e
    if not isinstance(doc, dict):
        raise DataFormatError(f"{path}: expected a JSON object")
    return doc


def tokenizers_available() -> bool:
    return importlib.util.find_spec("tokenizers") is not None


def load_tokenizer(
    directory: str | Path | None,
    *,
    vocab_size: int,
    bos_id: int | None = None,
    eos_id: int | None = None,
    eos_ids: Iterable[int] = (),
) -> Tokenizer:
    """The tokenizer for a checkpoint directory, or a byte tokenizer when there is none.

    A directory with ``tokenizer.json`` needs the ``tokenizers`` package; without it this raises
    :class:`ConfigError` naming the fix rather than tokenizing text with the wrong vocabulary.
    """
    if directory is not None:
        path = Path(directory) / "tokenizer.json"
        if path.is_file():
            if not tokenizers_available():
                raise ConfigError(
                    f"{path} needs the 'tokenizers' package, which is not installed: "
                    "pip install 'perwatt[engine]' (or pip install tokenizers)"
                )
            return HFTokenizer(Path(directory))
    return ByteTokenizer(vocab_size, bos_id, eos_id, eos_ids=eos_ids)
