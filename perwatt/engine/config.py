"""Model shapes by name, and the arithmetic the energy benchmark needs about them.

A *shape* is everything that decides how many bytes and FLOPs a token costs: layer count, widths,
heads, vocabulary, experts. Energy per token depends on the shape, not on the trained values, so
the benchmark can run a real shape with seeded random weights when no checkpoint is at hand.

Presets are plain functions in a registry (gpt-fast's ``transformer_configs`` idea); each real one
cites the Hugging Face ``config.json`` its numbers were copied from. :func:`config_from_hf` reads
such a file directly, for local checkpoints.

Parameter helpers count *total* parameters (what must sit in memory) and *active* parameters (what
one token touches: for a mixture of experts only the routed ``top_k`` experts plus any shared
expert), so MoE and dense models can be compared at equal active or equal total size.

Roofline helpers give the bytes one decode step must move (weights once per step, plus the KV
cache each sequence reads) and the FLOPs per token; a benchmark divides by the GPU's bandwidth and
peak FLOP/s to get the physical ceiling a measured figure is a fraction of.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from perwatt.errors import ConfigError, DataFormatError

#: RoPE types (Hugging Face ``rope_type``) this engine computes exactly; see :class:`RopeScaling`.
ROPE_TYPES = ("linear", "llama3", "yarn", "dynamic")


@dataclass(frozen=True, slots=True, kw_only=True)
class RopeScaling:
    """RoPE frequency scaling, as Hugging Face ``transformers`` defines it per ``rope_type``
    (``modeling_rope_utils.py``; each kind below follows that file's formula):

    * ``llama3`` (Llama 3.1+): long wavelengths are divided by ``factor``, short ones kept, and
      the band between ``original_max_position_embeddings / low_freq_factor`` and
      ``.../high_freq_factor`` is interpolated smoothly;
    * ``linear``: every frequency divided by ``factor``;
    * ``yarn`` (Qwen2.5 long context, some Mistral/Llama fine-tunes): NTK-by-parts between
      ``beta_fast`` and ``beta_slow`` rotations, plus an ``attention_factor`` that multiplies
      cos and sin (resolved here from ``mscale``/``mscale_all_dim`` or ``factor`` as HF does);
    * ``dynamic`` (dynamic NTK): HF recomputes the base only once a sequence grows past
      ``max_position_embeddings``. This engine never runs past that length (``max_seq_len`` is
      capped by it), so inside it dynamic is exactly the unscaled RoPE; the kind is kept so the
      config says what the checkpoint asked for.

    Other kinds (``longrope``: a frequency table that switches with the sequence length, used
    by Phi-3; ``proportional``: partial rotary) are refused by :func:`config_from_hf`.
    """

    kind: str = "llama3"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    truncate: bool = True
    attention_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ROPE_TYPES:
            raise ConfigError(
                f"unsupported rope scaling {self.kind!r}; supported: {', '.join(ROPE_TYPES)}"
            )
        if self.factor <= 0:
            raise ConfigError(f"rope scaling factor must be > 0, got {self.factor}")
        if self.kind == "llama3" and not self.high_freq_factor > self.low_freq_factor:
            raise ConfigError("rope scaling needs high_freq_factor > low_freq_factor")
        if self.original_max_position_embeddings < 1 or self.attention_factor <= 0:
            raise ConfigError(
                "rope scaling needs original_max_position_embeddings >= 1 and attention_factor > 0"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelConfig:
    """A decoder-only transformer shape (dense or mixture of experts).

    Dense models use ``intermediate_size``. MoE models (``num_experts > 0``) replace the MLP of
    every layer by ``num_experts`` experts of width ``moe_intermediate_size``, of which
    ``num_experts_per_tok`` are used per token, plus an optional always-on shared expert of width
    ``shared_expert_intermediate_size`` (Qwen-MoE), optionally gated by a sigmoid.
    """

    name: str
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    intermediate_size: int
    head_dim: int = 0  # 0 = dim // n_heads
    norm_eps: float = 1e-5
    rope_theta: float = 10_000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 4096
    qkv_bias: bool = False
    o_bias: bool = False  # Llama ``attention_bias: true`` biases o_proj too; Qwen2 does not
    mlp_bias: bool = False  # Llama ``mlp_bias: true``: gate/up/down biases
    tie_embeddings: bool = False
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = True  # Mixtral renormalises the top-k weights; Qwen1.5-MoE does not
    shared_expert_intermediate_size: int = 0
    shared_expert_gate: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | None = None  # the first of eos_token_ids (presets give just this one)
    # Every id that ends a generation: config.json's eos_token_id (an int or a list, as in
    # Llama-3.x-Instruct's [128001, 128008, 128009]) and generation_config.json's.
    eos_token_ids: tuple[int, ...] = ()
    source: str = ""  # where the numbers come from

    def __post_init__(self) -> None:
        ids = tuple(dict.fromkeys(self.eos_token_ids))  # dedupe, keep order
        if self.eos_token_id is not None and self.eos_token_id not in ids:
            ids = (self.eos_token_id, *ids)
        object.__setattr__(self, "eos_token_ids", ids)
        if self.eos_token_id is None and ids:
            object.__setattr__(self, "eos_token_id", ids[0])
        for f in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads"):
            if getattr(self, f) < 1:
                raise ConfigError(f"{self.name}: {f} must be >= 1, got {getattr(self, f)}")
        if self.head_dim == 0:
            if self.dim % self.n_heads:
                raise ConfigError(f"{self.name}: dim {self.dim} not divisible by heads")
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if self.head_dim % 2:
            raise ConfigError(f"{self.name}: head_dim must be even for RoPE, got {self.head_dim}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"{self.name}: n_heads {self.n_heads} must be a multiple of "
                f"n_kv_heads {self.n_kv_heads} (grouped-query attention)"
            )
        if self.is_moe:
            if not 1 <= self.num_experts_per_tok <= self.num_experts:
                raise ConfigError(
                    f"{self.name}: num_experts_per_tok must be in 1..{self.num_experts}, "
                    f"got {self.num_experts_per_tok}"
                )
            if self.moe_intermediate_size < 1:
                raise ConfigError(f"{self.name}: an MoE model needs moe_intermediate_size >= 1")
        elif self.intermediate_size < 1:
            raise ConfigError(f"{self.name}: intermediate_size must be >= 1")
        if self.norm_eps <= 0 or self.rope_theta <= 0:
            raise ConfigError(f"{self.name}: norm_eps and rope_theta must be > 0")

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def group_size(self) -> int:
        """Query heads per KV head."""
        return self.n_heads // self.n_kv_heads

    def replace(self, **changes: Any) -> ModelConfig:
        if "eos_token_id" in changes and "eos_token_ids" not in changes:
            # A new single EOS replaces the list rather than joining it.
            changes["eos_token_ids"] = ()
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return d


# ----------------------------------------------------------------------------- registry

_REGISTRY: dict[str, Callable[[], ModelConfig]] = {}


def _register(name: str) -> Callable[[Callable[[], ModelConfig]], Callable[[], ModelConfig]]:
    def deco(fn: Callable[[], ModelConfig]) -> Callable[[], ModelConfig]:
        _REGISTRY[name] = fn
        return fn

    return deco


@_register("tiny")
def tiny() -> ModelConfig:
    """~3.3 M parameters, Llama-3 style (GQA 8:2, llama3 RoPE scaling): CPU tests and demos."""
    return ModelConfig(
        name="tiny",
        vocab_size=1024,
        dim=256,
        n_layers=4,
        n_heads=8,
        n_kv_heads=2,
        intermediate_size=768,
        rope_theta=500_000.0,
        rope_scaling=RopeScaling(factor=8.0, original_max_position_embeddings=64),
        max_position_embeddings=2048,
        bos_token_id=256,
        eos_token_id=257,
        source="perwatt test preset",
    )


@_register("tiny-moe")
def tiny_moe() -> ModelConfig:
    """~7.5 M total / ~2.8 M active parameters, Mixtral style (8 experts, top 2)."""
    return ModelConfig(
        name="tiny-moe",
        vocab_size=1024,
        dim=256,
        n_layers=4,
        n_heads=8,
        n_kv_heads=2,
        intermediate_size=0,
        num_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=256,
        rope_theta=1_000_000.0,
        max_position_embeddings=2048,
        bos_token_id=256,
        eos_token_id=257,
        source="perwatt test preset",
    )


_LLAMA3_ROPE = RopeScaling(
    kind="llama3",
    factor=32.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=8192,
)


@_register("llama-3.2-1b")
def llama_3_2_1b() -> ModelConfig:
    return ModelConfig(
        name="llama-3.2-1b",
        vocab_size=128_256,
        dim=2048,
        n_layers=16,
        n_heads=32,
        n_kv_heads=8,
        head_dim=64,
        intermediate_size=8192,
        norm_eps=1e-5,
        rope_theta=500_000.0,
        rope_scaling=_LLAMA3_ROPE,
        max_position_embeddings=131_072,
        tie_embeddings=True,
        bos_token_id=128_000,
        eos_token_id=128_001,
        source="https://huggingface.co/meta-llama/Llama-3.2-1B/blob/main/config.json",
    )


@_register("llama-3.1-8b")
def llama_3_1_8b() -> ModelConfig:
    return ModelConfig(
        name="llama-3.1-8b",
        vocab_size=128_256,
        dim=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        intermediate_size=14_336,
        norm_eps=1e-5,
        rope_theta=500_000.0,
        rope_scaling=RopeScaling(
            kind="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        ),
        max_position_embeddings=131_072,
        bos_token_id=128_000,
        eos_token_id=128_001,
        source="https://huggingface.co/meta-llama/Llama-3.1-8B/blob/main/config.json",
    )


@_register("llama-2-7b")
def llama_2_7b() -> ModelConfig:
    return ModelConfig(
        name="llama-2-7b",
        vocab_size=32_000,
        dim=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=32,
        intermediate_size=11_008,
        norm_eps=1e-5,
        rope_theta=10_000.0,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        source="https://huggingface.co/meta-llama/Llama-2-7b-hf/blob/main/config.json",
    )


@_register("mistral-7b")
def mistral_7b() -> ModelConfig:
    # v0.3: same body as v0.1 with a 32768 vocabulary, rope_theta 1e6 and no sliding window (v0.1
    # used a 4096-token sliding window, which this engine does not implement).
    return ModelConfig(
        name="mistral-7b",
        vocab_size=32_768,
        dim=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        intermediate_size=14_336,
        norm_eps=1e-5,
        rope_theta=1_000_000.0,
        max_position_embeddings=32_768,
        bos_token_id=1,
        eos_token_id=2,
        source="https://huggingface.co/mistralai/Mistral-7B-v0.3/blob/main/config.json",
    )


@_register("qwen2.5-7b")
def qwen2_5_7b() -> ModelConfig:
    return ModelConfig(
        name="qwen2.5-7b",
        vocab_size=152_064,
        dim=3584,
        n_layers=28,
        n_heads=28,
        n_kv_heads=4,
        intermediate_size=18_944,
        norm_eps=1e-6,
        rope_theta=1_000_000.0,
        max_position_embeddings=131_072,
        qkv_bias=True,
        bos_token_id=151_643,
        eos_token_id=151_643,
        source="https://huggingface.co/Qwen/Qwen2.5-7B/blob/main/config.json",
    )


@_register("mixtral-8x7b")
def mixtral_8x7b() -> ModelConfig:
    return ModelConfig(
        name="mixtral-8x7b",
        vocab_size=32_000,
        dim=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        intermediate_size=0,
        num_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=14_336,
        norm_eps=1e-5,
        rope_theta=1_000_000.0,
        max_position_embeddings=32_768,
        bos_token_id=1,
        eos_token_id=2,
        source="https://huggingface.co/mistralai/Mixtral-8x7B-v0.1/blob/main/config.json",
    )


@_register("qwen1.5-moe-a2.7b")
def qwen1_5_moe_a2_7b() -> ModelConfig:
    return ModelConfig(
        name="qwen1.5-moe-a2.7b",
        vocab_size=151_936,
        dim=2048,
        n_layers=24,
        n_heads=16,
        n_kv_heads=16,
        intermediate_size=5632,
        num_experts=60,
        num_experts_per_tok=4,
        moe_intermediate_size=1408,
        norm_topk_prob=False,
        shared_expert_intermediate_size=5632,
        shared_expert_gate=True,
        norm_eps=1e-6,
        rope_theta=1_000_000.0,
        max_position_embeddings=8192,
        qkv_bias=True,
        bos_token_id=151_643,
        eos_token_id=151_643,
        source="https://huggingface.co/Qwen/Qwen1.5-MoE-A2.7B/blob/main/config.json",
    )


def list_configs() -> list[str]:
    """Names of every preset shape, sorted."""
    return sorted(_REGISTRY)


def get_config(name: str) -> ModelConfig:
    """The preset called ``name`` (case-insensitive); :class:`ConfigError` lists the names."""
    fn = _REGISTRY.get(name.strip().lower())
    if fn is None:
        raise ConfigError(
            f"unknown model shape {name!r}; known shapes: {', '.join(list_configs())} "
            "(or pass a local Hugging Face directory with config.json)"
        )
    return fn()


# ----------------------------------------------------------------------------- HF config.json

_HF_MODEL_TYPES = ("llama", "mistral", "qwen2", "mixtral", "qwen2_moe")


def _ids(value: Any, where: str) -> tuple[int, ...]:
    """An ``eos_token_id``/``bos_token_id`` value (null, an int or a list of ints) as a tuple."""
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise DataFormatError(f"{where}: expected a token id or a list of ids, got {value!r}")
    return tuple(items)


def _rope(hf: Mapping[str, Any], head_dim: int, max_pos: int) -> tuple[float, RopeScaling | None]:
    """RoPE theta and scaling from either layout transformers writes.

    transformers >= 5 writes one ``rope_parameters`` object (``{"rope_theta", "rope_type",
    "factor", ...}``); older files carry a top-level ``rope_theta`` and a ``rope_scaling`` object
    (``rope_type``, or ``type`` before that). Both are read, the new one first, and anything this
    engine cannot compute exactly is refused rather than silently run unscaled.
    """
    params = hf.get("rope_parameters")
    if params is not None and not isinstance(params, dict):
        raise DataFormatError(f"config.json: rope_parameters must be an object, got {params!r}")
    if params and any(isinstance(v, dict) for v in params.values()):
        raise DataFormatError(
            "config.json: per-layer-type rope_parameters (different RoPE for sliding and full "
            "attention layers) are not supported"
        )
    legacy = hf.get("rope_scaling")
    if legacy is not None and not isinstance(legacy, dict):
        raise DataFormatError(f"config.json: rope_scaling must be an object, got {legacy!r}")
    rp: dict[str, Any] = {**(legacy or {}), **(params or {})}
    theta = rp.get("rope_theta", hf.get("rope_theta"))
    theta = 10_000.0 if theta is None else float(theta)  # transformers' default_theta
    kind = rp.get("rope_type", rp.get("type", "default"))
    partial = float(rp.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)))
    if partial != 1.0:
        raise DataFormatError(
            f"config.json: partial_rotary_factor {partial} (RoPE on part of each head) is not "
            "supported"
        )
    if kind == "default":
        return theta, None
    if kind not in ROPE_TYPES:
        known = ("default", *ROPE_TYPES)
        why = {
            "longrope": " (Phi-3's length-switched frequency table)",
            "proportional": " (partial rotary)",
        }.get(str(kind), "")
        raise DataFormatError(
            f"config.json: rope_type {kind!r}{why} is not supported; this engine computes "
            f"{', '.join(known)}"
        )
    original = int(rp.get("original_max_position_embeddings") or max_pos)
    if kind == "linear":
        return theta, RopeScaling(kind="linear", factor=float(rp["factor"]))
    if kind == "dynamic":
        return theta, RopeScaling(
            kind="dynamic", factor=float(rp["factor"]), original_max_position_embeddings=original
        )
    if kind == "llama3":
        return theta, RopeScaling(
            kind="llama3",
            factor=float(rp["factor"]),
            low_freq_factor=float(rp["low_freq_factor"]),
            high_freq_factor=float(rp["high_freq_factor"]),
            original_max_position_embeddings=int(rp["original_max_position_embeddings"]),
        )
    # yarn, resolved as transformers' _compute_yarn_parameters does
    original = int(rp["original_max_position_embeddings"])
    factor = rp.get("factor")
    factor = max_pos / original if factor is None else float(factor)
    attention = rp.get("attention_factor")
    if attention is None:
        mscale, mscale_all = rp.get("mscale"), rp.get("mscale_all_dim")
        if mscale and mscale_all:
            attention = _yarn_mscale(factor, float(mscale)) / _yarn_mscale(
                factor, float(mscale_all)
            )
        else:
            attention = _yarn_mscale(factor, 1.0)
    return theta, RopeScaling(
        kind="yarn",
        factor=factor,
        original_max_position_embeddings=original,
        beta_fast=float(rp.get("beta_fast") or 32),
        beta_slow=float(rp.get("beta_slow") or 1),
        truncate=bool(rp.get("truncate", True)),
        attention_factor=float(attention),
    )


def _yarn_mscale(scale: float, mscale: float) -> float:
    """YaRN's attention temperature, ``0.1 * mscale * ln(scale) + 1`` (paper eq. 21)."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def config_from_hf(
    hf: Mapping[str, Any],
    *,
    name: str = "hf",
    generation: Mapping[str, Any] | None = None,
) -> ModelConfig:
    """Translate a Hugging Face ``config.json`` (already parsed) into a :class:`ModelConfig`.

    ``generation`` is the parsed ``generation_config.json`` when there is one: its
    ``eos_token_id`` (an int or a list) joins config.json's, as ``generate`` and vLLM use both.
    """
    model_type = hf.get("model_type")
    if model_type not in _HF_MODEL_TYPES:
        raise DataFormatError(
            f"config.json: model_type {model_type!r} is not supported; supported: "
            f"{', '.join(_HF_MODEL_TYPES)}"
        )
    try:
        dim = int(hf["hidden_size"])
        n_heads = int(hf["num_attention_heads"])
        head_dim = int(hf.get("head_dim") or dim // n_heads)
        max_pos = int(hf.get("max_position_embeddings", 4096))
        theta, rope = _rope(hf, head_dim, max_pos)
        if model_type in ("mistral", "mixtral", "qwen2", "qwen2_moe"):
            sliding = hf.get("sliding_window")
            use_sw = hf.get("use_sliding_window", model_type in ("mistral", "mixtral"))
            if sliding and use_sw:
                raise DataFormatError(
                    f"config.json: sliding-window attention ({sliding}) is not implemented; "
                    "use a checkpoint without it (e.g. Mistral-7B-v0.3)"
                )
        eos = _ids(hf.get("eos_token_id"), "config.json eos_token_id")
        if generation:
            eos += _ids(generation.get("eos_token_id"), "generation_config.json eos_token_id")
        bos = _ids(hf.get("bos_token_id"), "config.json bos_token_id")
        # Which projections carry biases, per architecture as transformers builds them:
        # Llama's attention_bias covers q/k/v/o and mlp_bias gate/up/down; Qwen2 always has
        # q/k/v biases (no o), Qwen2-MoE when qkv_bias (default true); Mistral/Mixtral none.
        attention_bias = model_type == "llama" and bool(hf.get("attention_bias", False))
        if model_type == "qwen2":
            qkv_bias = True
        elif model_type == "qwen2_moe":
            qkv_bias = bool(hf.get("qkv_bias", True))
        else:
            qkv_bias = attention_bias
        common: dict[str, Any] = {
            "name": name,
            "vocab_size": int(hf["vocab_size"]),
            "dim": dim,
            "n_layers": int(hf["num_hidden_layers"]),
            "n_heads": n_heads,
            "n_kv_heads": int(hf.get("num_key_value_heads") or n_heads),
            "head_dim": head_dim,
            "norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
            "rope_theta": theta,
            "rope_scaling": rope,
            "max_position_embeddings": max_pos,
            "qkv_bias": qkv_bias,
            "o_bias": attention_bias,
            "mlp_bias": model_type == "llama" and bool(hf.get("mlp_bias", False)),
            "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
            "bos_token_id": bos[0] if bos else None,
            "eos_token_ids": eos,
            "source": "config.json",
        }
        if model_type == "mixtral":
            return ModelConfig(
                **common,
                intermediate_size=0,
                num_experts=int(hf["num_local_experts"]),
                num_experts_per_tok=int(hf["num_experts_per_tok"]),
                moe_intermediate_size=int(hf["intermediate_size"]),
                norm_topk_prob=True,
            )
        if model_type == "qwen2_moe":
            if int(hf.get("decoder_sparse_step", 1)) != 1 or hf.get("mlp_only_layers"):
                raise DataFormatError(
                    "config.json: Qwen-MoE with dense layers interleaved (decoder_sparse_step "
                    "!= 1 or mlp_only_layers) is not supported"
                )
            shared = int(hf.get("shared_expert_intermediate_size", 0))
            return ModelConfig(
                **common,
                intermediate_size=int(hf.get("intermediate_size", 0)),
                num_experts=int(hf["num_experts"]),
                num_experts_per_tok=int(hf["num_experts_per_tok"]),
                moe_intermediate_size=int(hf["moe_intermediate_size"]),
                norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
                shared_expert_intermediate_size=shared,
                shared_expert_gate=shared > 0,
            )
        return ModelConfig(**common, intermediate_size=int(hf["intermediate_size"]))
    except KeyError as e:
        raise DataFormatError(f"config.json: missing key {e.args[0]!r}") from e
    except (TypeError, ValueError) as e:
        raise DataFormatError(f"config.json: bad value: {e}") from e


# ----------------------------------------------------------------------------- parameter counts


def _attention_params(cfg: ModelConfig) -> int:
    q = cfg.dim * cfg.n_heads * cfg.head_dim
    kv = 2 * cfg.dim * cfg.n_kv_heads * cfg.head_dim
    o = cfg.n_heads * cfg.head_dim * cfg.dim
    bias = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim if cfg.qkv_bias else 0
    bias += cfg.dim if cfg.o_bias else 0
    return q + kv + o + bias


def _mlp_params(dim: int, hidden: int) -> int:
    return 3 * dim * hidden  # gate, up, down


def _layer_params(cfg: ModelConfig, *, active: bool) -> int:
    n = _attention_params(cfg) + 2 * cfg.dim  # two RMSNorm weights
    if cfg.is_moe:
        experts = cfg.num_experts_per_tok if active else cfg.num_experts
        n += experts * _mlp_params(cfg.dim, cfg.moe_intermediate_size)
        n += cfg.dim * cfg.num_experts  # router
        if cfg.shared_expert_intermediate_size:
            n += _mlp_params(cfg.dim, cfg.shared_expert_intermediate_size)
            n += cfg.dim if cfg.shared_expert_gate else 0
    else:
        n += _mlp_params(cfg.dim, cfg.intermediate_size)
        n += 2 * cfg.intermediate_size + cfg.dim if cfg.mlp_bias else 0
    return n


def total_params(cfg: ModelConfig) -> int:
    """Every parameter held in memory (tied embeddings counted once)."""
    emb = cfg.vocab_size * cfg.dim
    head = 0 if cfg.tie_embeddings else emb
    return emb + head + cfg.dim + cfg.n_layers * _layer_params(cfg, active=False)


def active_params(cfg: ModelConfig, *, include_embedding: bool = True) -> int:
    """Parameters one token uses: routed top-k experts only (plus any shared expert).

    With ``include_embedding`` (the default) the input embedding counts too — the convention
    behind published names: Mixtral-8x7B "12.9B active", Qwen1.5-MoE "A2.7B". Without it the
    count is the weights a token multiplies through (the embedding is a row lookup, not a
    matmul), which is what FLOP and byte estimates use.
    """
    head = cfg.vocab_size * cfg.dim
    emb = cfg.vocab_size * cfg.dim if include_embedding else 0
    return emb + head + cfg.dim + cfg.n_layers * _layer_params(cfg, active=True)


# ----------------------------------------------------------------------------- roofline

#: Bits per weight element as stored by each precision (scales included, group/block overhead
#: for group-wise formats at their default group size).
WEIGHT_BITS: Mapping[str, float] = {
    "fp32": 32.0,
    "fp16": 16.0,
    "bf16": 16.0,
    "fp8": 8.0,  # + one fp32 scale per output channel (negligible)
    "int8": 8.0,
    "int4": 4.0 + 2 * 16 / 128,  # bf16 scale and zero per group of 128
    "nvfp4": 4.0 + 8 / 16,  # E4M3 scale per block of 16
}


def kv_bytes_per_token(cfg: ModelConfig, *, kv_dtype_bytes: int = 2) -> int:
    """KV-cache bytes one position occupies across all layers."""
    return 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * kv_dtype_bytes


def decode_bytes_per_step(
    cfg: ModelConfig,
    *,
    batch_size: int,
    context_len: int,
    precision: str = "bf16",
    kv_dtype_bytes: int = 2,
) -> float:
    """Bytes one decode step must read from memory at least: the weights the batch touches once,
    plus each sequence's KV cache of ``context_len`` positions.

    For MoE models the weights touched grow with the batch (each token may pick other experts):
    the expected number of distinct experts per layer with uniform routing is used.
    """
    if precision not in WEIGHT_BITS:
        raise ConfigError(f"unknown precision {precision!r}; known: {', '.join(WEIGHT_BITS)}")
    if batch_size < 1 or context_len < 0:
        raise ConfigError("batch_size must be >= 1 and context_len >= 0")
    wbytes = WEIGHT_BITS[precision] / 8
    if cfg.is_moe:
        e, k = cfg.num_experts, cfg.num_experts_per_tok
        # P(an expert is unused by one token) = 1 - k/e; distinct experts = e * (1 - that^B)
        distinct = e * (1.0 - (1.0 - k / e) ** batch_size)
        dense_part = active_params(cfg, include_embedding=False) - cfg.n_layers * k * _mlp_params(
            cfg.dim, cfg.moe_intermediate_size
        )
        weights = dense_part + cfg.n_layers * distinct * _mlp_params(
            cfg.dim, cfg.moe_intermediate_size
        )
    else:
        weights = active_params(cfg, include_embedding=False)
    kv = batch_size * context_len * kv_bytes_per_token(cfg, kv_dtype_bytes=kv_dtype_bytes)
    return weights * wbytes + kv


def flops_per_token(cfg: ModelConfig, *, context_len: int = 0) -> float:
    """Forward FLOPs for one token: 2 per active weight (matmuls incl. LM head) plus attention
    (QK^T and AV: 4 * heads * head_dim per attended position per layer)."""
    attn = 4 * cfg.n_layers * cfg.n_heads * cfg.head_dim * context_len
    return 2.0 * active_params(cfg, include_embedding=False) + attn


def bandwidth_ceiling_tok_s(
    cfg: ModelConfig,
    *,
    batch_size: int,
    context_len: int,
    precision: str,
    hbm_bandwidth_gbs: float,
    kv_dtype_bytes: int = 2,
) -> float:
    """Decode tokens/s no engine can beat when every step must stream
    :func:`decode_bytes_per_step` through ``hbm_bandwidth_gbs`` (GB/s, 1e9; from
    :mod:`perwatt.hardware`). The bound that matters at small batch."""
    if hbm_bandwidth_gbs <= 0:
        raise ConfigError(f"bandwidth must be > 0 GB/s, got {hbm_bandwidth_gbs}")
    step_bytes = decode_bytes_per_step(
        cfg,
        batch_size=batch_size,
        context_len=context_len,
        precision=precision,
        kv_dtype_bytes=kv_dtype_bytes,
    )
    return batch_size * hbm_bandwidth_gbs * 1e9 / step_bytes


def energy_ceiling_tok_per_j(
    cfg: ModelConfig, *, context_len: int, matmul_tflop_per_j: float
) -> float:
    """Tokens per joule no engine can beat if every FLOP of a token cost what a large, efficient
    matmul costs (``matmul_tflop_per_j``, measured on the same GPU in the same precision). The
    bound that matters at large batch, where decode is compute-bound."""
    if matmul_tflop_per_j <= 0:
        raise ConfigError(f"matmul efficiency must be > 0 TFLOP/J, got {matmul_tflop_per_j}")
    return matmul_tflop_per_j * 1e12 / flops_per_token(cfg, context_len=context_len)


def describe(cfg: ModelConfig) -> str:
    """One line: name, total/active parameters in billions or millions."""

    def fmt(n: int) -> str:
        return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"

    kind = f"MoE {cfg.num_experts}x top-{cfg.num_experts_per_tok}" if cfg.is_moe else "dense"
    act = fmt(active_params(cfg))
    return f"{cfg.name}: {kind}, {fmt(total_params(cfg))} total, {act} active/token"


__all__ = [
    "ROPE_TYPES",
    "WEIGHT_BITS",
    "ModelConfig",
    "RopeScaling",
    "active_params",
    "bandwidth_ceiling_tok_s",
    "config_from_hf",
    "decode_bytes_per_step",
    "describe",
    "energy_ceiling_tok_per_j",
    "flops_per_token",
    "get_config",
    "kv_bytes_per_token",
    "list_configs",
    "total_params",
]
