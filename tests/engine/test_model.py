"""The engine's model against the loop-based reference, the KV cache against full forwards, and the
slot API against separate runs. CPU, fp32, tiny shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from perwatt.engine import Engine, ModelConfig, RopeScaling, get_config
from perwatt.engine.weights import hf_config_dict, hf_tensor_plan
from tests.engine.reference import reference_logits

BASE = {
    "vocab_size": 300,
    "dim": 64,
    "n_layers": 2,
    "n_heads": 4,
    "n_kv_heads": 2,
    "intermediate_size": 96,
    "max_position_embeddings": 256,
    "bos_token_id": 256,
    "eos_token_id": 257,
}

ARCHS = {
    # Llama 3: GQA, llama3 RoPE scaling with a short original context so all three bands occur
    "llama3": ModelConfig(
        name="llama3",
        **BASE,
        rope_theta=500_000.0,
        rope_scaling=RopeScaling(factor=8.0, original_max_position_embeddings=16),
    ),
    # Llama 2 style: multi-head attention; linear RoPE scaling
    "llama2": ModelConfig(
        name="llama2",
        **{**BASE, "n_kv_heads": 4},
        rope_scaling=RopeScaling(kind="linear", factor=2.0),
    ),
    # Qwen2: q/k/v bias, tied embeddings
    "qwen2": ModelConfig(
        name="qwen2", **BASE, qkv_bias=True, tie_embeddings=True, norm_eps=1e-6, rope_theta=1e6
    ),
    # Mixtral: 4 experts, top 2, renormalised
    "mixtral": ModelConfig(
        name="mixtral",
        **{**BASE, "intermediate_size": 0},
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=48,
    ),
    # Qwen-MoE: top 2 of 4 not renormalised, gated shared expert, qkv bias
    "qwen_moe": ModelConfig(
        name="qwen_moe",
        **BASE,
        qkv_bias=True,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        norm_topk_prob=False,
        shared_expert_intermediate_size=64,
        shared_expert_gate=True,
    ),
}


def random_hf_weights(cfg: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for s in hf_tensor_plan(cfg):
        if s.hf_name.endswith("norm.weight") or "layernorm" in s.hf_name:
            t = 1.0 + 0.2 * torch.randn(s.shape, generator=g)  # not all ones: norms must apply
        else:
            t = torch.randn(s.shape, generator=g) / s.shape[-1] ** 0.5
        out[s.hf_name] = t
    return out


def write_checkpoint(directory: Path, cfg: ModelConfig, tensors: dict[str, torch.Tensor]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(hf_config_dict(cfg)))
    return directory


def engine_from(cfg: ModelConfig, tensors: dict[str, torch.Tensor], tmp_path: Path, **kw) -> Engine:
    d = write_checkpoint(tmp_path / cfg.name, cfg, tensors)
    return Engine(cfg, precision="fp32", device="cpu", weights_dir=d, **kw)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_matches_reference(arch: str, tmp_path: Path) -> None:
    cfg = ARCHS[arch]
    hf = random_hf_weights(cfg)
    engine = engine_from(cfg, hf, tmp_path, max_batch_size=2, max_seq_len=32)
    tokens = [256, 7, 99, 3, 250, 42, 11]
    want = reference_logits(cfg, hf, tokens)
    with torch.no_grad():
        got = engine.model(torch.tensor([tokens]))[0].double()
    assert got.shape == (len(tokens), cfg.vocab_size)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_kv_cache_decode_equals_full_forward(tmp_path: Path) -> None:
    cfg = ARCHS["llama3"]
    engine = engine_from(cfg, random_hf_weights(cfg, 1), tmp_path, max_batch_size=3, max_seq_len=32)
    seq = [256, 5, 17, 200, 9, 33, 71, 12, 4]
    with torch.no_grad():
        full = engine.model(torch.tensor([seq]))[0]
    logits = [engine.prefill([1], [seq[:4]])[0]]
    for t in seq[4:]:
        logits.append(engine.decode([1], [t])[0])
    got = torch.stack(logits)
    torch.testing.assert_close(got, full[3:], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["llama3", "qwen_moe"])
def test_interleaved_slots_equal_separate_runs(arch: str, tmp_path: Path) -> None:
    cfg = ARCHS[arch]
    engine = engine_from(cfg, random_hf_weights(cfg, 2), tmp_path, max_batch_size=4, max_seq_len=32)
    a = [256, 1, 2, 3, 4, 5]
    b = [256, 9, 8]
    c = [256, 40, 41, 42, 43]

    def alone(prompt: list[int], steps: list[int]) -> list[torch.Tensor]:
        out = [engine.prefill([0], [prompt])[0]]
        out += [engine.decode([0], [t])[0] for t in steps]
        engine.free(0)
        return out

    a_steps, b_steps, c_steps = [7, 8, 9, 10], [20, 21, 22], [30, 31]
    want_a, want_b, want_c = alone(a, a_steps), alone(b, b_steps), alone(c, c_steps)

    # Interleave: a and b prefilled together (different lengths), decoded in subsets; c joins
    # later in a slot freed by b.
    got_a, got_b, got_c = [], [], []
    la = engine.prefill([2, 1], [a, b])
    got_a.append(la[0])
    got_b.append(la[1])
    got_a.append(engine.decode([2], [a_steps[0]])[0])
    both = engine.decode([1, 2], [b_steps[0], a_steps[1]])
    got_b.append(both[0])
    got_a.append(both[1])
    got_b.append(engine.decode([1], [b_steps[1]])[0])
    got_b.append(engine.decode([1], [b_steps[2]])[0])
    engine.free(1)
    got_c.append(engine.prefill([1], [c])[0])
    three = engine.decode([2, 1], [a_steps[2], c_steps[0]])
    got_a.append(three[0])
    got_c.append(three[1])
    got_c.append(engine.decode([1], [c_steps[1]])[0])
    got_a.append(engine.decode([2], [a_steps[3]])[0])

    for got, want in ((got_a, want_a), (got_b, want_b), (got_c, want_c)):
        torch.testing.assert_close(torch.stack(got), torch.stack(want), rtol=1e-4, atol=1e-4)


def test_generate_greedy_equals_argmax_of_full_forward() -> None:
    engine = Engine("tiny", precision="fp32", device="cpu", max_batch_size=2, max_seq_len=64)
    prompt = [256, 72, 105]
    res = engine.generate([prompt], 6)
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(6):
            seq.append(int(engine.model(torch.tensor([seq]))[0, -1].argmax()))
    assert list(res.tokens[0]) == seq[len(prompt) :]


def test_batched_generate_equals_single() -> None:
    engine = Engine("tiny-moe", precision="fp32", device="cpu", max_batch_size=3, max_seq_len=64)
    prompts = [[256, 1, 2, 3, 4, 5, 6], [256, 9], [256, 100, 101]]
    batched = engine.generate(prompts, 5)
    for p, toks in zip(prompts, batched.tokens, strict=True):
        assert engine.generate([p], 5).tokens[0] == toks


def test_tied_embeddings_share_storage() -> None:
    engine = Engine(
        get_config("llama-3.2-1b").replace(
            n_layers=1,
            dim=64,
            n_heads=4,
            n_kv_heads=2,
            head_dim=16,
            intermediate_size=64,
            vocab_size=300,
        ),
        precision="fp32",
        device="cpu",
        max_seq_len=16,
    )
    m = engine.model
    assert m.output.weight.data_ptr() == m.tok_embeddings.weight.data_ptr()


def test_matches_transformers_if_installed(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    for arch in ("llama3", "qwen2", "mixtral", "qwen_moe"):
        cfg = ARCHS[arch]
        hf = random_hf_weights(cfg, 3)
        d = write_checkpoint(tmp_path / arch, cfg, hf)
        ref = transformers.AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32)
        engine = Engine(cfg, precision="fp32", device="cpu", weights_dir=d, max_seq_len=32)
        tokens = torch.tensor([[256, 7, 99, 3, 250]])
        with torch.no_grad():
            want = ref(tokens).logits
            got = engine.model(tokens)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batch", [1, 2, 6])
def test_moe_static_paths_equal_grouped(batch: int) -> None:
    """The compiled decode's static MoE paths (gather for tokens x k <= experts, dense above) give
    the eager grouped result. tiny-moe: 8 experts, top 2 -> gather up to batch 4."""
    engine = Engine(
        "tiny-moe", precision="fp32", device="cpu", max_batch_size=batch, max_seq_len=16
    )
    prompts = [[256, 3 + i, 7 * i % 200] for i in range(batch)]
    engine.prefill(list(range(batch)), prompts)
    tok = torch.arange(batch) + 11
    pos = torch.full((batch,), 3)
    with torch.no_grad():
        grouped = engine.model.decode(tok, pos, pos.clone(), static_moe=False)
        static = engine.model.decode(tok, pos, pos.clone(), static_moe=True)
    torch.testing.assert_close(static, grouped, rtol=1e-4, atol=1e-4)
