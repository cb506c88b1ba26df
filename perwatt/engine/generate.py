"""The engine: a model on a device with a slot KV cache, and generation on top.

Slot API (what ``perwatt serve``'s continuous batcher drives)::

    engine = load_engine("tiny", max_batch_size=8, max_seq_len=512)
    logits = engine.prefill([0, 3], [[1, 2, 3], [4, 5]])   # [2, V]: next-token logits per slot
    logits = engine.decode([0, 3], [17, 42])               # [2, V]: one step, each at its own pos
    engine.free(0)

* ``prefill`` starts new requests at position 0 in the given slots. Prompts of different lengths
  are right-padded to the longest one in the call and run as one batch; the padded positions are
  computed and written past each prompt's end, where the mask hides them until decode overwrites
  them. Callers with very uneven prompts can group them into separate calls to save compute.
* ``decode`` runs one step for any subset of the active slots. It runs only the leading slots that
  cover them (slot 0..highest active: requests take the lowest free slot, so one request on an
  8-slot engine costs what it costs on a 1-slot engine), and on the CPU attention reads only the
  cache positions in use. On CUDA the row count is rounded up to a power of two (or
  ``max_batch_size``), so each size is one captured CUDA graph with static shapes, as in
  gpt-fast. Rows in that span that are not decoding write to a scratch cache position and their
  logits are dropped.
* Logits come back as fp32 tensors on the engine's device.

``generate`` runs whole prompts to a fixed number of new tokens for benchmarking: a warm-up pass
first (compile and CUDA-graph capture happen there; its time is reported as ``warmup_s``), then
a timed prefill and a timed decode loop that keeps tokens on the device (no host sync per step).

Precision. ``fp32``/``fp16``/``bf16`` set the dtype of everything. Quantized precisions (``fp8``,
``int8``, ``int4``, ``nvfp4``; see :mod:`perwatt.engine.quant`) replace the linear layers and keep
the rest (embedding, norms, attention, KV cache) in bf16 on CUDA and fp32 on CPU (CPU bf16 is
slow, and the CPU accuracy reference is fp32).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from perwatt.engine import weights as W
from perwatt.engine.config import ModelConfig, get_config, total_params
from perwatt.engine.model import Transformer
from perwatt.engine.precision import QUANTIZED_PRECISIONS, plan_precision
from perwatt.engine.precision import resolve_device as resolve_device  # re-exported
from perwatt.engine.quant import load_quantized_into, quantize_in_place
from perwatt.engine.resolve import ResolvedModel, resolve_as_given
from perwatt.engine.tokenizer import Tokenizer, load_tokenizer
from perwatt.errors import ConfigError


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationResult:
    """Output of :meth:`Engine.generate`. Times exclude the warm-up (compile, graph capture)."""

    tokens: tuple[tuple[int, ...], ...]  # new tokens per prompt
    batch_size: int
    prompt_tokens: int  # summed over the batch
    new_tokens: int  # summed over the batch
    prefill_s: float  # prefill incl. the first sampled token
    decode_s: float  # every later token
    warmup_s: float  # warm-up pass (compile + CUDA-graph capture on first use), not in the above
    precision: str
    device: str
    emulated: bool
    note: str = ""

    def __post_init__(self) -> None:
        if min(self.prefill_s, self.decode_s, self.warmup_s) < 0:
            raise ValueError("times must be >= 0")
        if self.new_tokens != sum(len(t) for t in self.tokens):
            raise ValueError("new_tokens must equal the number of tokens returned")

    @property
    def total_s(self) -> float:
        return self.prefill_s + self.decode_s

    @property
    def tokens_per_s(self) -> float:
        """Output tokens over prefill + decode time (the user-visible rate)."""
        return self.new_tokens / self.total_s if self.total_s > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens after the first one, over decode time only (steady-state rate)."""
        n = self.new_tokens - self.batch_size
        return n / self.decode_s if self.decode_s > 0 and n > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokens": [list(t) for t in self.tokens],
            "batch_size": self.batch_size,
            "prompt_tokens": self.prompt_tokens,
            "new_tokens": self.new_tokens,
            "prefill_s": self.prefill_s,
            "decode_s": self.decode_s,
            "warmup_s": self.warmup_s,
            "tokens_per_s": self.tokens_per_s,
            "decode_tokens_per_s": self.decode_tokens_per_s,
            "precision": self.precision,
            "device": self.device,
            "emulated": self.emulated,
            "note": self.note,
        }


