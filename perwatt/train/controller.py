"""Apply a frequency plan during training: lock the SM clock before each forward/backward.

::

    training process                                   clock worker (separate process)
    ───────────────────────────────────────────        ─────────────────────────────────
    on_instruction_begin("forward")                    NVML session on the same GPU
      plan says 1230 MHz, last sent 1410  ──pipe──▶    nvmlDeviceSetGpuLockedClocks(1230,1230)
      (returns at once: one pipe write)                 (~ms; training does not wait)
    on_instruction_begin("backward")
      plan says 1230 MHz again: nothing sent
    close() / exception / SIGTERM / SIGINT  ──stop──▶   nvmlDeviceResetGpuLockedClocks, exit
    process killed (SIGKILL, OOM)                      pipe EOF or parent gone → reset, exit

The process, the restore guarantees and the safety rails below belong to
:class:`perwatt.meter.actuation.GPUActuator`, perwatt's one module that changes a GPU (it also sets
power limits for ``perwatt experiment``); this class is an actuator that follows a plan.

Why a process: an NVML clock change takes milliseconds and holds a driver lock; doing it on the
training thread would stall every instruction that changes frequency. A thread would also share
the GIL and die with the process without restoring anything; a separate process can restore the
default clocks even when the training process is killed.

Safety rails:

* It refuses to start unless asked explicitly (``allow_clock_changes=True``, CLI
  ``--i-understand-this-changes-clocks``; checked first, before NVML is opened) **and** the
  process may change clocks (root or CAP_SYS_ADMIN, then checked read-only through NVML). The
  error says which is missing.
* ``dry_run=True`` touches no GPU and needs neither: every change it would make is logged (logger
  ``perwatt.train.controller``, INFO) and kept in :attr:`FrequencyController.changes`.
* Frequencies the GPU does not support are an error naming them, unless
  ``unsupported="snap"``: each is then replaced by the nearest supported clock (ties go to the
  higher one, which never slows the plan down) and a warning is logged per distinct frequency.
* Default clocks are restored on :meth:`close` (also via ``with``), on an exception inside the
  ``with`` block, on SIGTERM/SIGINT (handlers installed when started from the main thread; the
  previous handler runs afterwards), at interpreter exit (``atexit``), and by the worker itself
  if the training process dies. The worker ignores SIGINT so Ctrl-C in a terminal cannot kill
  it before the parent asks it to restore.

The worker uses the ``spawn`` start method: forking a process that has initialised CUDA is unsafe,
and spawn inherits no file descriptors, so the pipe reports EOF when the parent dies. Scripts that
start a controller need the usual ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from perwatt.errors import ConfigError, DeviceError
from perwatt.meter.actuation import GPUActuator, GPUFacts

log = logging.getLogger(__name__)

FLAG_HINT = "allow_clock_changes=True (CLI: --i-understand-this-changes-clocks)"

PlanEntry = tuple[str, int, int]  # (instruction, microbatch, freq_mhz), schedule order


@dataclass(frozen=True, slots=True, kw_only=True)
class ClockChange:
    """One change the controller made (or, in a dry run, would have made)."""

    index: int  # position in the plan (instruction count since the iteration began)
    instruction: str
    microbatch: int
    freq_mhz: int
    dry_run: bool


def _parse_plan(plan: Sequence[Any]) -> list[PlanEntry]:
    out: list[PlanEntry] = []
    for i, e in enumerate(plan):
        try:
            inst, mb, f = e
        except (TypeError, ValueError):
            raise ConfigError(
                f"plan entry {i} is {e!r}; expected (instruction, microbatch, freq_mhz)"
            ) from None
        if inst not in ("forward", "backward"):
            raise ConfigError(f"plan entry {i}: instruction must be forward/backward, got {inst!r}")
        if not (isinstance(f, (int, float)) and math.isfinite(f) and f > 0):
            raise ConfigError(f"plan entry {i}: frequency must be a positive number, got {f!r}")
        out.append((inst, int(mb), round(f)))
    if not out:
        raise ConfigError("the frequency plan for this stage is empty")
    return out


def stage_plan(plan: Any, stage: int) -> list[PlanEntry]:
    """This stage's (instruction, microbatch, freq_mhz) list from the planner's
    :class:`~perwatt.train.frontier.FrequencyPlan` or from ``{stage: entries}``."""
    if hasattr(plan, "for_stage") and hasattr(plan, "stages"):
        n = len(plan.stages)
        if not 0 <= stage < n:
            raise ConfigError(
                f"the plan has stages 0..{n - 1} but this is stage {stage}: "
                "plan and pipeline do not match"
            )
        return _parse_plan(plan.for_stage(stage))
    if not isinstance(plan, Mapping):
        raise ConfigError(f"cannot read per-stage entries from {type(plan).__name__}")
    keys = sorted(plan)
    if stage not in plan:
        raise ConfigError(
            f"the plan has stages {keys[0]}..{keys[-1]} but this is stage {stage}: "
            "plan and pipeline do not match"
            if keys
            else "the plan has no stages"
        )
    return _parse_plan(plan[stage])


def snap_frequency(freq_mhz: int, supported: Sequence[int]) -> int:
    """Nearest supported clock; ties go to the higher clock (never slower than asked)."""
    return min(supported, key=lambda s: (abs(s - freq_mhz), -s))


# ---------------------------------------------------------------------- the controller
class FrequencyController(GPUActuator):
    """Applies one stage's frequency plan on one GPU; see the module docstring.

    ``plan``: this stage's ``(instruction, microbatch, freq_mhz)`` entries in schedule order
    (``FrequencyPlan`` per stage; use :meth:`from_plan`). Call :meth:`on_instruction_begin`
    before each forward/backward (or attach with
    :func:`perwatt.train.profiler.attach_to_pipeline_stage`) and :meth:`on_iteration_end`
    after each iteration.
    """

    what = "GPU clocks"
    flag_hint = FLAG_HINT

    def __init__(
        self,
        plan: Sequence[Any],
        *,
        gpu_index: int = 0,
        allow_clock_changes: bool = False,
        dry_run: bool = False,
        unsupported: Literal["error", "snap"] = "error",
        supported_clocks_mhz: Sequence[int] | None = None,
        nvml_factory: Callable[[], Any] | None = None,
        journal_path: str | Path | None = None,
        start_timeout_s: float = 60.0,
        install_signal_handlers: bool = True,
    ) -> None:
        if unsupported not in ("error", "snap"):
            raise ConfigError(f"unsupported must be 'error' or 'snap', got {unsupported!r}")
        self.plan = _parse_plan(plan)
        super().__init__(
            gpu_indices=(gpu_index,),
            allow_changes=allow_clock_changes,
            dry_run=dry_run,
            nvml_factory=nvml_factory,
            journal_path=journal_path,
            start_timeout_s=start_timeout_s,
            install_signal_handlers=install_signal_handlers,
        )
        self.gpu_index = gpu_index
        self.allow_clock_changes = allow_clock_changes
        self.unsupported = unsupported
        self._supported = None if supported_clocks_mhz is None else tuple(supported_clocks_mhz)
        self.changes: list[ClockChange] = []
        self.snapped: dict[int, int] = {}
        self._index = 0
        self._current: int | None = None

    @classmethod
    def from_plan(cls, plan: Any, stage: int, **kwargs: Any) -> FrequencyController:
        """Build from the planner's per-stage plan; a stage the plan lacks is a clear error."""
        return cls(stage_plan(plan, stage), **kwargs)

    # ------------------------------------------------------------------ start
    def _on_dry_run_start(self) -> None:
        if self._supported is not None:
            self._check_clocks(self._supported)
        log.info("dry run: %d plan entries, no GPU will be touched", len(self.plan))

    def _validate(self, facts: Sequence[GPUFacts]) -> None:
        supported = self._supported or facts[0].supported_sm_clocks_mhz
        if not supported:
            raise DeviceError(
                f"gpu{self.gpu_index}: the driver lists no supported SM clocks, so the plan's "
                "clocks cannot be checked; pass supported_clocks_mhz"
            )
        self._check_clocks(supported)

    def _check_clocks(self, supported: Sequence[int]) -> None:
        bad = sorted({f for _, _, f in self.plan if f not in supported}, reverse=True)
        if not bad:
            return
        lo, hi = min(supported), max(supported)
        if self.unsupported == "error":
            raise ConfigError(
                f"the plan uses {len(bad)} SM clock(s) this GPU does not support: "
                f"{', '.join(map(str, bad[:8]))}{' …' if len(bad) > 8 else ''} MHz "
                f"(supported {lo}..{hi} MHz); re-plan with this GPU's profile or pass "
                "unsupported='snap' to use the nearest supported clock"
            )
        for f in bad:
            self.snapped[f] = snap_frequency(f, supported)
            log.warning("plan clock %d MHz is not supported; using %d MHz", f, self.snapped[f])
        self.plan = [(i, m, self.snapped.get(f, f)) for i, m, f in self.plan]

    def start(self) -> FrequencyController:
        """Check flag and privilege, validate the plan's clocks, start the worker."""
        super().start()
        return self

    def __enter__(self) -> FrequencyController:
        return self.start()

    # ------------------------------------------------------------------ hooks
    def on_instruction_begin(self, name: str) -> None:
        """Before each forward/backward: lock this entry's clock if it differs from the last."""
        if not self._started or self._closed:
            raise ConfigError("FrequencyController is not running: call start() first")
        if self._index >= len(self.plan):
            raise ConfigError(
                f"the plan has {len(self.plan)} instructions per iteration but the schedule ran "
                f"more; call on_iteration_end() after each iteration (plan/schedule mismatch?)"
            )
        inst, mb, f = self.plan[self._index]
        if inst != name:
            raise ConfigError(
                f"plan/schedule mismatch at instruction {self._index}: the plan expects {inst} "
                f"of microbatch {mb}, the schedule ran {name}; plan with the same schedule, "
                "stage and microbatch count"
            )
        if f != self._current:
            self._current = f
            self.changes.append(
                ClockChange(
                    index=self._index,
                    instruction=inst,
                    microbatch=mb,
                    freq_mhz=f,
                    dry_run=self.dry_run,
                )
            )
            if self.dry_run:
                log.info("dry run: would lock SM clock to %d MHz before %s %d", f, inst, mb)
            else:
                # Fire and forget: training must not wait for the driver (module docstring).
                self._conn.send(("set", f))
        self._index += 1

    def on_instruction_end(self, name: str) -> None:
        """Nothing to do at the end of an instruction; present so hooks are symmetric."""

    def on_iteration_end(self) -> None:
        """After each iteration: restart the plan and report worker errors as log warnings."""
        if self._index not in (0, len(self.plan)):
            raise ConfigError(
                f"iteration ended after {self._index} of the plan's {len(self.plan)} "
                "instructions: plan/schedule mismatch"
            )
        self._index = 0
        self._drain()
