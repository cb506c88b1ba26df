"""A model is resolved once, into one object that serve, bench and load_engine pass along."""

from __future__ import annotations

from pathlib import Path

import pytest

from perwatt.engine.config import get_config
from perwatt.engine.generate import load_engine
from perwatt.engine.quantized_dir import QUANTIZED_WEIGHTS, quantize_model
from perwatt.engine.resolve import ResolvedModel, resolve_model
from perwatt.errors import ConfigError


def test_a_shape_name_resolves_to_its_config_and_random_weights() -> None:
    r = resolve_model("tiny")
    assert r.cfg == get_config("tiny")
    assert (r.weights_dir, r.quantized_path, r.quantized, r.precision) == (None, None, None, "bf16")
    with pytest.raises(ConfigError, match="no-such-shape"):
        resolve_model("no-such-shape")


def test_a_quantize_dir_resolves_to_its_weights_and_precision(tmp_path: Path) -> None:
    qdir = quantize_model("tiny", "int8", tmp_path / "q", device="cpu").directory
    r = resolve_model(str(qdir))
    assert r.precision == "int8" and r.quantized is not None
    assert r.quantized_path == str(qdir / QUANTIZED_WEIGHTS)
    assert r.cfg == get_config("tiny") and r.weights_dir is None  # a shape's quantized weights
    engine = load_engine(r, device="cpu", max_seq_len=16)
    assert engine.precision == "int8" and engine.cfg == r.cfg
    with pytest.raises(ConfigError, match="quantized_path belongs to resolve_model"):
        load_engine(r, device="cpu", quantized_path=r.quantized_path)


def test_a_resolved_model_checks_itself() -> None:
    with pytest.raises(ValueError, match="needs a name"):
        ResolvedModel(
            name="",
            cfg=get_config("tiny"),
            weights_dir=None,
            precision="bf16",
            quantized_path=None,
            quantized=None,
        )
