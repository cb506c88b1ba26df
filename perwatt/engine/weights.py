"""Weights: seeded random values for a named shape, or a local Hugging Face checkpoint.

Random weights. Energy per token depends on the shape, not on the trained values, and no model hub
is reachable from the machines this runs on, so a named shape gets reproducible random weights:
every parameter is drawn in fp32 from its own generator, seeded from the seed and its name, then
cast, so the bf16 and fp32 engines of the same seed hold the same weights (up to rounding) and the accuracy
guard compares like with like. Matrices are N(0, 1/fan_in) so activations keep unit scale through
depth; norms are 1; biases N(0, 0.02²).

Hugging Face checkpoints. ``config.json`` plus ``*.safetensors`` (one file, or shards listed in
``model.safetensors.index.json``), opened with ``safe_open`` so tensors are memory-mapped and
copied into the model one at a time. HF names map onto this engine's fused layout (q/k/v rows
into ``wqkv``, gate/up rows into ``w13``). No q/k permutation is needed: HF Llama weights are
already in the rotate-half layout this engine's RoPE uses (see ``model.py``). A missing tensor,
an unexpected one, or a shape mismatch raises :class:`DataFormatError` naming the tensor, the
expected and the found shape.

:func:`export_hf` writes a model back in the same format — used by the tests, and by the GPU
benchmark to hand peers (HF ``generate``) exactly the same random weights.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import Tensor, nn

from perwatt.engine.config import ModelConfig, config_from_hf
from perwatt.engine.model import Transformer
from perwatt.errors import DataFormatError

# Tensors some checkpoints carry that hold nothing this engine needs.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
# safetensors dtype codes the loader converts losslessly enough into the model's float dtype.
# Anything else (I32, U8, F8_E4M3 ...) is an integer or pre-quantized tensor that copy_ would
# silently cast into garbage weights, so it is rejected by name instead.
_FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})


def random_tensor(name: str, shape: Sequence[int], seed: int, device: torch.device) -> Tensor:
    """The seeded random value (fp32) of parameter ``name``; independent of every other one, so
    parameters can be materialised in any order (the quantizer makes one layer at a time)."""
    gen = torch.Generator(device=device)
    gen.manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (1 << 62))
    if name.endswith("norm.weight"):
        return torch.ones(tuple(shape), device=device)
    std = 0.02 if name.endswith("bias") else 1.0 / math.sqrt(shape[-1])
    return torch.randn(tuple(shape), generator=gen, device=device).mul_(std)


def init_random_(model: nn.Module, seed: int) -> None:
    """Fill every parameter of ``model`` in place with its seeded random value (see module doc).
    Quantized modules hold buffers, not parameters, and are left alone."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(random_tensor(name, p.shape, seed, p.device))


def materialize_meta_(model: nn.Module, device: torch.device) -> None:
    """Give every parameter and buffer still on the meta device uninitialised storage on
    ``device``, leaving real tensors alone (``to_empty`` would wipe those too)."""
    for mod in model.modules():
        for n, p in list(mod._parameters.items()):
            if p is not None and p.is_meta:
                mod._parameters[n] = nn.Parameter(
                    torch.empty_like(p, device=device), requires_grad=False
                )
        for n, b in list(mod._buffers.items()):
            if b is not None and b.is_meta:
                mod._buffers[n] = torch.empty_like(b, device=device)


@dataclass(frozen=True, slots=True)
class _Slot:
    """Where one HF tensor goes: rows ``[row0, row0 + shape[0])`` of parameter ``target``
    (of its entry ``index`` along the first axis for stacked experts)."""

    hf_name: str
    target: str
    row0: int
    shape: tuple[int, ...]
    index: int | None = None

    def view(self, param: Tensor) -> Tensor:
        base = param if self.index is None else param[self.index]
        return base[self.row0 : self.row0 + self.shape[0]]


def _mlp_slots(
    hf_prefix: str,
    ours: str,
    dim: int,
    hidden: int,
    names: tuple[str, str, str],
    expert: int | None = None,
    bias: bool = False,
) -> list[_Slot]:
    """Gate/up rows into ``w13``, down into ``w2``: of a FeedForward (``ours.w13.weight``) or of
    entry ``expert`` of stacked Experts (``ours.w13``); with ``bias`` (Llama ``mlp_bias``) their
    biases likewise."""
    gate, up, down = names
    suffix = "" if expert is not None else ".weight"
    slots = [
        _Slot(f"{hf_prefix}.{gate}.weight", f"{ours}.w13{suffix}", 0, (hidden, dim), expert),
        _Slot(f"{hf_prefix}.{up}.weight", f"{ours}.w13{suffix}", hidden, (hidden, dim), expert),
        _Slot(f"{hf_prefix}.{down}.weight", f"{ours}.w2{suffix}", 0, (dim, hidden), expert),
    ]
    if bias:
        slots += [
            _Slot(f"{hf_prefix}.{gate}.bias", f"{ours}.w13.bias", 0, (hidden,)),
            _Slot(f"{hf_prefix}.{up}.bias", f"{ours}.w13.bias", hidden, (hidden,)),
            _Slot(f"{hf_prefix}.{down}.bias", f"{ours}.w2.bias", 0, (dim,)),
        ]
    return slots


