"""Continuous batching scheduler, driven by a fake engine (no torch)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from perwatt.engine.batcher import Batcher, Event, Request, SamplingParams, sample_tokens
from perwatt.errors import ConfigError

VOCAB = 16


class FakeEngine:
    """Deterministic slot engine: the next token is (last token + 1) mod VOCAB.

    Records every call and checks the slot discipline the real engine relies on: a slot is
    prefilled only when free, decoded only when busy, never twice in one call.
    """

    def __init__(self, num_slots: int, eos: int | None = None) -> None:
        self.num_slots = num_slots
        self.busy: dict[int, int] = {}  # slot -> last token
        self.calls: list[tuple[str, tuple[int, ...]]] = []
        self.eos = eos
        self.fail_decode = False
        self.prompts: list[tuple[int, ...]] = []

    def _logits(self, nxt: int) -> list[float]:
        row = [0.0] * VOCAB
        row[nxt] = 5.0
        return row

    def prefill(
        self, slot_ids: Sequence[int], token_ids: Sequence[Sequence[int]]
    ) -> list[list[float]]:
        assert len(set(slot_ids)) == len(slot_ids)
        for s, toks in zip(slot_ids, token_ids, strict=True):
            assert 0 <= s < self.num_slots
            assert s not in self.busy, f"slot {s} prefilled while busy"
            self.busy[s] = toks[-1]
            self.prompts.append(tuple(toks))
        self.calls.append(("prefill", tuple(slot_ids)))
        return [self._logits((self.busy[s] + 1) % VOCAB) for s in slot_ids]

    def decode(self, slot_ids: Sequence[int], tokens: Sequence[int]) -> list[list[float]]:
        if self.fail_decode:
            raise RuntimeError("CUDA out of memory (fake)")
        assert len(set(slot_ids)) == len(slot_ids)
        for s, t in zip(slot_ids, tokens, strict=True):
            assert s in self.busy, f"slot {s} decoded while free"
            self.busy[s] = t
        self.calls.append(("decode", tuple(slot_ids)))
        return [self._logits((t + 1) % VOCAB) for t in tokens]

    def free(self, slot_id: int) -> None:
        assert slot_id in self.busy
        del self.busy[slot_id]


def make_request(
    prompt: Sequence[int], max_tokens: int, **kw: object
) -> tuple[Request, list[Event]]:
    events: list[Event] = []
    params = SamplingParams(max_tokens=max_tokens, **kw)  # type: ignore[arg-type]
    return Request(prompt_ids=tuple(prompt), params=params, on_event=events.append), events


def drain(b: Batcher, limit: int = 1000) -> int:
    n = 0
    while (b.num_active or b.num_pending) and n < limit:
        b.step()
        n += 1
    return n


def test_greedy_tokens_and_length_finish() -> None:
    eng = FakeEngine(2)
    b = Batcher(eng, num_slots=2, max_seq_len=64)
    req, events = make_request([3], max_tokens=4)
    b.submit(req)
    drain(b)
    assert [e.token_id for e in events] == [4, 5, 6, 7]
    assert [e.finish_reason for e in events] == [None, None, None, "length"]
    assert req.output_ids == [4, 5, 6, 7]
    assert eng.busy == {}  # slot freed
    assert b.free_slots == (0, 1)


def test_more_requests_than_slots_queue_fifo_and_all_complete() -> None:
    eng = FakeEngine(2)
    b = Batcher(eng, num_slots=2, max_seq_len=64)
    reqs = [make_request([i], max_tokens=3 + i) for i in range(5)]
    for r, _ in reqs:
        b.submit(r)
    drain(b)
    assert b.stats.admission_order == [r.request_id for r, _ in reqs]  # FIFO
    assert b.stats.max_active == 2  # never more than the slot pool
    for i, (r, ev) in enumerate(reqs):
        assert len(r.output_ids) == 3 + i
        assert ev[-1].finish_reason == "length"
    assert b.stats.completed == 5
    # continuous: later requests are prefilled after decoding has started, not in one batch
    kinds = [k for k, _ in eng.calls]
    assert kinds.count("prefill") >= 3
    assert kinds.index("decode") < len(kinds) - 1 - kinds[::-1].index("prefill")
    decode_batches = [s for k, s in eng.calls if k == "decode"]
    assert max(len(s) for s in decode_batches) == 2


def test_finished_slot_is_reused_at_next_step_boundary() -> None:
    eng = FakeEngine(1)
    b = Batcher(eng, num_slots=1, max_seq_len=64)
    a, _ = make_request([0], max_tokens=2)
    c, _ = make_request([0], max_tokens=2)
    b.submit(a)
    b.submit(c)
    b.step()  # prefill a (token 1) + decode a (token 2) -> a finishes, slot 0 free
    assert a.done and not c.done
    assert b.free_slots == (0,)
    b.step()  # c admitted into the freed slot
    assert c.slot == 0 or c.done
    drain(b)
    assert c.output_ids == [1, 2]


def test_new_request_joins_running_batch_between_decode_steps() -> None:
    eng = FakeEngine(4)
    b = Batcher(eng, num_slots=4, max_seq_len=64)
    long, _ = make_request([0], max_tokens=10)
    b.submit(long)
    b.step()
    b.step()
    late, _ = make_request([7], max_tokens=2)
    b.submit(late)
    b.step()
    # the late request was prefilled alone, then decoded together with the long one
    assert eng.calls[-2] == ("prefill", (1,))
    assert eng.calls[-1] == ("decode", (0, 1))
    drain(b)
    assert len(long.output_ids) == 10 and late.output_ids == [8, 9]


def test_cancel_frees_slot_and_emits_abort() -> None:
    eng = FakeEngine(1)
    b = Batcher(eng, num_slots=1, max_seq_len=64)
    a, ev_a = make_request([0], max_tokens=50)
    queued, _ = make_request([0], max_tokens=2)
    b.submit(a)
    b.step()
    assert eng.busy
    b.cancel(a)
    b.step()  # a dropped, slot freed, queued admitted and run
    assert ev_a[-1].finish_reason == "abort" and ev_a[-1].token_id is None
    assert b.stats.aborted == 1
    b.submit(queued)
    drain(b)
    assert queued.output_ids == [1, 2]
    assert eng.busy == {}


def test_cancel_while_queued_never_reaches_engine() -> None:
    eng = FakeEngine(1)
    b = Batcher(eng, num_slots=1, max_seq_len=64)
    a, _ = make_request([0], max_tokens=3)
    q, ev_q = make_request([5], max_tokens=3)
    b.submit(a)
    b.submit(q)
    b.cancel(q)
    drain(b)
    assert ev_q == [Event(None, finish_reason="abort")]
    assert all(5 not in p for p in eng.prompts)
    assert b.stats.admitted == 1


def test_eos_stops_unless_ignored_and_min_tokens() -> None:
    eng = FakeEngine(3)
    b = Batcher(eng, num_slots=3, max_seq_len=64, eos_token_ids=[5])
    stop, _ = make_request([2], max_tokens=10)  # 3, 4, 5(eos)
    ignore, _ = make_request([2], max_tokens=6, ignore_eos=True)
    mint, _ = make_request([4], max_tokens=10, min_tokens=3)  # 5 (too early), 6, 7
    for r in (stop, ignore, mint):
        b.submit(r)
    drain(b)
    assert stop.output_ids == [3, 4, 5] and stop.finish_reason == "stop"
    assert ignore.output_ids == [3, 4, 5, 6, 7, 8] and ignore.finish_reason == "length"
    assert len(mint.output_ids) == 10 and mint.finish_reason == "length"


def test_prompt_too_long_rejected() -> None:
    b = Batcher(FakeEngine(1), num_slots=1, max_seq_len=8)
    r, _ = make_request([1] * 6, max_tokens=3)
    with pytest.raises(ConfigError, match="maximum context length is 8"):
        b.submit(r)
    r2, _ = make_request([], max_tokens=3)
    with pytest.raises(ConfigError, match="empty"):
        b.submit(r2)


def test_engine_error_fails_requests_and_keeps_serving() -> None:
    eng = FakeEngine(2)
    b = Batcher(eng, num_slots=2, max_seq_len=64)
    a, ev = make_request([0], max_tokens=5)
    b.submit(a)
    eng.fail_decode = True
    b.step()
    assert ev[-1].finish_reason == "error" and "out of memory" in (ev[-1].error or "")
    assert b.free_slots == (0, 1) and eng.busy == {}
    eng.fail_decode = False
    c, _ = make_request([0], max_tokens=3)
    b.submit(c)
    drain(b)
    assert c.output_ids == [1, 2, 3]


def test_engine_thread_serves_concurrent_submitters() -> None:
    eng = FakeEngine(3)
    b = Batcher(eng, num_slots=3, max_seq_len=64)
    b.start()
    done = threading.Event()
    results: dict[int, list[int]] = {}
    lock = threading.Lock()

    def client(i: int) -> None:
        finished = threading.Event()
        toks: list[int] = []

        def on_event(e: Event) -> None:
            if e.token_id is not None:
                toks.append(e.token_id)
            if e.finish_reason:
                finished.set()

        b.submit(Request(prompt_ids=(i,), params=SamplingParams(max_tokens=6), on_event=on_event))
        assert finished.wait(10)
        with lock:
            results[i] = toks
            if len(results) == 8:
                done.set()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    b.stop()
    assert done.is_set()
    for i, toks in results.items():
        assert toks == [(i + k) % VOCAB for k in range(1, 7)]
    assert b.stats.max_active <= 3


def test_stop_aborts_outstanding_requests() -> None:
    eng = FakeEngine(1)
    b = Batcher(eng, num_slots=1, max_seq_len=10_000)
    evs: list[Event] = []
    got_token = threading.Event()

    def on_event(e: Event) -> None:
        evs.append(e)
        got_token.set()

    b.start()
    b.submit(Request(prompt_ids=(0,), params=SamplingParams(max_tokens=9000), on_event=on_event))
    assert got_token.wait(5)
    b.stop()
    assert evs[-1].finish_reason in ("abort", "length")


def test_python_sampler_seeded_and_logprobs() -> None:
    row = [0.0, 1.0, 2.0, 0.5]
    r1, _ = make_request([0], max_tokens=1, temperature=1.0, seed=7, logprobs=2)
    r2, _ = make_request([0], max_tokens=1, temperature=1.0, seed=7, logprobs=2)
    a = [sample_tokens([row], [r1])[0].token_id for _ in range(20)]
    b = [sample_tokens([row], [r2])[0].token_id for _ in range(20)]
    assert a == b  # same seed, same sequence
    assert len(set(a)) > 1  # actually sampled
    g, _ = make_request([0], max_tokens=1, logprobs=1)
    s = sample_tokens([row], [g])[0]
    assert s.token_id == 2
    assert s.logprob is not None and s.logprob < 0
    assert s.top_logprobs is not None and s.top_logprobs[0][0] == 2


def test_torch_sampler_matches_rules() -> None:
    torch = pytest.importorskip("torch")
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]])
    g1, _ = make_request([0], max_tokens=1, logprobs=0)
    g2, _ = make_request([0], max_tokens=1)
    out = sample_tokens(logits, [g1, g2])
    assert [s.token_id for s in out] == [1, 0]
    expect = torch.log_softmax(logits[0], -1)[1].item()
    assert out[0].logprob == pytest.approx(expect)
    assert out[1].logprob is None
    s1, _ = make_request([0], max_tokens=1, temperature=2.0, seed=3)
    s2, _ = make_request([0], max_tokens=1, temperature=2.0, seed=3)
    flat = torch.zeros(1, 50)
    a = [sample_tokens(flat, [s1])[0].token_id for _ in range(10)]
    b = [sample_tokens(flat, [s2])[0].token_id for _ in range(10)]
    assert a == b and len(set(a)) > 1
    # top_p tiny: only the argmax survives the nucleus
    n, _ = make_request([0], max_tokens=1, temperature=1.0, top_p=0.01, seed=1)
    assert {sample_tokens(logits[:1], [n])[0].token_id for _ in range(10)} == {1}


def test_sampling_params_validation() -> None:
    with pytest.raises(ConfigError):
        SamplingParams(max_tokens=0)
    with pytest.raises(ConfigError):
        SamplingParams(max_tokens=4, temperature=-1)
    with pytest.raises(ConfigError):
        SamplingParams(max_tokens=4, min_tokens=5)
    with pytest.raises(ConfigError):
        SamplingParams(max_tokens=4, top_p=0)


def test_real_engine_outputs_do_not_depend_on_batching() -> None:
    """Continuous batching on the real tiny engine (fp32, greedy) gives every request exactly the
    tokens it gets alone: slot reuse, mixed positions and padded prefill must not leak."""
    torch = pytest.importorskip("torch")
    from perwatt.engine.generate import load_engine

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        eng = load_engine("tiny", precision="fp32", device="cpu", max_batch_size=2, max_seq_len=64)
        prompts = [[1 + i, 5, 9, 200 + 7 * i][: 2 + i % 3] for i in range(5)]
        lengths = [6, 3, 9, 4, 5]
        alone = [
            list(eng.generate([p], n, warmup=False).tokens[0])
            for p, n in zip(prompts, lengths, strict=True)
        ]
        b = Batcher(eng, num_slots=2, max_seq_len=64)
        reqs = [
            make_request(p, max_tokens=n, ignore_eos=True)
            for p, n in zip(prompts, lengths, strict=True)
        ]
        for r, _ in reqs:
            b.submit(r)
        drain(b)
    finally:
        torch.set_num_threads(saved)
    assert [r.output_ids for r, _ in reqs] == alone
    assert b.stats.max_active == 2 and eng.free_slots() == [0, 1]
