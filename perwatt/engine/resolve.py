"""A model named once: :func:`resolve_model` turns what a user typed (a shape name, a HF
checkpoint directory, or a directory written by ``perwatt quantize``, with an optional
``--quantized-path`` and ``--precision``) into one :class:`ResolvedModel` that serve, bench and
:func:`~perwatt.engine.generate.load_engine` pass along instead of resolving the name again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from perwatt.engine.config import ModelConfig, get_config
from perwatt.engine.quantized_dir import QuantizedModel, resolve_quantized
from perwatt.engine.weights import read_hf_config


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolvedModel:
    """Where a model's shape, weights and tokenizer come from, and the precision it runs at."""

    name: str  # as the user gave it: a shape name or a directory
    cfg: ModelConfig
    # The HF directory holding config.json, the tokenizer files and (for a checkpoint) the
    # weights; None for a shape name (seeded random weights, byte-level tokenizer).
    weights_dir: Path | None
    precision: str  # the precision asked for, else the one saved quantized weights hold, else bf16
    # Saved quantized weights (a safetensors file), if any, spelled as given: result documents
    # record it.
    quantized_path: str | None
    quantized: QuantizedModel | None  # the ``perwatt quantize`` manifest they came with, if any

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a resolved model needs a name")
        if self.quantized is not None and self.quantized_path is None:
            raise ValueError("a quantized directory comes with its weights file")


def resolve_model(
    model: str,
    precision: str | None = None,
    quantized_path: str | Path | None = None,
) -> ResolvedModel:
    """Resolve ``model`` once (see :func:`~perwatt.engine.quantized_dir.resolve_quantized` for
    the precision and quantized-path rules). An unknown shape name, an unreadable config.json or
    a precision the saved weights do not hold is a one-line :class:`~perwatt.errors.ConfigError`
    (or :class:`~perwatt.errors.DataFormatError`) here, before anything is loaded."""
    load_as, prec, qpath, qm = resolve_quantized(model, precision, quantized_path)
    cfg, weights_dir = _shape_and_weights(load_as)
    return ResolvedModel(
        name=model,
        cfg=cfg,
        weights_dir=weights_dir,
        precision=prec,
        quantized_path=qpath,
        quantized=qm,
    )


def resolve_as_given(
    model: str, precision: str = "bf16", quantized_path: str | Path | None = None
) -> ResolvedModel:
    """``model`` as a shape name or a HF directory and ``quantized_path`` as a file, without
    reading ``perwatt quantize`` manifests: what :func:`~perwatt.engine.generate.load_engine`
    has always done with a name (a quantize directory is read as the HF directory it also is)."""
    cfg, weights_dir = _shape_and_weights(model)
    return ResolvedModel(
        name=model,
        cfg=cfg,
        weights_dir=weights_dir,
        precision=precision,
        quantized_path=None if quantized_path is None else str(quantized_path),
        quantized=None,
    )


def _shape_and_weights(model: str) -> tuple[ModelConfig, Path | None]:
    path = Path(model).expanduser()
    if path.is_dir():
        return read_hf_config(path), path
    return get_config(model), None  # an unknown name is a ConfigError listing the shapes
