"""Continuous batching over a fixed pool of KV-cache slots.

The engine owns a static KV cache with ``max_batch_size`` rows ("slots"). A request occupies one
slot from its prefill until its last token; the scheduler below keeps as many slots busy as it
can, which is what makes a server fast *and* frugal per token: a decode step over 8 sequences
costs little more energy than over 1, because at small batch the step is bound by reading the
weights, not by arithmetic.

One scheduler iteration (:meth:`Batcher.step`)::

    pending (FIFO)        slots                                   engine
    ─────────────▶  admit into free slots  ──▶  prefill(new slots, prompts) → first token each
                    every busy slot        ──▶  decode(busy slots, last tokens) → next token each
                    finished / cancelled   ──▶  free(slot) at once, so the next step can admit

* Admission is FIFO and happens *between* decode steps, never inside one: a request that arrives
  while the batch decodes waits at most one step before its prefill.
* Newly admitted requests join the decode batch in the same step they were prefilled.
* A finished request frees its slot before the next admission; a cancelled request (client gone)
  is dropped at the next step boundary, whether it was queued or decoding.

Threading: every engine call (torch work) runs on the single thread that calls :meth:`step` /
:meth:`run_forever`. :meth:`submit` and :meth:`cancel` are safe from any thread. Results leave
through the request's ``on_event`` callback, called on the engine thread; the server wraps it in
``loop.call_soon_threadsafe`` so the event loop never blocks on torch and torch never touches the
event loop.

The scheduler itself is pure Python: it needs from the engine only ``prefill``, ``decode`` and
``free`` (see :class:`SlotEngine`), so it is tested with a fake engine that returns lists.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from perwatt.errors import ConfigError

FINISH_REASONS = ("length", "stop", "abort", "error")


class SlotEngine(Protocol):
    """What the batcher needs from an engine (``perwatt.engine`` implements it)."""

    def prefill(self, slot_ids: Sequence[int], token_ids: Sequence[Sequence[int]]) -> Any:
        """Run the prompts into the given slots; return next-token logits ``[B, V]``."""

    def decode(self, slot_ids: Sequence[int], tokens: Sequence[int]) -> Any:
        """Feed one token per slot; return next-token logits ``[B, V]``."""

    def free(self, slot_id: int) -> None:
        """Forget a slot's cache so it can be reused."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SamplingParams:
    """How one request is decoded. ``temperature == 0`` is greedy."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    stop_token_ids: frozenset[int] = frozenset()
    #: None: no log-probs; 0: the chosen token's; k > 0: also the k most likely tokens'.
    logprobs: int | None = None

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ConfigError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.min_tokens < 0 or self.min_tokens > self.max_tokens:
            raise ConfigError(
                f"min_tokens must be in [0, max_tokens={self.max_tokens}], got {self.min_tokens}"
            )
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise ConfigError(f"logprobs must be in [0, 20], got {self.logprobs}")


@dataclass(frozen=True, slots=True)
class Sampled:
    """One sampled token and, when asked for, its log-probability and the top alternatives."""

    token_id: int
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """What a request's callback receives: one per token, then (abort/error) a closing event.

    The last token of a request that ran to ``length`` or ``stop`` carries the finish reason; a
    request that is aborted or fails gets one event with ``token_id=None``.
    """

    token_id: int | None
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] | None = None
    finish_reason: str | None = None
    error: str | None = None


_ids = itertools.count()


@dataclass(eq=False, slots=True, kw_only=True)
class Request:
    """One generation request as the scheduler sees it. Mutated only on the engine thread."""

    prompt_ids: tuple[int, ...]
    params: SamplingParams
    on_event: Callable[[Event], None]
    request_id: str = field(default_factory=lambda: f"req-{next(_ids)}")
    # --- scheduler state
    slot: int | None = None
    output_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    cancelled: bool = False
    arrival_s: float = 0.0
    admitted_s: float | None = None
    first_token_s: float | None = None
    finished_s: float | None = None
    rng: Any = None  # per-request sampler state (a torch.Generator or random.Random)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


Sampler = Callable[[Any, Sequence[Request]], list[Sampled]]


@dataclass(slots=True)
class BatcherStats:
    """Counters for tests and the server's /metrics-style introspection."""

    steps: int = 0
    prefill_calls: int = 0
    decode_calls: int = 0
    max_active: int = 0
    admitted: int = 0
    completed: int = 0
    aborted: int = 0
    failed: int = 0
    decode_tokens: int = 0
    admission_order: list[str] = field(default_factory=list)


