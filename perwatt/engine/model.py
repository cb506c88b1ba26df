"""A decoder-only transformer (Llama 2/3, Mistral, Qwen2, Mixtral, Qwen-MoE) with a slot KV cache.

Reads top to bottom like gpt-fast's ``model.py``: RMSNorm → attention (fused QKV, RoPE, grouped
KV heads) → RMSNorm → SwiGLU MLP or mixture of experts, repeated, then the LM head.

Conventions, chosen so Hugging Face checkpoints load without rewriting:

* RoPE uses the "rotate half" layout (first and second halves of each head form the pairs), as
  HF does. HF Llama checkpoints were permuted from Meta's interleaved layout for exactly this, so
  q/k weights load as they are — no un-permutation.
* ``wqkv`` stacks q, k, v rows (one matmul instead of three); ``w13`` stacks gate then up rows;
  MoE experts are stacked along a leading expert axis (``[E, 2H, D]``, ``[E, D, H]``).
* Norms compute in fp32 and cast back before the weight multiply, as HF's ``LlamaRMSNorm``.

KV cache with slots. Each layer holds ``k_cache``/``v_cache`` of shape
``[max_batch_size, n_kv_heads, cache_len, head_dim]``: one row ("slot") per request, with
``cache_len`` = ``max_seq_len + 1`` rounded up to a multiple of 16 (aligned rows suit the fused
attention kernels). A decode step runs the first B slots (B = the engine picks the fewest that
cover the active ones; a fixed set of sizes on CUDA, so each is one captured CUDA graph).
Position ``max_seq_len`` is a scratch sink: slots inside those B that are not decoding write their
throwaway K/V there, where no mask ever looks. Each slot decodes at its own position; the
attention mask lets a slot see positions ``<= pos`` only, and attention may read only the first
``kv_len`` positions when the caller knows none beyond them is in use.

Decode attention groups the query heads that share a KV head into the query-length axis
(``[B, Hkv, G, hd]`` against ``[B, Hkv, S, hd]``) so SDPA reads each KV head once, without
materialising repeated keys.

Shapes in comments: B batch, L new tokens, S cache length, D model dim, H / Hkv heads, hd head dim,
V vocabulary, E experts.
"""

from __future__ import annotations

import math
from typing import Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perwatt.engine.config import ModelConfig, RopeScaling


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        out: Tensor = self.weight * y.to(x.dtype)
        return out


def rope_inv_freq(cfg: ModelConfig, device: torch.device | str | None = None) -> Tensor:
    """Per-pair inverse frequencies [hd/2] in fp32, scaled as ``cfg.rope_scaling`` says (the
    formulas of transformers' ``modeling_rope_utils.py``; see :class:`RopeScaling`)."""
    hd = cfg.head_dim
    exps = torch.arange(0, hd, 2, dtype=torch.float64, device=device) / hd
    inv = 1.0 / (cfg.rope_theta**exps)
    sc: RopeScaling | None = cfg.rope_scaling
    if sc is None or sc.kind == "dynamic":
        # dynamic NTK only changes the base past max_position_embeddings, which the engine's
        # max_seq_len never exceeds (see RopeScaling).
        return inv.float()
    if sc.kind == "linear":
        return (inv / sc.factor).float()
    if sc.kind == "yarn":
        return _yarn_inv_freq(inv, sc, cfg.rope_theta, hd).float()
    # Llama 3.1: keep high frequencies, divide low ones by `factor`, blend in between.
    old = sc.original_max_position_embeddings
    low_wavelen = old / sc.low_freq_factor
    high_wavelen = old / sc.high_freq_factor
    wavelen = 2 * torch.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / sc.factor, inv)
    smooth = (old / wavelen - sc.low_freq_factor) / (sc.high_freq_factor - sc.low_freq_factor)
    blended = (1 - smooth) * scaled / sc.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, blended, scaled).float()


