"""HF checkpoint loading (memory-mapped safetensors, sharded), clear errors, tokenizers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from perwatt.engine import Engine, get_config, load_engine
from perwatt.engine.tokenizer import ByteTokenizer, load_tokenizer, tokenizers_available
from perwatt.engine.weights import export_hf, hf_config_dict, hf_tensor_plan, read_hf_config
from perwatt.errors import ConfigError, DataFormatError


def _tiny_dir(tmp_path: Path, name: str = "tiny", **kw: object) -> tuple[Engine, Path]:
    src = Engine(name, precision="fp32", device="cpu", max_seq_len=32, seed=7)
    d = export_hf(src.model, tmp_path / f"ckpt-{name}", **kw)  # type: ignore[arg-type]
    return src, d


@pytest.mark.parametrize("name", ["tiny", "tiny-moe"])
def test_export_load_round_trip(name: str, tmp_path: Path) -> None:
    src, d = _tiny_dir(tmp_path, name)
    loaded = load_engine(str(d), precision="fp32", device="cpu", max_seq_len=32)
    assert loaded.weights == str(d)
    for (n1, p1), (n2, p2) in zip(
        src.model.named_parameters(), loaded.model.named_parameters(), strict=True
    ):
        assert n1 == n2 and torch.equal(p1, p2), n1


def test_sharded_checkpoint_with_index(tmp_path: Path) -> None:
    src, d = _tiny_dir(tmp_path, max_shard_bytes=1 << 20)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and not (d / "model.safetensors").exists()
    loaded = load_engine(str(d), precision="fp32", device="cpu", max_seq_len=32)
    x = torch.tensor([[256, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), src.model(x))


def _rewrite(d: Path, edit: dict[str, torch.Tensor | None]) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(d / "model.safetensors"))
    for k, v in edit.items():
        if v is None:
            tensors.pop(k)
        else:
            tensors[k] = v
    save_file(tensors, str(d / "model.safetensors"))


def test_mismatched_shape_rejected_with_names(tmp_path: Path) -> None:
    _, d = _tiny_dir(tmp_path)
    _rewrite(d, {"model.layers.1.self_attn.k_proj.weight": torch.zeros(32, 256)})
    with pytest.raises(DataFormatError) as info:
        load_engine(str(d), precision="fp32", device="cpu", max_seq_len=32)
    msg = str(info.value)
    assert "model.layers.1.self_attn.k_proj.weight" in msg
    assert "[32, 256]" in msg and "expected [64, 256]" in msg


def test_missing_and_unexpected_tensors_rejected(tmp_path: Path) -> None:
    _, d = _tiny_dir(tmp_path)
    _rewrite(d, {"model.layers.2.mlp.down_proj.weight": None})
    with pytest.raises(
        DataFormatError,
        match=r"missing tensor 'model.layers.2.mlp.down_proj.weight' with shape \[256, 768\]",
    ):
        load_engine(str(d), precision="fp32", device="cpu", max_seq_len=32)
    _, d2 = _tiny_dir(tmp_path / "b")
    _rewrite(d2, {"model.layers.9.mlp.down_proj.weight": torch.zeros(256, 768)})
    with pytest.raises(
        DataFormatError, match=re.escape("unexpected tensor 'model.layers.9.mlp.down_proj.weight'")
    ):
        load_engine(str(d2), precision="fp32", device="cpu", max_seq_len=32)


def test_integer_tensor_rejected_not_cast(tmp_path: Path) -> None:
    _, d = _tiny_dir(tmp_path)
    _rewrite(d, {"model.layers.0.mlp.up_proj.weight": torch.ones(768, 256, dtype=torch.int32)})
    with pytest.raises(
        DataFormatError, match=r"'model.layers.0.mlp.up_proj.weight' is I32, expected a floating"
    ):
        load_engine(str(d), precision="fp32", device="cpu", max_seq_len=32)


def test_bf16_checkpoint_loads_into_fp32(tmp_path: Path) -> None:
    src, d = _tiny_dir(tmp_path)
    _rewrite(d, {"model.norm.weight": src.model.norm.weight.detach().to(torch.bfloat16)})
    load_engine(str(d), precision="fp32", device="cpu", max_seq_len=32)


def test_ignores_rotary_inv_freq(tmp_path: Path) -> None:
    _, d = _tiny_dir(tmp_path)
    _rewrite(d, {"model.layers.0.self_attn.rotary_emb.inv_freq": torch.zeros(16)})
    load_engine(str(d), precision="fp32", device="cpu", max_seq_len=32)


def test_bad_directories(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=re.escape("no config.json")):
        read_hf_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(DataFormatError, match="model_type 'gpt2' is not supported"):
        load_engine(str(tmp_path), device="cpu")
    (tmp_path / "config.json").write_text(json.dumps(hf_config_dict(get_config("tiny"))))
    with pytest.raises(DataFormatError, match=re.escape("no *.safetensors files")):
        load_engine(str(tmp_path), device="cpu", precision="fp32")
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(DataFormatError, match="cannot read safetensors"):
        load_engine(str(tmp_path), device="cpu", precision="fp32")


def test_plan_covers_every_parameter() -> None:
    for name in ("tiny", "tiny-moe"):
        engine = Engine(name, precision="fp32", device="cpu", max_seq_len=8)
        targets = {s.target for s in hf_tensor_plan(engine.cfg)}
        assert targets == {n for n, _ in engine.model.named_parameters()}


def test_byte_tokenizer_round_trip() -> None:
    tok = ByteTokenizer(1024, bos_id=256, eos_id=257)
    ids = tok.encode("héllo")
    assert ids[0] == 256 and all(0 <= i < 256 for i in ids[1:])
    assert tok.decode(ids) == "héllo"
    assert tok.kind == "byte"
    with pytest.raises(ConfigError):
        ByteTokenizer(100)


def test_tokenizer_json_without_package_is_an_error(tmp_path: Path) -> None:
    assert load_tokenizer(tmp_path, vocab_size=1024).kind == "byte"
    (tmp_path / "tokenizer.json").write_text("{}")
    if tokenizers_available():
        pytest.skip("the tokenizers package is installed here")
    with pytest.raises(ConfigError, match="pip install tokenizers"):
        load_tokenizer(tmp_path, vocab_size=1024)
