"""Shape registry, HF config translation, parameter counts and roofline arithmetic."""

from __future__ import annotations

import pytest

from perwatt.engine.config import (
    ModelConfig,
    RopeScaling,
    active_params,
    bandwidth_ceiling_tok_s,
    config_from_hf,
    decode_bytes_per_step,
    energy_ceiling_tok_per_j,
    flops_per_token,
    get_config,
    kv_bytes_per_token,
    list_configs,
    total_params,
)
from perwatt.engine.weights import hf_config_dict
from perwatt.errors import ConfigError, DataFormatError

# Published totals (model cards): Llama-3.1-8B 8.03B, Llama-3.2-1B 1.24B, Llama-2-7B 6.74B,
# Mistral-7B 7.25B, Qwen2.5-7B 7.62B, Mixtral-8x7B 46.7B total / 12.9B active,
# Qwen1.5-MoE-A2.7B 14.3B total / 2.7B active.
PUBLISHED_TOTAL_B = {
    "llama-3.1-8b": 8.03,
    "llama-3.2-1b": 1.24,
    "llama-2-7b": 6.74,
    "mistral-7b": 7.25,
    "qwen2.5-7b": 7.62,
    "mixtral-8x7b": 46.7,
    "qwen1.5-moe-a2.7b": 14.3,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_TOTAL_B))
def test_totals_match_published(name: str) -> None:
    cfg = get_config(name)
    published = PUBLISHED_TOTAL_B[name]
    half_last_digit = 0.005 if round(published, 1) != published else 0.05  # as rounded
    assert total_params(cfg) / 1e9 == pytest.approx(published, abs=half_last_digit)
    assert cfg.source.startswith("https://huggingface.co/")


def test_moe_active_params_match_published() -> None:
    assert active_params(get_config("mixtral-8x7b")) / 1e9 == pytest.approx(12.9, abs=0.05)
    assert active_params(get_config("qwen1.5-moe-a2.7b")) / 1e9 == pytest.approx(2.7, abs=0.02)
    dense = get_config("llama-3.1-8b")
    assert active_params(dense) == total_params(dense)  # untied dense: every weight is used
    assert active_params(dense, include_embedding=False) == total_params(dense) - 128_256 * 4096


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        get_config("llama-9")
    for name in list_configs():
        assert name in str(info.value)
    assert get_config(" Tiny ").name == "tiny"


def test_invalid_shapes_rejected() -> None:
    base = get_config("tiny")
    with pytest.raises(ConfigError, match="multiple of"):
        base.replace(n_kv_heads=3)
    with pytest.raises(ConfigError, match="num_experts_per_tok"):
        get_config("tiny-moe").replace(num_experts_per_tok=9)
    with pytest.raises(ConfigError, match="even"):
        base.replace(head_dim=15)
    with pytest.raises(ConfigError, match="rope scaling"):
        RopeScaling(kind="longrope")


@pytest.mark.parametrize("name", [*sorted(PUBLISHED_TOTAL_B), "tiny", "tiny-moe"])
def test_hf_config_round_trip(name: str) -> None:
    cfg = get_config(name)
    back = config_from_hf(hf_config_dict(cfg), name=cfg.name)
    assert back.replace(source=cfg.source) == cfg


def test_hf_config_errors() -> None:
    llama = hf_config_dict(get_config("llama-3.1-8b"))
    with pytest.raises(DataFormatError, match="missing key 'hidden_size'"):
        config_from_hf({k: v for k, v in llama.items() if k != "hidden_size"})
    with pytest.raises(DataFormatError, match="sliding-window"):
        config_from_hf({**llama, "model_type": "mistral", "sliding_window": 4096})
    with pytest.raises(DataFormatError, match="rope_type 'longrope'"):
        config_from_hf({**llama, "rope_scaling": {"rope_type": "longrope", "factor": 4}})
    # Mistral v0.3 style (sliding_window null) is accepted
    ok = config_from_hf({**llama, "model_type": "mistral", "sliding_window": None})
    assert isinstance(ok, ModelConfig)