def _yarn_inv_freq(inv: Tensor, sc: RopeScaling, theta: float, hd: int) -> Tensor:
    """YaRN (NTK-by-parts): frequencies that turn more than ``beta_fast`` times over the original
    context are kept, those turning fewer than ``beta_slow`` times are divided by ``factor``, with
    a linear ramp over the dimensions in between (transformers' ``_compute_yarn_parameters``)."""

    def correction_dim(rotations: float) -> float:
        return (hd * math.log(sc.original_max_position_embeddings / (rotations * 2 * math.pi))) / (
            2 * math.log(theta)
        )

    low, high = correction_dim(sc.beta_fast), correction_dim(sc.beta_slow)
    if sc.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, hd - 1)
    if low == high:
        high += 0.001  # as transformers: avoid a zero-width ramp
    ramp = (torch.arange(hd // 2, dtype=torch.float64, device=inv.device) - low) / (high - low)
    keep = 1 - ramp.clamp(0, 1)  # 1 = extrapolate (unchanged), 0 = interpolate (/ factor)
    return inv / sc.factor * (1 - keep) + inv * keep


def rope_cos_sin(inv_freq: Tensor, pos: Tensor, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """cos, sin of shape [*pos.shape, hd] for integer positions ``pos``, times ``scale`` (YaRN's
    attention factor; 1 otherwise)."""
    ang = pos.float().unsqueeze(-1) * inv_freq  # [..., hd/2]
    ang = torch.cat([ang, ang], dim=-1)  # rotate-half layout
    if scale != 1.0:
        return ang.cos() * scale, ang.sin() * scale
    return ang.cos(), ang.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: [B, L, heads, hd]; cos/sin: [B or 1, L, hd]. Computed in fp32, returned in x's dtype."""
    x32 = x.float()
    half = x.shape[-1] // 2
    rot = torch.cat([-x32[..., half:], x32[..., :half]], dim=-1)
    c, s = cos.unsqueeze(2), sin.unsqueeze(2)
    return (x32 * c + rot * s).to(x.dtype)


class Attention(nn.Module):
    k_cache: Tensor
    v_cache: Tensor

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        qkv_out = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
        self.wqkv = nn.Linear(cfg.dim, qkv_out, bias=cfg.qkv_bias)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=cfg.o_bias)
        self.register_buffer("k_cache", torch.empty(0), persistent=False)
        self.register_buffer("v_cache", torch.empty(0), persistent=False)

    def _qkv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, n, _ = x.shape
        q_size, kv_size = self.n_heads * self.hd, self.n_kv * self.hd
        q, k, v = self.wqkv(x).split([q_size, kv_size, kv_size], dim=-1)
        q = apply_rope(q.view(b, n, self.n_heads, self.hd), cos, sin)
        k = apply_rope(k.view(b, n, self.n_kv, self.hd), cos, sin)
        return q, k, v.view(b, n, self.n_kv, self.hd)

    def forward_seq(
        self, x: Tensor, cos: Tensor, sin: Tensor, slot_idx: Tensor | None = None
    ) -> Tensor:
        """Causal attention over a fresh sequence (positions 0..L-1). x: [B, L, D].

        With ``slot_idx`` [B] the new K/V are written to those cache slots at positions 0..L-1.
        """
        b, n, _ = x.shape
        q, k, v = self._qkv(x, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, L, hd]
        if slot_idx is not None:
            self.k_cache[slot_idx, :, :n] = k
            self.v_cache[slot_idx, :, :n] = v
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=self.n_kv != self.n_heads
        )
        out: Tensor = self.wo(y.transpose(1, 2).reshape(b, n, self.n_heads * self.hd))
        return out

    def forward_decode(
        self, x: Tensor, cos: Tensor, sin: Tensor, write_pos: Tensor, mask: Tensor
    ) -> Tensor:
        """One new token for each of the first B slots. x: [B, 1, D] with B <= max_batch_size;
        write_pos: [B]; mask: [B, 1, 1, S'] (True = may attend) over the first S' <= S cache
        positions (attention reads only those: the rest are masked anyway)."""
        b = x.shape[0]
        q, k, v = self._qkv(x, cos, sin)  # q [B, 1, H, hd], k/v [B, 1, Hkv, hd]
        rows = torch.arange(b, device=x.device)
        self.k_cache[rows, :, write_pos] = k[:, 0]
        self.v_cache[rows, :, write_pos] = v[:, 0]
        g = self.n_heads // self.n_kv
        qg = q.view(b, self.n_kv, g, self.hd)  # query heads sharing a KV head, as the L axis
        s = mask.shape[-1]
        kc, vc = self.k_cache[:b, :, :s], self.v_cache[:b, :, :s]  # views: no copy
        y = F.scaled_dot_product_attention(qg, kc, vc, attn_mask=mask)
        out: Tensor = self.wo(y.reshape(b, 1, self.n_heads * self.hd))
        return out


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(gate(x)) * up(x)), gate and up fused into one matmul."""

    def __init__(self, dim: int, hidden: int, bias: bool = False) -> None:
        super().__init__()
        self.hidden = hidden
        self.w13 = nn.Linear(dim, 2 * hidden, bias=bias)
        self.w2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w13(x).split(self.hidden, dim=-1)
        out: Tensor = self.w2(F.silu(gate) * up)
        return out


class ExpertWeights(Protocol):
    """What the MoE needs from its experts (float :class:`Experts` or quantized ones)."""

    def weight(self, name: str, idx: Tensor | int | None, dtype: torch.dtype) -> Tensor: ...

    def prepare_input(self, x: Tensor) -> Tensor: ...


class Experts(nn.Module):
    """``n`` SwiGLU experts stacked: ``w13`` [E, 2H, D] (gate rows, then up rows), ``w2``
    [E, D, H]. :meth:`weight` is the one accessor the MoE uses, so quantized experts
    (:class:`perwatt.engine.quant.QuantExperts`) can stand in by dequantizing only what is
    gathered."""

    def __init__(self, n: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.n, self.dim, self.hidden = n, dim, hidden
        self.w13 = nn.Parameter(torch.empty(n, 2 * hidden, dim))
        self.w2 = nn.Parameter(torch.empty(n, dim, hidden))

    def weight(self, name: str, idx: Tensor | int | None, dtype: torch.dtype) -> Tensor:
        """Stacked weight ``name`` ("w13" or "w2") of experts ``idx`` (None: all of them)."""
        w: Tensor = getattr(self, name)
        return (w if idx is None else w[idx]).to(dtype)

    def prepare_input(self, x: Tensor) -> Tensor:
        return x


class MoE(nn.Module):
    """Top-k routed experts (softmax over all experts, keep k, optionally renormalise) plus an
    optional shared expert gated by a sigmoid (Qwen-MoE).

    Three ways to run the same arithmetic:

    * ``grouped`` (eager; prefill and eager decode): tokens sorted by expert, each expert runs
      once on its tokens — the FLOPs of the active parameters, but a host sync per layer;
    * ``gather`` (static shapes, CUDA-graph friendly; used in the compiled decode step while
      tokens x k <= experts): each (token, choice) gathers its expert's weights, so only the
      chosen experts are read, as gpt-fast does;
    * ``dense`` (static; compiled decode with more tokens x k than experts): every expert on
      every token, weighted by a gate that is zero off the top-k — each expert's weights are read
      once, at E/k times the FFN FLOPs.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.k = cfg.num_experts_per_tok
        self.n_experts = cfg.num_experts
        self.norm_topk = cfg.norm_topk_prob
        self.gate = nn.Linear(cfg.dim, cfg.num_experts, bias=False)  # router
        self.experts: nn.Module = Experts(cfg.num_experts, cfg.dim, cfg.moe_intermediate_size)
        self.shared_expert: FeedForward | None = None
        self.shared_expert_gate: nn.Linear | None = None
        if cfg.shared_expert_intermediate_size:
            self.shared_expert = FeedForward(cfg.dim, cfg.shared_expert_intermediate_size)
            if cfg.shared_expert_gate:
                self.shared_expert_gate = nn.Linear(cfg.dim, 1, bias=False)

    @property
    def ex(self) -> ExpertWeights:
        return cast(ExpertWeights, self.experts)

    def forward(self, x: Tensor, static: bool = False) -> Tensor:
        shape = x.shape
        xf = x.reshape(-1, shape[-1])  # [T, D]
        probs = F.softmax(self.gate(xf).float(), dim=-1)  # [T, E]
        weights, chosen = probs.topk(self.k, dim=-1)  # [T, k]
        if self.norm_topk:
            weights = weights / weights.sum(-1, keepdim=True)
        weights = weights.to(x.dtype)
        xe = self.ex.prepare_input(xf)
        if not static:
            out = self._grouped(xe, weights, chosen)
        elif xf.shape[0] * self.k <= self.n_experts:
            out = self._gather(xe, weights, chosen)
        else:
            out = self._dense(xe, weights, chosen)
        if self.shared_expert is not None:
            s = self.shared_expert(xf)
            if self.shared_expert_gate is not None:
                s = torch.sigmoid(self.shared_expert_gate(xf)) * s
            out = out + s
        return out.view(shape)

    def _swiglu(self, h: Tensor) -> Tensor:
        gate, up = h.chunk(2, dim=-1)
        out: Tensor = F.silu(gate) * up
        return out

    def _grouped(self, x: Tensor, weights: Tensor, chosen: Tensor) -> Tensor:
        flat = chosen.reshape(-1)  # [T*k]: expert of each (token, choice)
        w_flat = weights.reshape(-1)
        order = flat.argsort()
        counts = torch.bincount(flat, minlength=self.n_experts).tolist()  # host sync
        out = torch.zeros_like(x)
        start = 0
        for e, c in enumerate(counts):
            if c == 0:
                continue
            idx = order[start : start + c]
            start += c
            tok = idx // self.k
            h = F.linear(x[tok], self.ex.weight("w13", e, x.dtype))
            y = F.linear(self._swiglu(h), self.ex.weight("w2", e, x.dtype))
            out.index_add_(0, tok, y * w_flat[idx, None])
        return out

    def _gather(self, x: Tensor, weights: Tensor, chosen: Tensor) -> Tensor:
        t = x.shape[0]
        idx = chosen.reshape(-1)  # [P = T*k]
        xr = x.repeat_interleave(self.k, dim=0)  # [P, D]
        # Written as multiply + sum rather than bmm: under torch.compile the gather (and any
        # dequantization) fuses into one reduction kernel that reads each chosen expert once,
        # instead of first materialising a copy of the gathered weights.
        w13 = self.ex.weight("w13", idx, x.dtype)  # [P, 2H, D]
        h = (w13 * xr.unsqueeze(1)).sum(-1)  # [P, 2H]
        w2 = self.ex.weight("w2", idx, x.dtype)  # [P, D, H]
        y = (w2 * self._swiglu(h).unsqueeze(1)).sum(-1)  # [P, D]
        return (y.view(t, self.k, -1) * weights.unsqueeze(-1)).sum(dim=1)

    def _dense(self, x: Tensor, weights: Tensor, chosen: Tensor) -> Tensor:
        w13 = self.ex.weight("w13", None, x.dtype)  # [E, 2H, D]
        h = torch.einsum("td,ehd->teh", x, w13)  # [T, E, 2H]
        w2 = self.ex.weight("w2", None, x.dtype)  # [E, D, H]
        y = torch.einsum("teh,edh->ted", self._swiglu(h), w2)  # [T, E, D]
        gate = torch.zeros(x.shape[0], self.n_experts, dtype=x.dtype, device=x.device)
        gate = gate.scatter(1, chosen, weights)  # [T, E], zero off the top-k
        return torch.einsum("ted,te->td", y, gate)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward: nn.Module = (
            MoE(cfg)
            if cfg.is_moe
            else FeedForward(cfg.dim, cfg.intermediate_size, bias=cfg.mlp_bias)
        )

    def ffn(self, x: Tensor, *, static: bool) -> Tensor:
        ff = self.feed_forward
        out: Tensor = ff(x, static=static) if isinstance(ff, MoE) else ff(x)
        return out