def hf_tensor_plan(cfg: ModelConfig) -> list[_Slot]:
    """Every tensor a HF checkpoint of this shape must hold, with its shape and destination."""
    d, hd = cfg.dim, cfg.head_dim
    qn, kvn = cfg.n_heads * hd, cfg.n_kv_heads * hd
    slots = [_Slot("model.embed_tokens.weight", "tok_embeddings.weight", 0, (cfg.vocab_size, d))]
    for i in range(cfg.n_layers):
        hf, us = f"model.layers.{i}", f"layers.{i}"
        a = f"{us}.attention"
        slots += [
            _Slot(f"{hf}.input_layernorm.weight", f"{us}.attention_norm.weight", 0, (d,)),
            _Slot(f"{hf}.post_attention_layernorm.weight", f"{us}.ffn_norm.weight", 0, (d,)),
            _Slot(f"{hf}.self_attn.q_proj.weight", f"{a}.wqkv.weight", 0, (qn, d)),
            _Slot(f"{hf}.self_attn.k_proj.weight", f"{a}.wqkv.weight", qn, (kvn, d)),
            _Slot(f"{hf}.self_attn.v_proj.weight", f"{a}.wqkv.weight", qn + kvn, (kvn, d)),
            _Slot(f"{hf}.self_attn.o_proj.weight", f"{a}.wo.weight", 0, (d, qn)),
        ]
        if cfg.qkv_bias:
            slots += [
                _Slot(f"{hf}.self_attn.q_proj.bias", f"{a}.wqkv.bias", 0, (qn,)),
                _Slot(f"{hf}.self_attn.k_proj.bias", f"{a}.wqkv.bias", qn, (kvn,)),
                _Slot(f"{hf}.self_attn.v_proj.bias", f"{a}.wqkv.bias", qn + kvn, (kvn,)),
            ]
        if cfg.o_bias:
            slots.append(_Slot(f"{hf}.self_attn.o_proj.bias", f"{a}.wo.bias", 0, (d,)))
        ff = f"{us}.feed_forward"
        if not cfg.is_moe:
            slots += _mlp_slots(
                f"{hf}.mlp",
                ff,
                d,
                cfg.intermediate_size,
                ("gate_proj", "up_proj", "down_proj"),
                bias=cfg.mlp_bias,
            )
            continue
        e, h = cfg.num_experts, cfg.moe_intermediate_size
        if cfg.shared_expert_intermediate_size:  # Qwen-MoE naming
            slots.append(_Slot(f"{hf}.mlp.gate.weight", f"{ff}.gate.weight", 0, (e, d)))
            for j in range(e):
                slots += _mlp_slots(
                    f"{hf}.mlp.experts.{j}",
                    f"{ff}.experts",
                    d,
                    h,
                    ("gate_proj", "up_proj", "down_proj"),
                    expert=j,
                )
            slots += _mlp_slots(
                f"{hf}.mlp.shared_expert",
                f"{ff}.shared_expert",
                d,
                cfg.shared_expert_intermediate_size,
                ("gate_proj", "up_proj", "down_proj"),
            )
            if cfg.shared_expert_gate:
                slots.append(
                    _Slot(
                        f"{hf}.mlp.shared_expert_gate.weight",
                        f"{ff}.shared_expert_gate.weight",
                        0,
                        (1, d),
                    )
                )
        else:  # Mixtral naming
            moe = f"{hf}.block_sparse_moe"
            slots.append(_Slot(f"{moe}.gate.weight", f"{ff}.gate.weight", 0, (e, d)))
            for j in range(e):
                slots += _mlp_slots(
                    f"{moe}.experts.{j}", f"{ff}.experts", d, h, ("w1", "w3", "w2"), expert=j
                )
    slots.append(_Slot("model.norm.weight", "norm.weight", 0, (d,)))
    if not cfg.tie_embeddings:
        slots.append(_Slot("lm_head.weight", "output.weight", 0, (cfg.vocab_size, d)))
    return slots


