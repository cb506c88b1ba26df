"""A plain, loop-based reference decoder, written separately from perwatt.engine.model.

It reads Hugging Face tensor names directly (``model.layers.0.self_attn.q_proj.weight`` ...), so
comparing it with the engine also checks the engine's checkpoint mapping. Everything runs in
float64, one position and one head at a time, with RoPE applied pair by pair and the Llama-3
frequency scaling re-derived from its published formula. Slow by design; use a few tokens.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from perwatt.engine.config import ModelConfig


def inv_frequencies(cfg: ModelConfig) -> list[float]:
    hd = cfg.head_dim
    freqs = [1.0 / cfg.rope_theta ** (2 * i / hd) for i in range(hd // 2)]
    sc = cfg.rope_scaling
    if sc is None:
        return freqs
    if sc.kind == "linear":
        return [f / sc.factor for f in freqs]
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < sc.original_max_position_embeddings / sc.high_freq_factor:
            out.append(f)  # high frequency: unchanged
        elif wavelen > sc.original_max_position_embeddings / sc.low_freq_factor:
            out.append(f / sc.factor)  # low frequency: fully scaled
        else:
            t = (sc.original_max_position_embeddings / wavelen - sc.low_freq_factor) / (
                sc.high_freq_factor - sc.low_freq_factor
            )
            out.append((1 - t) * f / sc.factor + t * f)
    return out


def _rms(x: Tensor, w: Tensor, eps: float) -> Tensor:
    return w * (x / torch.sqrt((x * x).mean() + eps))


def _rope(v: Tensor, pos: int, freqs: list[float]) -> Tensor:
    half = len(freqs)
    out = v.clone()
    for i, f in enumerate(freqs):
        c, s = math.cos(pos * f), math.sin(pos * f)
        a, b = v[i], v[i + half]
        out[i] = a * c - b * s
        out[i + half] = b * c + a * s
    return out


def _swiglu(x: Tensor, w: dict[str, Tensor], prefix: str, names: tuple[str, str, str]) -> Tensor:
    g, u, d = names
    gate = w[f"{prefix}.{g}.weight"] @ x
    up = w[f"{prefix}.{u}.weight"] @ x
    return w[f"{prefix}.{d}.weight"] @ (gate * torch.sigmoid(gate) * up)


def _moe(x: Tensor, w: dict[str, Tensor], layer: str, cfg: ModelConfig) -> Tensor:
    qwen = cfg.shared_expert_intermediate_size > 0
    base = f"{layer}.mlp" if qwen else f"{layer}.block_sparse_moe"
    names = ("gate_proj", "up_proj", "down_proj") if qwen else ("w1", "w3", "w2")
    logits = w[f"{base}.gate.weight"] @ x
    probs = torch.softmax(logits, dim=0)
    order = sorted(range(cfg.num_experts), key=lambda e: -float(probs[e]))
    chosen = order[: cfg.num_experts_per_tok]
    total = sum(float(probs[e]) for e in chosen)
    out = torch.zeros_like(x)
    for e in chosen:
        weight = float(probs[e]) / total if cfg.norm_topk_prob else float(probs[e])
        out = out + weight * _swiglu(x, w, f"{base}.experts.{e}", names)
    if qwen:
        shared = _swiglu(x, w, f"{base}.shared_expert", ("gate_proj", "up_proj", "down_proj"))
        if cfg.shared_expert_gate:
            shared = torch.sigmoid(w[f"{base}.shared_expert_gate.weight"] @ x) * shared
        out = out + shared
    return out


def reference_logits(cfg: ModelConfig, hf: dict[str, Tensor], tokens: list[int]) -> Tensor:
    """Logits [T, V] (float64) for ``tokens`` from HF-named weights ``hf``."""
    w = {k: v.double() for k, v in hf.items()}
    hd, nh, nkv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
    group = nh // nkv
    freqs = inv_frequencies(cfg)
    xs = [w["model.embed_tokens.weight"][t].clone() for t in tokens]
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}"
        keys: list[list[Tensor]] = []
        values: list[list[Tensor]] = []
        queries: list[list[Tensor]] = []
        for pos, x in enumerate(xs):
            h = _rms(x, w[f"{p}.input_layernorm.weight"], cfg.norm_eps)
            proj = {}
            for name in ("q", "k", "v"):
                y = w[f"{p}.self_attn.{name}_proj.weight"] @ h
                bias = w.get(f"{p}.self_attn.{name}_proj.bias")
                proj[name] = y + bias if bias is not None else y
            queries.append([_rope(proj["q"][j * hd : (j + 1) * hd], pos, freqs) for j in range(nh)])
            keys.append([_rope(proj["k"][j * hd : (j + 1) * hd], pos, freqs) for j in range(nkv)])
            values.append([proj["v"][j * hd : (j + 1) * hd] for j in range(nkv)])
        new_xs = []
        for pos, x in enumerate(xs):
            heads = []
            for j in range(nh):
                kv = j // group
                scores = [
                    float(queries[pos][j] @ keys[s][kv]) / math.sqrt(hd) for s in range(pos + 1)
                ]
                m = max(scores)
                ex = [math.exp(sc - m) for sc in scores]
                z = sum(ex)
                heads.append(sum((e / z) * values[s][kv] for s, e in enumerate(ex)))
            attn = w[f"{p}.self_attn.o_proj.weight"] @ torch.cat(heads)
            x = x + attn
            h = _rms(x, w[f"{p}.post_attention_layernorm.weight"], cfg.norm_eps)
            if cfg.is_moe:
                x = x + _moe(h, w, p, cfg)
            else:
                x = x + _swiglu(h, w, f"{p}.mlp", ("gate_proj", "up_proj", "down_proj"))
            new_xs.append(x)
        xs = new_xs
    head = w["model.embed_tokens.weight"] if cfg.tie_embeddings else w["lm_head.weight"]
    return torch.stack([head @ _rms(x, w["model.norm.weight"], cfg.norm_eps) for x in xs])