def sample(
    logits: Tensor,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Next token per row of ``logits`` [B, V] → [B] (long). Greedy when ``temperature == 0``.

    Sampling uses the exponential-race trick (argmax of p / Exp(1) noise draws from p) so it needs
    no host sync, as gpt-fast does."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    x = logits.float() / temperature
    if top_k is not None:
        kth = x.topk(min(top_k, x.shape[-1]), dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    probs = torch.softmax(x, dim=-1)
    noise = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / noise).argmax(dim=-1)


@dataclass(slots=True)
class _Slots:
    """Host-side slot state: next write position per slot, -1 when free."""

    pos: list[int] = field(default_factory=list)


class Engine:
    """A model on a device with a static slot KV cache. See the module docstring."""

    def __init__(
        self,
        model_cfg: ModelConfig | str,
        *,
        precision: str = "bf16",
        device: str | torch.device = "auto",
        max_batch_size: int = 1,
        max_seq_len: int | None = None,
        seed: int = 0,
        weights_dir: str | Path | None = None,
        quantized_path: str | Path | None = None,
        group_size: int | None = None,
        compile: bool | None = None,
        allow_emulated: bool = True,
    ) -> None:
        cfg = get_config(model_cfg) if isinstance(model_cfg, str) else model_cfg
        if max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_seq_len is None:
            max_seq_len = min(cfg.max_position_embeddings, 2048)
        if not 1 <= max_seq_len <= cfg.max_position_embeddings:
            raise ConfigError(
                f"max_seq_len must be in 1..{cfg.max_position_embeddings} for {cfg.name}, "
                f"got {max_seq_len}"
            )
        self.cfg = cfg
        self.device = resolve_device(device)
        plan = plan_precision(precision, self.device, allow_emulated=allow_emulated)
        if cfg.is_moe and plan.precision in QUANTIZED_PRECISIONS:
            # Stacked experts dequantize the weights they gather and multiply in the compute
            # dtype: bytes are those of the format, the arithmetic is not.
            if plan.precision == "fp8" and not plan.emulated:
                plan = dataclasses.replace(
                    plan,
                    emulated=True,
                    note="fp8 MoE: expert matmuls run on dequantized weights, not FP8 tensor "
                    "cores: emulated, no energy claim",
                )
            elif not plan.emulated:
                extra = "MoE experts dequantize gathered weights (no fused quantized kernel)"
                plan = dataclasses.replace(plan, note="; ".join(n for n in (plan.note, extra) if n))
        self.plan = plan
        self.precision = self.plan.precision
        self.dtype = self.plan.compute_dtype
        self.max_batch_size = max_batch_size
        self.max_seq_len = max_seq_len
        self.seed = seed
        self.weights = "random" if weights_dir is None else str(weights_dir)
        self.group_size: int | None = None
        t0 = time.perf_counter()
        self.model = self._build(weights_dir, quantized_path, group_size)
        self.load_s = time.perf_counter() - t0
        self.tokenizer: Tokenizer = load_tokenizer(
            weights_dir,
            vocab_size=cfg.vocab_size,
            bos_id=cfg.bos_token_id,
            eos_ids=cfg.eos_token_ids,
        )
        try:
            self.model.setup_cache(max_batch_size, max_seq_len, self.dtype)
        except torch.OutOfMemoryError as e:
            raise ConfigError(
                f"out of memory allocating the KV cache for batch {max_batch_size} x "
                f"{max_seq_len} positions; use a smaller batch or max_seq_len"
            ) from e
        self._slots = _Slots(pos=[-1] * max_batch_size)
        self.compiled = self.device.type == "cuda" if compile is None else bool(compile)
        self._decode_fn: Callable[..., Tensor] = self.model.decode
        if self.compiled:
            # MoE layers switch to their static-shape paths (gather / dense) inside the graph.
            self._decode_fn = torch.compile(  # type: ignore[assignment]
                self.model.decode, mode="reduce-overhead", fullgraph=True
            )
        self._warm_shapes: set[tuple[int, ...]] = set()
        # Decode batch sizes: any span on the CPU; powers of two and max_batch_size under CUDA
        # graphs, so a handful of graphs cover every occupancy.
        sizes = {max_batch_size}
        b = 1
        while b < max_batch_size:
            sizes.add(b)
            b *= 2
        self.decode_sizes: tuple[int, ...] = tuple(sorted(sizes))

    # -- construction -----------------------------------------------------------------------

    def _build(
        self,
        weights_dir: str | Path | None,
        quantized_path: str | Path | None,
        group_size: int | None,
    ) -> Transformer:
        quantized = self.precision in QUANTIZED_PRECISIONS
        with torch.device("meta"):
            model = Transformer(self.cfg)
        model.to(self.dtype)  # on meta: only sets the dtype storage will get
        try:
            if quantized_path is not None:
                if not quantized:
                    raise ConfigError(
                        f"a quantized file needs a quantized precision, not {self.precision}"
                    )
                self.group_size = load_quantized_into(
                    model,
                    quantized_path,
                    precision=self.precision,
                    plan=self.plan,
                    device=self.device,
                )
            elif weights_dir is None and quantized:
                # Random weights, quantized one layer at a time: the full-precision model never
                # exists at once, so shapes larger than memory in bf16 still load.
                def source(pname: str, shape: torch.Size) -> Tensor:
                    if pname == "output.weight" and self.cfg.tie_embeddings:
                        pname = "tok_embeddings.weight"
                    return W.random_tensor(pname, shape, self.seed, self.device)

                self.group_size = quantize_in_place(
                    model,
                    self.precision,
                    plan=self.plan,
                    group_size=group_size,
                    weight_source=source,
                )
                W.materialize_meta_(model, self.device)
                W.init_random_(model, self.seed)
            else:
                model = model.to_empty(device=self.device)
                model.tie_weights()
                if weights_dir is not None:
                    W.load_hf_weights(model, weights_dir)
                else:
                    W.init_random_(model, self.seed)
                if quantized:
                    self.group_size = quantize_in_place(
                        model, self.precision, plan=self.plan, group_size=group_size
                    )
            model.reset_buffers()
            model.tie_weights()
        except torch.OutOfMemoryError as e:
            raise ConfigError(
                f"out of memory loading {self.cfg.name} in {self.precision} on {self.device}; "
                "use a smaller shape or a lower precision (int8, int4)"
            ) from e
        stray = {
            str(t.device)
            for t in (*model.parameters(), *model.buffers())
            if t.device != self.device
        }
        if stray:  # a construction bug, not a user error: fail here rather than mid-matmul
            raise RuntimeError(f"engine build left tensors on {sorted(stray)}, not {self.device}")
        model.eval()
        model.requires_grad_(False)
        return model

    # -- information ------------------------------------------------------------------------

    @property
    def emulated(self) -> bool:
        return self.plan.emulated

    @property
    def note(self) -> str:
        return self.plan.note

    def info(self) -> dict[str, Any]:
        """What this engine is, for result documents."""
        return {
            "model": self.cfg.name,
            "model_source": self.cfg.source,
            "weights": self.weights,
            "params_total": total_params(self.cfg),
            "precision": self.precision,
            "compute_dtype": str(self.dtype).removeprefix("torch."),
            "kernel": self.plan.kernel,
            "group_size": self.group_size,
            "emulated": self.emulated,
            "note": self.note,
            "device": str(self.device),
            "device_name": (
                torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
            ),
            "compiled": self.compiled,
            "max_batch_size": self.max_batch_size,
            "max_seq_len": self.max_seq_len,
            "tokenizer": self.tokenizer.kind,
            "torch": torch.__version__,
            "load_s": self.load_s,
        }

    # -- slot API ---------------------------------------------------------------------------

    def free_slots(self) -> list[int]:
        return [i for i, p in enumerate(self._slots.pos) if p < 0]

    def position(self, slot_id: int) -> int:
        """Tokens held by ``slot_id`` (its next write position), or -1 when free."""
        self._check_slot(slot_id)
        return self._slots.pos[slot_id]

    def _check_slot(self, slot_id: int) -> None:
        if not 0 <= slot_id < self.max_batch_size:
            raise ConfigError(f"slot {slot_id} out of range 0..{self.max_batch_size - 1}")

    def _check_ids(self, ids: Sequence[int]) -> None:
        v = self.cfg.vocab_size
        bad = [t for t in ids if not 0 <= t < v]
        if bad:
            raise ConfigError(f"token id {bad[0]} outside the vocabulary 0..{v - 1}")

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.no_grad()
    def prefill(self, slot_ids: Sequence[int], token_ids: Sequence[Sequence[int]]) -> Tensor:
        """Start new requests at position 0 in ``slot_ids``; return last-position logits [B, V]."""
        if len(slot_ids) != len(token_ids) or not slot_ids:
            raise ConfigError("prefill needs one non-empty token list per slot id")
        if len(set(slot_ids)) != len(slot_ids):
            raise ConfigError(f"prefill got a slot twice: {list(slot_ids)}")
        lengths = [len(t) for t in token_ids]
        for s, n, ids in zip(slot_ids, lengths, token_ids, strict=True):
            self._check_slot(s)
            if not 1 <= n <= self.max_seq_len:
                raise ConfigError(
                    f"prompt of {n} tokens for slot {s}: must be 1..{self.max_seq_len} "
                    "(max_seq_len); shorten it or raise max_seq_len"
                )
            self._check_ids(ids)
        width = max(lengths)
        rows = [list(t) + [0] * (width - len(t)) for t in token_ids]
        tokens = torch.tensor(rows, dtype=torch.long, device=self.device)
        slot_idx = torch.tensor(list(slot_ids), dtype=torch.long, device=self.device)
        last = torch.tensor([n - 1 for n in lengths], dtype=torch.long, device=self.device)
        try:
            logits = self.model.prefill(tokens, slot_idx, last)
        except torch.OutOfMemoryError as e:
            raise ConfigError(
                f"out of memory in prefill of {len(rows)} x {width} tokens; prefill fewer "
                "prompts per call or use a smaller batch"
            ) from e
        for s, n in zip(slot_ids, lengths, strict=True):
            self._slots.pos[s] = n
        return logits

    def decode_full(
        self, tokens: Tensor, pos: Tensor, write_pos: Tensor, kv_len: int | None = None
    ) -> Tensor:
        """The raw decode step over the first B rows (B = ``len(tokens)``, usually
        ``max_batch_size``), for loops that keep tokens on the device (``generate``, the
        benchmark). ``tokens``/``pos``/``write_pos``: long [B] on the engine's device; rows not
        decoding must have ``write_pos == max_seq_len`` (scratch). ``kv_len`` bounds the cache
        positions attention reads (eager only; it must exceed every ``pos``). Returns logits
        [B, V]; with CUDA graphs the tensor is overwritten by the next step, so index or copy it
        before calling again. Slot positions are not tracked here."""
        if self.compiled:
            return self._decode_fn(tokens, pos, write_pos, True)
        return self._decode_fn(tokens, pos, write_pos, False, kv_len)

    def decode_rows(self, highest_slot: int) -> int:
        """How many leading slots a decode step runs to cover ``highest_slot``."""
        if not self.compiled:
            return highest_slot + 1
        return next(b for b in self.decode_sizes if b > highest_slot)

    def _kv_len(self, longest: int) -> int | None:
        """Cache positions attention must read when no slot holds more than ``longest`` tokens:
        rounded up to 64 so the step's shapes change rarely; None (all) under CUDA graphs."""
        if self.compiled:
            return None
        return min(self.model.cache_len, -(-longest // 64) * 64)

    _decode_full = decode_full  # the name the benchmark driver first used

    @torch.no_grad()
    def decode(self, slot_ids: Sequence[int], tokens: Sequence[int]) -> Tensor:
        """One step for the given active slots, each at its own position; logits [B, V]."""
        if len(slot_ids) != len(tokens) or not slot_ids:
            raise ConfigError("decode needs one token per slot id")
        if len(set(slot_ids)) != len(slot_ids):
            raise ConfigError(f"decode got a slot twice: {list(slot_ids)}")
        self._check_ids(tokens)
        for s in slot_ids:
            self._check_slot(s)
        rows = self.decode_rows(max(slot_ids))
        tok = [0] * rows
        pos = [0] * rows
        write = [self.max_seq_len] * rows  # scratch position for rows not decoding
        for s, t in zip(slot_ids, tokens, strict=True):
            self._check_slot(s)
            p = self._slots.pos[s]
            if p < 0:
                raise ConfigError(f"slot {s} is free: prefill it before decoding")
            if p >= self.max_seq_len:
                raise ConfigError(
                    f"slot {s} is full ({self.max_seq_len} tokens = max_seq_len); free it or "
                    "raise max_seq_len"
                )
            tok[s], pos[s], write[s] = t, p, p
        dev = self.device
        out = self.decode_full(
            torch.tensor(tok, dtype=torch.long, device=dev),
            torch.tensor(pos, dtype=torch.long, device=dev),
            torch.tensor(write, dtype=torch.long, device=dev),
            kv_len=self._kv_len(max(pos) + 1),
        )
        # Indexing copies, which a CUDA-graph output needs anyway (the next replay overwrites it).
        logits = out[torch.tensor(list(slot_ids), dtype=torch.long, device=dev)]
        for s in slot_ids:
            self._slots.pos[s] += 1
        return logits

    def free(self, slot_id: int) -> None:
        """Release a slot. Its cache is not cleared: the next prefill overwrites what it reads."""
        self._check_slot(slot_id)
        self._slots.pos[slot_id] = -1

    # -- generation -------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        top_k: int | None = None,
        ignore_eos: bool = True,
        seed: int = 0,
        warmup: bool = True,
    ) -> GenerationResult:
        """Generate ``max_new_tokens`` per prompt (fewer only when ``ignore_eos=False`` and EOS
        comes). Uses the lowest free slots and frees them at the end."""
        b = len(prompts)
        if b < 1:
            raise ConfigError("generate needs at least one prompt")
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        free = self.free_slots()
        if b > len(free):
            raise ConfigError(
                f"{b} prompts but only {len(free)} free slots (max_batch_size "
                f"{self.max_batch_size}); use a batch of at most {len(free)}"
            )
        longest = max(len(p) for p in prompts)
        if longest + max_new_tokens - 1 > self.max_seq_len:
            raise ConfigError(
                f"prompt ({longest}) + new tokens ({max_new_tokens}) exceed max_seq_len "
                f"{self.max_seq_len}; raise max_seq_len or generate fewer tokens"
            )
        slots = free[:b]
        warmup_s = 0.0
        if warmup:
            t0 = time.perf_counter()
            # Enough decode steps for torch.compile's cudagraph trees to warm up, record and
            # replay once, so the timed run sees only replays.
            self._run(slots, prompts, min(max_new_tokens, 5), 0.0, None, True, None)
            self._sync()
            warmup_s = time.perf_counter() - t0
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed)
        out, prefill_s, decode_s = self._run(
            slots, prompts, max_new_tokens, temperature, top_k, ignore_eos, gen
        )
        return GenerationResult(
            tokens=tuple(tuple(t) for t in out),
            batch_size=b,
            prompt_tokens=sum(len(p) for p in prompts),
            new_tokens=sum(len(t) for t in out),
            prefill_s=prefill_s,
            decode_s=decode_s,
            warmup_s=warmup_s,
            precision=self.precision,
            device=str(self.device),
            emulated=self.emulated,
            note=self.note,
        )

    def _run(
        self,
        slots: list[int],
        prompts: Sequence[Sequence[int]],
        n_new: int,
        temperature: float,
        top_k: int | None,
        ignore_eos: bool,
        gen: torch.Generator | None,
    ) -> tuple[list[list[int]], float, float]:
        dev = self.device
        mb = self.decode_rows(max(slots))  # the leading slots that cover these
        eos_ids = list(self.cfg.eos_token_ids)
        eos = torch.tensor(eos_ids, dtype=torch.long, device=dev)
        kv_len = self._kv_len(max(len(p) for p in prompts) + n_new)
        try:
            self._sync()
            t0 = time.perf_counter()
            logits = self.prefill(slots, [list(p) for p in prompts])
            nxt = sample(logits, temperature=temperature, top_k=top_k, generator=gen)
            self._sync()
            t1 = time.perf_counter()
            rows = torch.tensor(slots, dtype=torch.long, device=dev)
            tok = torch.zeros(mb, dtype=torch.long, device=dev)
            pos = torch.zeros(mb, dtype=torch.long, device=dev)
            write = torch.full((mb,), self.max_seq_len, dtype=torch.long, device=dev)
            lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long, device=dev)
            pos[rows] = lengths
            write[rows] = lengths
            steps = [nxt]
            done = torch.zeros(len(slots), dtype=torch.bool, device=dev)
            for _ in range(n_new - 1):
                if not ignore_eos and eos_ids:
                    done |= torch.isin(steps[-1], eos)
                    if bool(done.all()):  # host sync: only when EOS may end the run early
                        break
                tok[rows] = steps[-1]
                logits = self.decode_full(tok, pos, write, kv_len)[rows]
                steps.append(sample(logits, temperature=temperature, top_k=top_k, generator=gen))
                pos[rows] += 1
                write[rows] += 1
            self._sync()
            t2 = time.perf_counter()
        finally:
            for s in slots:
                self.free(s)
        table = torch.stack(steps, dim=1).tolist()  # [B, steps]
        out: list[list[int]] = []
        for row in table:
            if not ignore_eos:
                stop = next((i for i, t in enumerate(row) if t in eos_ids), None)
                if stop is not None:
                    row = row[: stop + 1]
            out.append([int(t) for t in row])
        return out, t1 - t0, t2 - t1


