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

import atexit
import contextlib
import logging
import math
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Literal

from perwatt.errors import ConfigError, DeviceError, NoPermissionError, PerwattError

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


# ---------------------------------------------------------------------- the worker process
def _journal(path: str | None, text: str) -> None:
    if path is None:
        return
    try:
        with open(path, "a") as f:
            f.write(f"{time.time():.6f} {text}\n")
            f.flush()
    except OSError as e:  # an audit trail must never stop the clocks from being restored
        log.warning("cannot write clock journal %s: %s", path, e)


def _worker_main(
    conn: Any,
    nvml_factory: Callable[[], Any] | None,
    gpu_index: int,
    journal: str | None,
    parent_pid: int,
) -> None:
    """Runs in the clock process. Applies 'set' messages, restores on stop/EOF/parent death."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def _term(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _term)
    from perwatt.meter.nvml import NVMLSession

    try:
        session = NVMLSession([gpu_index], nvml=nvml_factory() if nvml_factory else None)
    except PerwattError as e:
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    gpu = session.gpus[0]
    current: int | None = None
    try:
        _journal(journal, "ready")
        conn.send(("ready",))
        while True:
            if conn.poll(0.2):
                try:
                    msg = conn.recv()
                except EOFError:
                    _journal(journal, "parent-gone")
                    break
                if msg[0] == "stop":
                    break
                if msg[0] == "set" and msg[1] != current:
                    try:
                        gpu.lock_sm_clocks(msg[1], msg[1])
                        current = msg[1]
                        _journal(journal, f"lock {msg[1]}")
                    except PerwattError as e:
                        with contextlib.suppress(OSError):
                            conn.send(("error", f"locking {msg[1]} MHz failed: {e}"))
            elif os.getppid() != parent_pid:
                _journal(journal, "parent-gone")
                break
    finally:
        try:
            gpu.reset_sm_clocks()
            _journal(journal, "reset")
        except PerwattError as e:
            _journal(journal, f"reset-failed {e}")
        session.close()


# ---------------------------------------------------------------------- the controller
class FrequencyController:
    """Applies one stage's frequency plan on one GPU; see the module docstring.

    ``plan``: this stage's ``(instruction, microbatch, freq_mhz)`` entries in schedule order
    (``FrequencyPlan`` per stage; use :meth:`from_plan`). Call :meth:`on_instruction_begin`
    before each forward/backward (or attach with
    :func:`perwatt.train.profiler.attach_to_pipeline_stage`) and :meth:`on_iteration_end`
    after each iteration.
    """

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
        self.gpu_index = gpu_index
        self.allow_clock_changes = allow_clock_changes
        self.dry_run = dry_run
        self.unsupported = unsupported
        self.nvml_factory = nvml_factory
        self.journal_path = None if journal_path is None else str(journal_path)
        self.start_timeout_s = start_timeout_s
        self.install_signal_handlers = install_signal_handlers
        self._supported = None if supported_clocks_mhz is None else tuple(supported_clocks_mhz)
        self.changes: list[ClockChange] = []
        self.errors: list[str] = []
        self.snapped: dict[int, int] = {}
        self._index = 0
        self._current: int | None = None
        self._proc: Any = None
        self._conn: Any = None
        self._started = False
        self._closed = False
        self._old_handlers: dict[int, Any] = {}
        self._lock = threading.Lock()
        # Forked children (DataLoader workers) inherit handlers and the pipe: only the process
        # that started the worker may stop it.
        self._owner_pid = os.getpid()

    @classmethod
    def from_plan(cls, plan: Any, stage: int, **kwargs: Any) -> FrequencyController:
        """Build from the planner's per-stage plan; a stage the plan lacks is a clear error."""
        return cls(stage_plan(plan, stage), **kwargs)

    # ------------------------------------------------------------------ start
    def _read_only_check(self) -> tuple[tuple[int, ...], str | None]:
        """Supported clocks and, if clocks cannot be changed, why. Changes nothing."""
        from perwatt.meter.nvml import NVMLSession

        factory = self.nvml_factory
        with NVMLSession([self.gpu_index], nvml=factory() if factory else None) as s:
            gpu = s.gpus[0]
            supported = gpu.supported_sm_clocks_mhz()
            check = gpu.can_set_clocks()
        return supported, (None if check.allowed else check.reason)

    def _validate(self, supported: Sequence[int]) -> None:
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
        if self._started:
            return self
        if self.dry_run:
            if self._supported is not None:
                self._validate(self._supported)
            self._started = True
            log.info("dry run: %d plan entries, no GPU will be touched", len(self.plan))
            return self
        # The flag first, before NVML is even opened: the refusal must not depend on whether
        # this machine has a driver or the privilege (a dry run elsewhere gives the same answer).
        if not self.allow_clock_changes:
            raise ConfigError(
                f"refusing to change GPU clocks: missing the explicit flag {FLAG_HINT}"
            )
        supported, why_not = self._read_only_check()
        if why_not is not None:
            raise NoPermissionError(
                f"refusing to change GPU clocks: missing the privilege to change clocks ({why_not})"
            )
        self._validate(self._supported or supported)
        ctx = multiprocessing.get_context("spawn")
        parent_conn, child_conn = ctx.Pipe()
        self._proc = ctx.Process(
            target=_worker_main,
            args=(child_conn, self.nvml_factory, self.gpu_index, self.journal_path, os.getpid()),
            name="perwatt-clock-worker",
            daemon=True,
        )
        self._proc.start()
        child_conn.close()
        self._conn = parent_conn
        if not parent_conn.poll(self.start_timeout_s):
            self._kill_worker()
            raise DeviceError(f"the clock worker did not start within {self.start_timeout_s:g} s")
        msg = parent_conn.recv()
        if msg[0] != "ready":
            self._kill_worker()
            raise DeviceError(f"the clock worker could not open the GPU: {msg[1]}")
        self._started = True
        self._owner_pid = os.getpid()
        atexit.register(self.close)
        if self.install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        return self

    def __enter__(self) -> FrequencyController:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

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

    def _drain(self, *, stopping: bool = False) -> None:
        conn = self._conn
        while conn is not None:
            try:
                if not conn.poll(0):
                    break
                msg = conn.recv()
            except (EOFError, OSError):
                self._conn = None
                if stopping:  # the worker exits after a stop: EOF is expected
                    break
                self.errors.append("the clock worker exited unexpectedly")
                log.warning("the clock worker exited unexpectedly; clocks are no longer controlled")
                break
            if msg[0] == "error":
                self.errors.append(msg[1])
                log.warning("clock worker: %s", msg[1])

    # ------------------------------------------------------------------ stop
    def close(self) -> None:
        """Restore the default clocks and stop the worker. Safe to call more than once."""
        if os.getpid() != self._owner_pid:
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._proc is not None:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send(("stop",))
            self._proc.join(timeout=10.0)
            if self._proc.is_alive():
                self._kill_worker()
            with contextlib.suppress(Exception):
                self._drain(stopping=True)
        for sig, old in self._old_handlers.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, old)
        self._old_handlers.clear()
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)

    def _kill_worker(self) -> None:
        proc = self._proc
        if proc is None:
            return
        proc.terminate()  # SIGTERM: the worker restores the clocks on its way out
        proc.join(timeout=5.0)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5.0)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        old = self._old_handlers.get(signum, signal.SIG_DFL)
        self.close()
        if callable(old):
            old(signum, frame)
        elif old == signal.SIG_IGN:
            return
        else:  # SIG_DFL: die the way the signal would have killed us
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    @property
    def worker_pid(self) -> int | None:
        return None if self._proc is None else int(self._proc.pid)