class Transformer(nn.Module):
    inv_freq: Tensor

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output: nn.Module = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)
        sc = cfg.rope_scaling
        self.rope_scale = sc.attention_factor if sc is not None and sc.kind == "yarn" else 1.0
        self.max_batch_size = 0
        self.max_seq_len = 0
        self.cache_len = 0
        self.tie_weights()

    def blocks(self) -> list[Block]:
        return [b for b in self.layers if isinstance(b, Block)]

    # -- setup ------------------------------------------------------------------------------

    def tie_weights(self) -> None:
        """Share the LM head with the embedding when the shape says so. Call again after
        ``to_empty``/``.to``, which copy shared parameters separately; a quantized head stays
        untied (the embedding is a lookup and keeps the compute dtype)."""
        if self.cfg.tie_embeddings and isinstance(self.output, nn.Linear):
            self.output.weight = self.tok_embeddings.weight

    def reset_buffers(self) -> None:
        """Recompute non-persistent buffers (after building on the meta device)."""
        self.inv_freq = rope_inv_freq(self.cfg, self.tok_embeddings.weight.device)

    def setup_cache(self, max_batch_size: int, max_seq_len: int, dtype: torch.dtype) -> None:
        """Allocate the slot KV cache: [max_batch_size, Hkv, cache_len, hd] (see module doc)."""
        device = self.tok_embeddings.weight.device
        self.cache_len = -(-(max_seq_len + 1) // 16) * 16
        shape = (max_batch_size, self.cfg.n_kv_heads, self.cache_len, self.cfg.head_dim)
        for layer in self.blocks():
            attn = layer.attention
            attn.k_cache = torch.zeros(shape, dtype=dtype, device=device)
            attn.v_cache = torch.zeros(shape, dtype=dtype, device=device)
        self.max_batch_size, self.max_seq_len = max_batch_size, max_seq_len

    # -- passes -----------------------------------------------------------------------------

    def _blocks_seq(self, tokens: Tensor, slot_idx: Tensor | None) -> Tensor:
        n = tokens.shape[1]
        x: Tensor = self.tok_embeddings(tokens)  # [B, L, D]
        pos = torch.arange(n, device=tokens.device)
        cos, sin = rope_cos_sin(self.inv_freq, pos[None], self.rope_scale)  # [1, L, hd]
        for layer in self.blocks():
            x = x + layer.attention.forward_seq(layer.attention_norm(x), cos, sin, slot_idx)
            x = x + layer.ffn(layer.ffn_norm(x), static=False)
        return x

    def forward(self, tokens: Tensor) -> Tensor:
        """Full-sequence logits without touching the cache. tokens: [B, T] → [B, T, V]."""
        x = self._blocks_seq(tokens, None)
        out: Tensor = self.output(self.norm(x)).float()
        return out

    def prefill(self, tokens: Tensor, slot_idx: Tensor, last_idx: Tensor) -> Tensor:
        """Run new sequences (right-padded to a common length) from position 0, filling the cache
        of ``slot_idx`` [B]; return logits at ``last_idx`` [B] (each row's last real token)."""
        x = self._blocks_seq(tokens, slot_idx)
        rows = torch.arange(x.shape[0], device=x.device)
        last = x[rows, last_idx]  # [B, D]: only the positions that get sampled go through the head
        out: Tensor = self.output(self.norm(last)).float()
        return out

    def decode(
        self,
        tokens: Tensor,
        pos: Tensor,
        write_pos: Tensor,
        static_moe: bool = False,
        kv_len: int | None = None,
    ) -> Tensor:
        """One token for each of the first B slots (B <= max_batch_size). tokens, pos,
        write_pos: [B]; slots among them that are not decoding carry ``write_pos ==
        max_seq_len`` (the scratch position). Returns logits [B, V] fp32. ``static_moe`` picks
        the MoE's static-shape paths (for torch.compile / CUDA graphs). ``kv_len`` (default: the
        whole cache) bounds the cache positions attention reads; it must exceed every ``pos``."""
        x = self.tok_embeddings(tokens[:, None])  # [B, 1, D]
        cos, sin = rope_cos_sin(self.inv_freq, pos[:, None], self.rope_scale)  # [B, 1, hd]
        keys = torch.arange(self.cache_len if kv_len is None else kv_len, device=tokens.device)
        mask = (keys[None, :] <= pos[:, None])[:, None, None, :]  # [B, 1, 1, S]
        for layer in self.blocks():
            h = layer.attention_norm(x)
            x = x + layer.attention.forward_decode(h, cos, sin, write_pos, mask)
            x = x + layer.ffn(layer.ffn_norm(x), static=static_moe)
        out: Tensor = self.output(self.norm(x[:, 0])).float()
        return out


def linear_names(model: Transformer) -> list[str]:
    """Qualified names of every nn.Linear in the model, in module order."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
