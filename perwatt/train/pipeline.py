"""One pipeline to plan or simulate: :class:`PipelineSpec`, checked once when it is made.

``plan_pipeline`` (``perwatt train plan``), ``run_simulation`` (``perwatt train simulate``) and
the CLI take the same description of a pipeline: its size, schedule, blocking power and the
planner's model settings. The rules that tie them together (chunks need the interleaved
schedule, one P_block per stage, sizes the planner can solve) are checked in
:meth:`PipelineSpec.__post_init__`, as torchtitan's ``ParallelDims`` checks itself, and the
schedule is built by :meth:`PipelineSpec.build_schedule`. Errors name the fields
(:class:`~perwatt.errors.FieldError`); the CLI says its flags instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal

from perwatt.errors import FieldError
from perwatt.train.frontier import CostModel
from perwatt.train.schedule import Schedule, gpipe, interleaved_one_f_one_b, one_f_one_b

__all__ = ["MAX_INSTRUCTIONS", "SCHEDULES", "PipelineSpec", "ScheduleName"]

ScheduleName = Literal["1f1b", "gpipe", "interleaved"]
SCHEDULES: Final[tuple[ScheduleName, ...]] = ("1f1b", "gpipe", "interleaved")

# Sane upper bound on the size of a plan, checked before any work. The sweep's time grows with
# (frontier points) × (instructions): GPT-3/A100 at 8 stages took 5.4 s for 500 microbatches
# (8,000 instructions, 17,231 points) and 110 s for 2,000 (32,000, 68,231) on a 2-core VM, so
# 65,536 instructions is several minutes there, and 100,000 microbatches would be days. Perseus
# plans 12–96 microbatches per iteration.
MAX_INSTRUCTIONS: Final = 65_536


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineSpec:
    """A pipeline-parallel training iteration to plan: size, schedule, blocking power, model.

    ``p_block_w``: the power one GPU draws while blocked on communication, one figure for every
    stage or one per stage. ``chunks`` > 1 (model chunks per GPU) needs the ``interleaved``
    schedule. ``time_quantum_s``, ``cost_model`` and ``noise_factor`` are the planner's (see
    :func:`perwatt.train.frontier.compute_frontier`); ``supported_freqs_mhz`` refuses profiled
    clocks the GPUs cannot be set to.
    """

    stages: int
    microbatches: int
    p_block_w: float | tuple[float, ...]
    schedule: ScheduleName = "1f1b"
    chunks: int = 1
    recompute: bool = False
    time_quantum_s: float = 1e-3
    cost_model: CostModel = "exponential"
    noise_factor: float = 1.0
    supported_freqs_mhz: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("stages", "microbatches", "chunks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FieldError(f"{{f}} must be a whole number ≥ 1, got {value}", f=name)
        if self.schedule not in SCHEDULES:
            raise FieldError(
                f"unknown {{f}} {self.schedule!r}; use 1f1b, gpipe or interleaved", f="schedule"
            )
        if self.chunks > 1 and self.schedule != "interleaved":
            raise FieldError(
                f"{{c}} {self.chunks} needs {{s}} interleaved (the {self.schedule} schedule runs "
                "one model chunk per GPU)",
                c="chunks",
                s="schedule",
            )
        if not isinstance(self.p_block_w, (int, float)):
            # a list from a caller becomes a tuple: the spec is frozen and hashable
            object.__setattr__(self, "p_block_w", tuple(float(x) for x in self.p_block_w))
        pb = self.p_block_per_stage_w if isinstance(self.p_block_w, tuple) else (self.p_block_w,)
        if isinstance(self.p_block_w, tuple) and len(self.p_block_w) != self.stages:
            raise FieldError(
                f"{{p}} has {len(self.p_block_w)} values but {{s}} is {self.stages}: give one "
                "value, or one per stage",
                p="p_block_w",
                s="stages",
            )
        if not all(math.isfinite(p) and p >= 0 for p in pb):
            raise FieldError(
                f"{{p}} must be a non-negative number of watts, got {self.p_block_w}", p="p_block_w"
            )
        if not (math.isfinite(self.time_quantum_s) and self.time_quantum_s > 0):
            raise FieldError(f"{{f}} must be > 0 s, got {self.time_quantum_s}", f="time_quantum_s")
        if not self.noise_factor >= 1.0:  # also refuses NaN
            raise FieldError(f"{{f}} must be ≥ 1, got {self.noise_factor}", f="noise_factor")
        if self.cost_model not in ("exponential", "convex-hull"):
            raise FieldError(
                f"unknown {{f}} {self.cost_model!r}; use exponential or convex-hull",
                f="cost_model",
            )
        if self.supported_freqs_mhz is not None:
            object.__setattr__(
                self, "supported_freqs_mhz", tuple(int(f) for f in self.supported_freqs_mhz)
            )
        if self.instructions > MAX_INSTRUCTIONS:
            raise FieldError(
                f"{{s}} {self.stages} × {{m}} {self.microbatches}"
                + (f" × {{c}} {self.chunks}" if self.chunks > 1 else "")
                + f" is {self.instructions:,} instructions per iteration; the planner takes up "
                f"to {MAX_INSTRUCTIONS:,} (its time grows with the square of the pipeline: "
                "32,000 took 110 s on a 2-core VM); Perseus plans 12–96 microbatches",
                s="stages",
                m="microbatches",
                c="chunks",
            )

    @property
    def instructions(self) -> int:
        """Instructions per iteration: a forward and a backward per microbatch, stage, chunk."""
        return 2 * self.stages * self.microbatches * self.chunks

    @property
    def p_block_per_stage_w(self) -> tuple[float, ...]:
        """The blocking power of each stage (one figure repeated when one was given)."""
        if isinstance(self.p_block_w, tuple):
            return self.p_block_w
        return (float(self.p_block_w),) * self.stages

    def build_schedule(self) -> Schedule:
        """The schedule's instruction DAG (``recompute``: backward re-runs forward)."""
        if self.schedule == "gpipe":
            return gpipe(self.stages, self.microbatches, recompute=self.recompute)
        if self.schedule == "interleaved":
            return interleaved_one_f_one_b(
                self.stages, self.microbatches, self.chunks, recompute=self.recompute
            )
        return one_f_one_b(self.stages, self.microbatches, recompute=self.recompute)
