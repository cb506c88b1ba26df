"""Engine construction, the slot API's error paths, sampling and GenerationResult."""

from __future__ import annotations

import pytest
import torch

from perwatt.engine import Engine, GenerationResult, get_config, load_engine, sample
from perwatt.errors import ConfigError, UnknownDeviceError


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine("tiny", precision="fp32", device="cpu", max_batch_size=3, max_seq_len=24)


def test_result_fields(engine: Engine) -> None:
    res = engine.generate([[256, 1, 2], [256, 9]], 5)
    assert isinstance(res, GenerationResult)
    assert res.batch_size == 2 and res.new_tokens == 10 and res.prompt_tokens == 5
    assert all(len(t) == 5 for t in res.tokens)
    assert res.prefill_s > 0 and res.decode_s > 0 and res.warmup_s > 0
    assert res.tokens_per_s == pytest.approx(10 / (res.prefill_s + res.decode_s))
    assert res.decode_tokens_per_s == pytest.approx(8 / res.decode_s)
    d = res.to_dict()
    assert d["precision"] == "fp32" and d["emulated"] is False and d["device"] == "cpu"
    assert engine.free_slots() == [0, 1, 2]  # generate frees what it used
    with pytest.raises(ValueError, match="new_tokens"):
        GenerationResult(
            tokens=((1,),),
            batch_size=1,
            prompt_tokens=1,
            new_tokens=2,
            prefill_s=0,
            decode_s=0,
            warmup_s=0,
            precision="fp32",
            device="cpu",
            emulated=False,
        )


def test_seeded_sampling_is_reproducible(engine: Engine) -> None:
    a = engine.generate([[256, 5]], 8, temperature=1.0, seed=1)
    b = engine.generate([[256, 5]], 8, temperature=1.0, seed=1)
    c = engine.generate([[256, 5]], 8, temperature=1.0, seed=2)
    assert a.tokens == b.tokens and a.tokens != c.tokens
    greedy = engine.generate([[256, 5]], 8)
    assert engine.generate([[256, 5]], 8, temperature=0.7, top_k=1, seed=3).tokens == greedy.tokens


def test_sample_top_k_restricts_support() -> None:
    logits = torch.tensor([[0.0, 5.0, 4.9, -1.0]]).repeat(200, 1)
    g = torch.Generator().manual_seed(0)
    picks = sample(logits, temperature=1.0, top_k=2, generator=g)
    assert set(picks.tolist()) == {1, 2}
    assert sample(logits[:1]).tolist() == [1]


def test_eos_stops_generation() -> None:
    free_run = Engine("tiny", precision="fp32", device="cpu", max_seq_len=32).generate(
        [[256, 7]], 6
    )
    eos = free_run.tokens[0][2]
    cfg = get_config("tiny").replace(eos_token_id=eos)
    engine = Engine(cfg, precision="fp32", device="cpu", max_seq_len=32)
    stopped = engine.generate([[256, 7]], 6, ignore_eos=False)
    first = free_run.tokens[0].index(eos)
    assert stopped.tokens[0] == free_run.tokens[0][: first + 1]
    assert engine.generate([[256, 7]], 6, ignore_eos=True).tokens == free_run.tokens


def test_slot_errors(engine: Engine) -> None:
    with pytest.raises(ConfigError, match="slot 1 is free"):
        engine.decode([1], [3])
    with pytest.raises(ConfigError, match="out of range"):
        engine.prefill([3], [[1]])
    with pytest.raises(ConfigError, match="prompt of 25 tokens"):
        engine.prefill([0], [[1] * 25])
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        engine.prefill([0], [[1, 5000]])
    with pytest.raises(ConfigError, match="slot twice"):
        engine.prefill([0, 0], [[1], [2]])
    engine.prefill([0], [[1] * 23])
    engine.decode([0], [2])  # writes position 23, the last one
    with pytest.raises(ConfigError, match="slot 0 is full"):
        engine.decode([0], [2])
    engine.free(0)
    assert engine.position(0) == -1


def test_generate_errors(engine: Engine) -> None:
    with pytest.raises(ConfigError, match="use a batch of at most 3"):
        engine.generate([[1]] * 4, 2)
    with pytest.raises(ConfigError, match="exceed max_seq_len"):
        engine.generate([[1] * 20], 10)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        engine.generate([[1]], 0)
    engine.prefill([0, 1], [[1], [2]])
    try:
        with pytest.raises(ConfigError, match="only 1 free slots"):
            engine.generate([[1], [2]], 2)
        assert len(engine.generate([[1]], 2).tokens) == 1  # uses slot 2, leaves 0 and 1 alone
        assert engine.position(0) == 1 and engine.position(1) == 1
    finally:
        engine.free(0)
        engine.free(1)


def test_construction_errors() -> None:
    with pytest.raises(ConfigError, match="unknown model shape 'nope'"):
        load_engine("nope", device="cpu")
    with pytest.raises(ConfigError, match="unknown precision"):
        load_engine("tiny", precision="int3", device="cpu")
    with pytest.raises(ConfigError, match="max_seq_len"):
        load_engine("tiny", device="cpu", max_seq_len=10**6)
    with pytest.raises(ConfigError, match="max_batch_size"):
        load_engine("tiny", device="cpu", max_batch_size=0)
    if not torch.cuda.is_available():
        with pytest.raises(UnknownDeviceError, match="use --device cpu"):
            load_engine("tiny", device="cuda")
    with pytest.raises(ConfigError, match="bad device"):
        load_engine("tiny", device="tpu:x")