def read_hf_config(directory: str | Path) -> ModelConfig:
    """The :class:`ModelConfig` of a local HF checkpoint directory."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise DataFormatError(f"{directory}: no config.json (expected a Hugging Face checkpoint)")
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataFormatError(f"{path}: cannot parse: {e}") from e
    if not isinstance(raw, dict):
        raise DataFormatError(f"{path}: expected a JSON object")
    generation: dict[str, Any] | None = None
    gpath = Path(directory) / "generation_config.json"
    if gpath.is_file():
        try:
            generation = json.loads(gpath.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataFormatError(f"{gpath}: cannot parse: {e}") from e
        if not isinstance(generation, dict):
            raise DataFormatError(f"{gpath}: expected a JSON object")
    cfg = config_from_hf(raw, name=Path(directory).resolve().name, generation=generation)
    if cfg.tie_embeddings and _stored_head_differs(Path(directory)):
        # As transformers >= 5 does: a tied config whose checkpoint stores a head that is not
        # the embedding gets that head, untied.
        cfg = cfg.replace(tie_embeddings=False)
    return cfg


def _stored_head_differs(directory: Path) -> bool:
    """Whether a checkpoint stores ``lm_head.weight`` with values other than the embedding's."""
    from safetensors import safe_open

    where: dict[str, Path] = {}
    try:
        for f in _shard_files(directory):
            with safe_open(str(f), framework="pt", device="cpu") as fh:
                for name in ("lm_head.weight", "model.embed_tokens.weight"):
                    if name in fh.keys():  # noqa: SIM118
                        where[name] = f
        if len(where) < 2:
            return False
        tensors = []
        for name in ("lm_head.weight", "model.embed_tokens.weight"):
            with safe_open(str(where[name]), framework="pt", device="cpu") as fh:
                tensors.append(fh.get_tensor(name))
    except (OSError, RuntimeError, SafetensorError):
        return False  # unreadable files are reported, with their names, by load_hf_weights
    head, emb = tensors
    return head.shape != emb.shape or not torch.equal(head, emb)


def _shard_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataFormatError(f"{index}: not a safetensors index ({e})") from e
        files = sorted({directory / str(f) for f in weight_map.values()})
        for f in files:
            if not f.is_file():
                raise DataFormatError(f"{index}: lists {f.name}, which does not exist")
        return files
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise DataFormatError(f"{directory}: no *.safetensors files")
    return files


def load_hf_weights(model: Transformer, directory: str | Path) -> None:
    """Copy a HF checkpoint into ``model`` (already on its device and dtype), checking every
    tensor's presence and shape first."""
    from safetensors import safe_open

    directory = Path(directory)
    plan = {s.hf_name: s for s in hf_tensor_plan(model.cfg)}
    params = dict(model.named_parameters(remove_duplicate=False))
    found: dict[str, Path] = {}
    # Pass 1: names and shapes only (cheap: the header), so a bad checkpoint fails before copying.
    for f in _shard_files(directory):
        try:
            with safe_open(str(f), framework="pt", device="cpu") as fh:
                for name in fh.keys():  # noqa: SIM118
                    if name.endswith(_IGNORED_SUFFIXES):
                        continue
                    if name == "lm_head.weight" and model.cfg.tie_embeddings:
                        # Some tied checkpoints store the head as well, equal to the embedding
                        # (read_hf_config unties one that differs, as transformers does).
                        continue
                    slot = plan.get(name)
                    if slot is None:
                        raise DataFormatError(
                            f"{f.name}: unexpected tensor {name!r} for shape {model.cfg.name} "
                            "(does config.json match the weights?)"
                        )
                    shape = tuple(fh.get_slice(name).get_shape())
                    if shape != slot.shape:
                        raise DataFormatError(
                            f"{f.name}: tensor {name!r} has shape {list(shape)}, expected "
                            f"{list(slot.shape)} from config.json"
                        )
                    dtype = fh.get_slice(name).get_dtype()
                    if dtype not in _FLOAT_DTYPES:
                        raise DataFormatError(
                            f"{f.name}: tensor {name!r} is {dtype}, expected a floating-point "
                            "tensor (F32, F16 or BF16); pre-quantized checkpoints are not "
                            "supported: load the unquantized weights and pick --precision"
                        )
                    found[name] = f
        except (OSError, RuntimeError, SafetensorError) as e:
            raise DataFormatError(f"{f}: cannot read safetensors: {e}") from e
    missing = [n for n in plan if n not in found]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataFormatError(
            f"{directory}: missing tensor {missing[0]!r} with shape "
            f"{list(plan[missing[0]].shape)}{more}"
        )
    # Pass 2: copy, one memory-mapped tensor at a time.
    by_file: dict[Path, list[str]] = {}
    for name, f in found.items():
        by_file.setdefault(f, []).append(name)
    with torch.no_grad():
        for f, names in by_file.items():
            with safe_open(str(f), framework="pt", device="cpu") as fh:
                for name in names:
                    slot = plan[name]
                    slot.view(params[slot.target]).copy_(fh.get_tensor(name))
    model.tie_weights()