class Batcher:
    """Continuous-batching scheduler over ``num_slots`` KV-cache slots of ``engine``."""

    def __init__(
        self,
        engine: SlotEngine,
        *,
        num_slots: int,
        max_seq_len: int,
        eos_token_ids: Iterable[int] = (),
        sampler: Sampler | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if num_slots < 1:
            raise ConfigError(f"need at least one slot, got {num_slots}")
        if max_seq_len < 2:
            raise ConfigError(f"max_seq_len must be at least 2, got {max_seq_len}")
        self.engine = engine
        self.num_slots = num_slots
        self.max_seq_len = max_seq_len
        self.eos_token_ids = frozenset(eos_token_ids)
        self.sampler: Sampler = sampler if sampler is not None else sample_tokens
        self.clock = clock
        self.stats = BatcherStats()
        self._cv = threading.Condition()
        self._pending: deque[Request] = deque()  # guarded by _cv
        self._free: list[int] = list(range(num_slots))  # min-heap: lowest slot first
        heapq.heapify(self._free)
        self._active: list[Request] = []  # engine thread only
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ any thread
    def check(self, prompt_len: int, max_tokens: int) -> None:
        """Raise :class:`ConfigError` when a prompt and its completion cannot fit a slot."""
        if prompt_len < 1:
            raise ConfigError("the prompt is empty: send at least one token")
        if prompt_len + max_tokens > self.max_seq_len:
            raise ConfigError(
                f"This model's maximum context length is {self.max_seq_len} tokens. However, you "
                f"requested {prompt_len + max_tokens} tokens ({prompt_len} in the prompt, "
                f"{max_tokens} in the completion). Reduce the prompt or max_tokens, or restart "
                "with a larger --max-seq-len."
            )

    def submit(self, request: Request) -> Request:
        """Queue a request (FIFO). Thread-safe. Raises ConfigError when it cannot fit."""
        self.check(len(request.prompt_ids), request.params.max_tokens)
        if self._stop.is_set():
            raise RuntimeError("the batcher is stopped")
        request.arrival_s = self.clock()
        with self._cv:
            self._pending.append(request)
            self._cv.notify_all()
        return request

    def cancel(self, request: Request) -> None:
        """Drop a request at the next step boundary and free its slot. Thread-safe, idempotent."""
        request.cancelled = True
        with self._cv:
            self._cv.notify_all()

    @property
    def num_pending(self) -> int:
        with self._cv:
            return len(self._pending)

    @property
    def num_active(self) -> int:
        return len(self._active)

    @property
    def running(self) -> bool:
        """Whether the engine thread is alive (what ``/health`` reports)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def free_slots(self) -> tuple[int, ...]:
        return tuple(sorted(self._free))

    # ------------------------------------------------------------------ engine thread
    def step(self) -> bool:
        """One scheduler iteration: drop cancelled, admit + prefill, decode. Returns whether
        any engine work was done."""
        self.stats.steps += 1
        for req in [r for r in self._active if r.cancelled]:
            self._finish(req, "abort")
        admitted = self._admit()
        worked = False
        if admitted:
            worked = True
            self._run(admitted, prefill=True)
        decoding = [r for r in self._active if not r.done]
        if decoding:
            worked = True
            self._run(decoding, prefill=False)
        return worked

    def _admit(self) -> list[Request]:
        admitted: list[Request] = []
        with self._cv:
            if any(r.cancelled for r in self._pending):
                kept: deque[Request] = deque()
                for r in self._pending:
                    if r.cancelled:
                        self._close(r, "abort")
                    else:
                        kept.append(r)
                self._pending = kept
            while self._free and self._pending:
                req = self._pending.popleft()
                req.slot = heapq.heappop(self._free)
                req.admitted_s = self.clock()
                admitted.append(req)
        for req in admitted:
            self.stats.admitted += 1
            self.stats.admission_order.append(req.request_id)
            self._active.append(req)
        self.stats.max_active = max(self.stats.max_active, len(self._active))
        return admitted

    def _run(self, reqs: list[Request], *, prefill: bool) -> None:
        slots = [r.slot for r in reqs if r.slot is not None]
        try:
            if prefill:
                self.stats.prefill_calls += 1
                logits = self.engine.prefill(slots, [list(r.prompt_ids) for r in reqs])
            else:
                self.stats.decode_calls += 1
                logits = self.engine.decode(slots, [r.output_ids[-1] for r in reqs])
            samples = self.sampler(logits, reqs)
        except Exception as e:  # OOM, device error: fail these requests, keep serving others
            what = "prefill" if prefill else "decode"
            msg = f"engine {what} failed: {type(e).__name__}: {e}"
            print(f"perwatt serve: {msg}", file=sys.stderr)
            for r in reqs:
                self._finish(r, "error", error=msg)
            return
        now = self.clock()
        if not prefill:
            self.stats.decode_tokens += len(reqs)
        for req, s in zip(reqs, samples, strict=True):
            if req.done:
                continue
            req.output_ids.append(s.token_id)
            if req.first_token_s is None:
                req.first_token_s = now
            reason = self._finish_reason(req, s.token_id)
            if reason is not None:
                self._finish(req, reason, last=s)
            else:
                self._emit(req, Event(s.token_id, s.logprob, s.top_logprobs))

    def _finish_reason(self, req: Request, token: int) -> str | None:
        p = req.params
        n = len(req.output_ids)
        if n >= p.min_tokens and (
            token in p.stop_token_ids or (not p.ignore_eos and token in self.eos_token_ids)
        ):
            return "stop"
        if n >= p.max_tokens or len(req.prompt_ids) + n >= self.max_seq_len:
            return "length"
        return None

    def _finish(
        self, req: Request, reason: str, *, last: Sampled | None = None, error: str | None = None
    ) -> None:
        """Free the slot at once and send the closing event."""
        if req.slot is not None:
            try:
                self.engine.free(req.slot)
            except Exception as e:  # a broken free must not leak the slot from the pool
                print(f"perwatt serve: freeing slot {req.slot} failed: {e}", file=sys.stderr)
            heapq.heappush(self._free, req.slot)
            req.slot = None
        if req in self._active:
            self._active.remove(req)
        if last is not None:
            req.finish_reason = reason
            req.finished_s = self.clock()
            self.stats.completed += 1
            self._emit(req, Event(last.token_id, last.logprob, last.top_logprobs, reason))
        else:
            self._close(req, reason, error)

    def _close(self, req: Request, reason: str, error: str | None = None) -> None:
        req.finish_reason = reason
        req.finished_s = self.clock()
        if reason == "abort":
            self.stats.aborted += 1
        else:
            self.stats.failed += 1
        self._emit(req, Event(None, finish_reason=reason, error=error))

    def _emit(self, req: Request, event: Event) -> None:
        try:
            req.on_event(event)
        except Exception as e:  # a broken consumer cancels its own request, not the engine
            print(f"perwatt serve: request callback failed: {e}", file=sys.stderr)
            req.cancelled = True

    # ------------------------------------------------------------------ engine thread loop
    def run_forever(self) -> None:
        """Step while there is work; sleep on a condition variable while there is none."""
        while not self._stop.is_set():
            with self._cv:
                while not self._stop.is_set() and not self._pending and not self._active:
                    self._cv.wait()
            if self._stop.is_set():
                break
            self.step()
        # Shutdown: everything still queued or running is aborted so no client hangs.
        with self._cv:
            pending, self._pending = list(self._pending), deque()
        for r in pending:
            self._close(r, "abort")
        for r in list(self._active):
            self._finish(r, "abort")

    def start(self) -> threading.Thread:
        """Run the scheduler on one dedicated daemon thread (the only thread touching torch)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self.run_forever, name="perwatt-engine", daemon=True
            )
            self._thread.start()
        return self._thread

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None