def test_bf16_engine_runs_and_info() -> None:
    engine = load_engine(
        "tiny-moe", precision="bf16", device="cpu", max_batch_size=2, max_seq_len=16
    )
    assert engine.model.tok_embeddings.weight.dtype == torch.bfloat16
    assert engine.model.layers[0].attention.k_cache.dtype == torch.bfloat16
    res = engine.generate([[256, 1], [256, 2, 3]], 3)
    assert res.new_tokens == 6
    info = engine.info()
    assert info["compiled"] is False and info["tokenizer"] == "byte" and info["model"] == "tiny-moe"


def test_same_seed_same_weights_across_precisions() -> None:
    a = Engine("tiny", precision="fp32", device="cpu", max_seq_len=8, seed=5)
    b = Engine("tiny", precision="bf16", device="cpu", max_seq_len=8, seed=5)
    c = Engine("tiny", precision="fp32", device="cpu", max_seq_len=8, seed=6)
    wa = a.model.layers[1].feed_forward.w2.weight
    assert torch.equal(wa.bfloat16(), b.model.layers[1].feed_forward.w2.weight)
    assert not torch.equal(wa, c.model.layers[1].feed_forward.w2.weight)


# ----------------------------------------------------------------------------- GPU host only

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")


@pytest.mark.gpu
@needs_cuda
def test_cuda_compiled_decode_matches_eager() -> None:
    prompts = [[256, 1, 2, 3], [256, 9]]
    compiled = Engine("tiny", precision="bf16", device="cuda", max_batch_size=2, max_seq_len=64)
    eager = Engine(
        "tiny", precision="bf16", device="cuda", max_batch_size=2, max_seq_len=64, compile=False
    )
    assert compiled.compiled and not eager.compiled
    a = compiled.generate(prompts, 12)
    b = eager.generate(prompts, 12)
    assert a.tokens == b.tokens
    la = compiled.prefill([0], [prompts[0]])
    lb = eager.prefill([0], [prompts[0]])
    for t in (5, 6, 7):
        la, lb = compiled.decode([0], [t]), eager.decode([0], [t])
    torch.testing.assert_close(la, lb, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(("model", "precision"), [("tiny", "int8"), ("tiny-moe", "int4")])
def test_decode_step_traces_as_one_graph(model: str, precision: str) -> None:
    """The step CUDA graphs capture must trace without graph breaks (fullgraph): checked here with
    dynamo's eager backend, which needs no compiler or GPU."""
    engine = Engine(model, precision=precision, device="cpu", max_batch_size=2, max_seq_len=16)
    engine.prefill([0, 1], [[256, 1, 2], [256, 3]])
    step = torch.compile(engine.model.decode, backend="eager", fullgraph=True)
    tok, pos = torch.tensor([5, 6]), torch.tensor([3, 2])
    try:
        with torch.no_grad():
            traced = step(tok, pos, pos.clone(), True)
            plain = engine.model.decode(tok, pos, pos.clone(), True)
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(traced, plain)


def test_decode_runs_only_the_slots_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """One request on an 8-slot engine decodes one row over the positions in use, not 8 rows
    over the whole cache (issue 10: 0.2x the speed of a 1-slot engine)."""
    engine = Engine("tiny", precision="fp32", device="cpu", max_batch_size=8, max_seq_len=512)
    calls: list[tuple[int, int | None]] = []
    real = engine._decode_fn

    def spy(tokens: torch.Tensor, pos: torch.Tensor, write: torch.Tensor, *rest: object) -> object:
        calls.append((int(tokens.shape[0]), rest[1] if len(rest) > 1 else None))  # type: ignore[arg-type]
        return real(tokens, pos, write, *rest)

    monkeypatch.setattr(engine, "_decode_fn", spy)
    engine.prefill([0], [[256, 1, 2]])
    one = engine.decode([0], [5])
    engine.prefill([5], [[256, 9]])
    both = engine.decode([0, 5], [6, 7])
    assert calls == [(1, 64), (6, 64)]  # rows 0..5 cover slots 0 and 5; 64 cache positions
    # the same numbers as a 1-slot engine over the whole cache
    solo = Engine("tiny", precision="fp32", device="cpu", max_batch_size=1, max_seq_len=512)
    solo.prefill([0], [[256, 1, 2]])
    torch.testing.assert_close(solo.decode([0], [5]), one, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(solo.decode([0], [6])[0], both[0], rtol=1e-5, atol=1e-5)
    # under CUDA graphs the row count is one of a few captured sizes
    assert engine.decode_sizes == (1, 2, 4, 8)
    engine.compiled = True
    assert [engine.decode_rows(s) for s in (0, 1, 2, 4, 7)] == [1, 2, 4, 8, 8]


def test_generation_stops_on_any_eos_of_a_list() -> None:
    free_run = Engine("tiny", precision="fp32", device="cpu", max_seq_len=32).generate(
        [[256, 7]], 8
    )
    eos = free_run.tokens[0][3]
    cfg = get_config("tiny").replace(eos_token_ids=(1000, eos))
    assert cfg.eos_token_ids == (257, 1000, eos)
    stopped = Engine(cfg, precision="fp32", device="cpu", max_seq_len=32).generate(
        [[256, 7]], 8, ignore_eos=False
    )
    first = free_run.tokens[0].index(eos)
    assert stopped.tokens[0] == free_run.tokens[0][: first + 1]