def test_decode_bytes_and_flops() -> None:
    cfg = get_config("llama-3.1-8b")
    w = active_params(cfg, include_embedding=False)
    # batch 1, empty context: just the bf16 weights
    assert decode_bytes_per_step(cfg, batch_size=1, context_len=0) == 2 * w
    # KV: 2 (k,v) x 32 layers x 8 heads x 128 x 2 bytes = 128 KiB per position
    assert kv_bytes_per_token(cfg) == 131_072
    b = decode_bytes_per_step(cfg, batch_size=64, context_len=256, precision="fp8")
    assert b == pytest.approx(w + 64 * 256 * 131_072)
    assert flops_per_token(cfg) == 2 * w
    assert flops_per_token(cfg, context_len=100) == 2 * w + 4 * 32 * 32 * 128 * 100
    with pytest.raises(ConfigError, match="unknown precision"):
        decode_bytes_per_step(cfg, batch_size=1, context_len=0, precision="int3")


def test_moe_bytes_grow_with_batch() -> None:
    cfg = get_config("mixtral-8x7b")
    one = decode_bytes_per_step(cfg, batch_size=1, context_len=0)
    many = decode_bytes_per_step(cfg, batch_size=256, context_len=0)
    assert one == pytest.approx(2 * active_params(cfg, include_embedding=False))
    # with 256 tokens essentially every expert is touched: close to all weights
    assert many == pytest.approx(2 * (total_params(cfg) - 32_000 * 4096), rel=1e-6)


def test_ceilings() -> None:
    cfg = get_config("llama-3.1-8b")
    w = active_params(cfg, include_embedding=False)
    # batch 1, no context, 3350 GB/s (H100 SXM datasheet): ~208 tok/s for ~16 GB of bf16 weights
    tok_s = bandwidth_ceiling_tok_s(
        cfg, batch_size=1, context_len=0, precision="bf16", hbm_bandwidth_gbs=3350
    )
    assert tok_s == pytest.approx(3350e9 / (2 * w))
    assert 200 < tok_s < 230
    # int4 moves ~4.25 bits per weight: about 3.8x the bf16 ceiling
    int4 = bandwidth_ceiling_tok_s(
        cfg, batch_size=1, context_len=0, precision="int4", hbm_bandwidth_gbs=3350
    )
    assert int4 / tok_s == pytest.approx(16 / 4.25)
    # 0.99 TFLOP/J (issue 5's H100 bf16 matmul probe) over ~15 GFLOP per token: ~66 tok/J
    tpj = energy_ceiling_tok_per_j(cfg, context_len=0, matmul_tflop_per_j=0.99)
    assert tpj == pytest.approx(0.99e12 / (2 * w))
    with pytest.raises(ConfigError):
        energy_ceiling_tok_per_j(cfg, context_len=0, matmul_tflop_per_j=0)
    with pytest.raises(ConfigError):
        bandwidth_ceiling_tok_s(
            cfg, batch_size=1, context_len=0, precision="bf16", hbm_bandwidth_gbs=0
        )


def test_hf_config_reads_rope_parameters_and_eos_lists() -> None:
    """transformers >= 5 writes RoPE under rope_parameters; reading only the old keys ran every
    Llama-3 checkpoint with theta 10,000 and no scaling (issue 10)."""
    llama = hf_config_dict(get_config("llama-3.1-8b"))
    del llama["rope_theta"], llama["rope_scaling"]
    llama["rope_parameters"] = {
        "rope_type": "llama3",
        "rope_theta": 500_000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    llama["eos_token_id"] = [128001, 128008, 128009]
    cfg = config_from_hf(llama, generation={"eos_token_id": [128009, 7]})
    assert (
        cfg.rope_theta == 500_000.0 and cfg.rope_scaling == get_config("llama-3.1-8b").rope_scaling
    )
    assert cfg.eos_token_ids == (128001, 128008, 128009, 7) and cfg.eos_token_id == 128001
    with pytest.raises(DataFormatError, match="rope_type 'foo' is not supported"):
        config_from_hf({**llama, "rope_parameters": {"rope_type": "foo", "rope_theta": 1.0}})
    with pytest.raises(DataFormatError, match="partial_rotary_factor"):
        config_from_hf(
            {**llama, "rope_parameters": {"rope_theta": 1e4, "partial_rotary_factor": 0.5}}
        )
    biased = config_from_hf({**llama, "attention_bias": True, "mlp_bias": True})
    assert biased.qkv_bias and biased.o_bias and biased.mlp_bias
    mistral = config_from_hf({**llama, "model_type": "mistral", "attention_bias": True})
    assert not mistral.qkv_bias and not mistral.o_bias  # Mistral has no biases at all