# ---------------------------------------------------------------------- sampling
def sample_tokens(logits: Any, reqs: Sequence[Request]) -> list[Sampled]:
    """Pick one token per row of ``logits`` ``[B, V]`` for each request's params.

    Accepts a torch tensor (the real engine) or a list of lists of floats (fake engines in
    tests); both paths implement the same rules: greedy at temperature 0, else softmax sampling
    with temperature and nucleus (top-p) from a per-request generator seeded by ``seed``.
    """
    if isinstance(logits, list):
        return [_sample_row_py(row, r) for row, r in zip(logits, reqs, strict=True)]
    return _sample_torch(logits, reqs)


def _sample_row_py(row: Sequence[float], req: Request) -> Sampled:
    p = req.params
    m = max(row)
    lse = m + math.log(sum(math.exp(x - m) for x in row))
    if p.temperature == 0:
        tok = max(range(len(row)), key=lambda i: row[i])
    else:
        if req.rng is None:
            req.rng = random.Random(p.seed)
        scaled = [(x - m) / p.temperature for x in row]
        probs = [math.exp(x) for x in scaled]
        total = sum(probs)
        order = sorted(range(len(row)), key=lambda i: -probs[i])
        keep: list[int] = []
        acc = 0.0
        for i in order:
            keep.append(i)
            acc += probs[i] / total
            if acc >= p.top_p:
                break
        tok = req.rng.choices(keep, weights=[probs[i] for i in keep])[0]
    lp = row[tok] - lse if p.logprobs is not None else None
    top = None
    if p.logprobs:
        best = sorted(range(len(row)), key=lambda i: -row[i])[: p.logprobs]
        top = tuple((i, row[i] - lse) for i in best)
    return Sampled(tok, lp, top)