def hf_config_dict(cfg: ModelConfig) -> dict[str, Any]:
    base: dict[str, Any] = {
        "hidden_size": cfg.dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": (
            list(cfg.eos_token_ids) if len(cfg.eos_token_ids) > 1 else cfg.eos_token_id
        ),
        "hidden_act": "silu",
        "torch_dtype": "bfloat16",
    }
    if cfg.rope_scaling is not None:
        # The older top-level layout (rope_theta + rope_scaling): transformers 4.x and 5.x both
        # read it, so an exported checkpoint loads in either.
        rs = cfg.rope_scaling
        scaling: dict[str, Any] = {"rope_type": rs.kind, "factor": rs.factor}
        if rs.kind == "llama3":
            scaling.update(
                low_freq_factor=rs.low_freq_factor,
                high_freq_factor=rs.high_freq_factor,
                original_max_position_embeddings=rs.original_max_position_embeddings,
            )
        elif rs.kind == "yarn":
            scaling.update(
                original_max_position_embeddings=rs.original_max_position_embeddings,
                beta_fast=rs.beta_fast,
                beta_slow=rs.beta_slow,
                truncate=rs.truncate,
                attention_factor=rs.attention_factor,
            )
        base["rope_scaling"] = scaling
    if cfg.is_moe and cfg.shared_expert_intermediate_size:
        base.update(
            model_type="qwen2_moe",
            architectures=["Qwen2MoeForCausalLM"],
            intermediate_size=cfg.intermediate_size or cfg.shared_expert_intermediate_size,
            num_experts=cfg.num_experts,
            num_experts_per_tok=cfg.num_experts_per_tok,
            moe_intermediate_size=cfg.moe_intermediate_size,
            shared_expert_intermediate_size=cfg.shared_expert_intermediate_size,
            norm_topk_prob=cfg.norm_topk_prob,
            decoder_sparse_step=1,
            use_sliding_window=False,
        )
    elif cfg.is_moe:
        base.update(
            model_type="mixtral",
            architectures=["MixtralForCausalLM"],
            intermediate_size=cfg.moe_intermediate_size,
            num_local_experts=cfg.num_experts,
            num_experts_per_tok=cfg.num_experts_per_tok,
            sliding_window=None,
        )
    elif cfg.qkv_bias and not cfg.o_bias:
        base.update(
            model_type="qwen2",
            architectures=["Qwen2ForCausalLM"],
            intermediate_size=cfg.intermediate_size,
            use_sliding_window=False,
        )
    else:
        base.update(
            model_type="llama",
            architectures=["LlamaForCausalLM"],
            intermediate_size=cfg.intermediate_size,
            attention_bias=cfg.qkv_bias,
            mlp_bias=cfg.mlp_bias,
        )
    return base


def export_hf(
    model: Transformer,
    directory: str | Path,
    *,
    max_shard_bytes: int = 4 << 30,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model`` as a HF checkpoint (config.json + safetensors, sharded with an index when
    larger than ``max_shard_bytes``). Files are written to ``*.tmp`` and renamed."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear) and hasattr(mod, "dequantize"):
            raise DataFormatError(f"export_hf needs an unquantized model; {name} is quantized")
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for s in hf_tensor_plan(model.cfg):
        t = s.view(params[s.target]).detach()
        t = (t.to(dtype) if dtype is not None else t).contiguous().cpu()
        nbytes = t.numel() * t.element_size()
        if size and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][s.hf_name] = t
        size += nbytes
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    for fname, shard in zip(names, shards, strict=True):
        tmp = directory / (fname + ".tmp")
        save_file(shard, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, directory / fname)
    if len(shards) > 1:
        index = {
            "metadata": {
                "total_size": sum(t.numel() * t.element_size() for s in shards for t in s.values())
            },
            "weight_map": {n: f for f, s in zip(names, shards, strict=True) for n in s},
        }
        _write_json(directory / "model.safetensors.index.json", index)
    _write_json(directory / "config.json", hf_config_dict(model.cfg))
    return directory


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)