def load_engine(
    model: str | ResolvedModel,
    *,
    precision: str | None = None,
    device: str = "auto",
    max_batch_size: int = 1,
    max_seq_len: int | None = None,
    seed: int = 0,
    quantized_path: str | Path | None = None,
    group_size: int | None = None,
    compile: bool | None = None,
    allow_emulated: bool = True,
) -> Engine:
    """An :class:`Engine` for a model resolved once (:func:`~perwatt.engine.resolve.resolve_model`),
    or for a preset shape name (random weights) or a local HF directory, resolved here.
    ``precision`` None is the resolved model's precision, and bf16 for a name."""
    if isinstance(model, ResolvedModel):
        if quantized_path is not None:
            raise ConfigError(
                "quantized_path belongs to resolve_model(), not to load_engine() of a resolved model"
            )
        resolved = model
    else:
        resolved = resolve_as_given(model, precision or "bf16", quantized_path)
    return Engine(
        resolved.cfg,
        precision=precision or resolved.precision,
        device=device,
        max_batch_size=max_batch_size,
        max_seq_len=max_seq_len,
        seed=seed,
        weights_dir=resolved.weights_dir,
        quantized_path=resolved.quantized_path,
        group_size=group_size,
        compile=compile,
        allow_emulated=allow_emulated,
    )