def _sample_torch(logits: Any, reqs: Sequence[Request]) -> list[Sampled]:
    import torch

    x = logits.float()  # x: [B, V]
    tokens = x.argmax(dim=-1)  # greedy for every row; sampled rows are overwritten below
    sampled_rows = [i for i, r in enumerate(reqs) if r.params.temperature > 0]
    if sampled_rows:
        tokens = tokens.clone()
        for i in sampled_rows:
            p = reqs[i].params
            if reqs[i].rng is None:
                g = torch.Generator(device=x.device)
                g.manual_seed(p.seed if p.seed is not None else random.randrange(2**63))
                reqs[i].rng = g
            probs = torch.softmax(x[i] / p.temperature, dim=-1)
            if p.top_p < 1.0:
                sorted_p, idx = probs.sort(descending=True)
                cut = sorted_p.cumsum(0) - sorted_p >= p.top_p  # drop tokens past the nucleus
                sorted_p[cut] = 0.0
                probs = torch.zeros_like(probs).scatter_(0, idx, sorted_p)
            tokens[i] = torch.multinomial(probs, 1, generator=reqs[i].rng)[0]
    want_lp = [i for i, r in enumerate(reqs) if r.params.logprobs is not None]
    token_list: list[int] = tokens.tolist()
    lps: dict[int, float] = {}
    tops: dict[int, tuple[tuple[int, float], ...]] = {}
    if want_lp:
        rows = torch.tensor(want_lp, device=x.device)
        lsm = torch.log_softmax(x[rows], dim=-1)  # lsm: [b, V]
        chosen = lsm.gather(1, tokens[rows].unsqueeze(1)).squeeze(1).tolist()
        k = max(reqs[i].params.logprobs or 0 for i in want_lp)
        top_v: list[list[float]] = []
        top_i: list[list[int]] = []
        if k > 0:
            tv, ti = lsm.topk(k, dim=-1)
            top_v, top_i = tv.tolist(), ti.tolist()
        for j, i in enumerate(want_lp):
            lps[i] = float(chosen[j])
            kk = reqs[i].params.logprobs or 0
            if kk > 0:
                tops[i] = tuple(zip(top_i[j][:kk], top_v[j][:kk], strict=True))
    return [Sampled(int(t), lps.get(i), tops.get(i)) for i, t in enumerate(token_list)]
