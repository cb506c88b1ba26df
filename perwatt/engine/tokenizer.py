"""Tokenizers: a Hugging Face ``tokenizer.json`` when the ``tokenizers`` package is importable,
otherwise a byte-level tokenizer.

The byte tokenizer maps UTF-8 bytes to ids 0..255 and puts BOS/EOS at the model's ids when they
are above 255 (the tiny presets use 256/257), else at 256/257 when the vocabulary is large enough.
It is exact for random-weight shapes (which have no vocabulary of their own) and for tests; it is
*not* the tokenizer of a real checkpoint, so :func:`load_tokenizer` refuses to substitute it
silently for a ``tokenizer.json`` it cannot read. ``Tokenizer.kind`` says which one is in use.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Protocol

from perwatt.errors import ConfigError, DataFormatError


class Tokenizer(Protocol):
    kind: str  # "byte" or "hf-tokenizers"
    bos_id: int | None
    eos_id: int | None

    def encode(self, text: str, *, add_bos: bool = True) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, plus BOS/EOS ids."""

    kind = "byte"

    def __init__(self, vocab_size: int, bos_id: int | None = None, eos_id: int | None = None):
        if vocab_size < 258:
            raise ConfigError(f"a byte tokenizer needs a vocabulary of >= 258, got {vocab_size}")
        self.vocab_size = vocab_size
        self._bos = bos_id if bos_id is not None and 255 < bos_id < vocab_size else 256
        self._eos = eos_id if eos_id is not None and 255 < eos_id < vocab_size else 257
        self.bos_id: int | None = self._bos
        self.eos_id: int | None = self._eos

    def encode(self, text: str, *, add_bos: bool = True) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [self._bos, *ids] if add_bos else ids

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """``tokenizer.json`` through the ``tokenizers`` package."""

    kind = "hf-tokenizers"

    def __init__(self, path: Path, bos_id: int | None, eos_id: int | None) -> None:
        import tokenizers  # type: ignore[import-not-found, unused-ignore]

        try:
            self._tok: Any = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # the package raises its own Exception type
            raise DataFormatError(f"{path}: cannot read tokenizer: {e}") from e
        self.bos_id = bos_id
        self.eos_id = eos_id

    def encode(self, text: str, *, add_bos: bool = True) -> list[int]:
        ids: list[int] = list(self._tok.encode(text, add_special_tokens=False).ids)
        return [self.bos_id, *ids] if add_bos and self.bos_id is not None else ids

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids))


def tokenizers_available() -> bool:
    return importlib.util.find_spec("tokenizers") is not None


def load_tokenizer(
    directory: str | Path | None,
    *,
    vocab_size: int,
    bos_id: int | None = None,
    eos_id: int | None = None,
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
                    "pip install tokenizers (or pass token ids instead of text)"
                )
            return HFTokenizer(path, bos_id, eos_id)
    return ByteTokenizer(vocab_size, bos_id, eos_id)
