"""The one place perwatt changes a GPU: locked SM clocks and power limits, from a separate process.

::

    perwatt process (training, experiment)            actuation worker (separate process)
    ───────────────────────────────────────           ─────────────────────────────────────
    start(): flag? privilege? values in range?         NVML session on the same GPU(s);
                                                       remembers each GPU's power limit
    lock_sm_clocks(1230)               ──pipe──▶       nvmlDeviceSetGpuLockedClocks(1230,1230)
    set_power_limit_w(300, wait=True)  ──pipe──▶       nvmlDeviceSetPowerManagementLimit(300 W)
                                       ◀──ack───       (the caller measures only once applied)
    close() / exception / SIGTERM / SIGINT ──stop──▶   limit back to what it was, clocks reset
    process killed (SIGKILL, OOM)                      pipe EOF or parent gone → same, exit

Why a process: an NVML change takes milliseconds and holds a driver lock; doing it on the
caller's thread would stall training instructions. A thread would also share the GIL and die
with the process without restoring anything; a separate process restores the GPU even when
perwatt is killed with SIGKILL.

Safety rails (the same for :class:`perwatt.train.controller.FrequencyController`, which is a
:class:`GPUActuator` that follows a frequency plan, and for ``perwatt experiment``):

* Nothing starts unless asked explicitly (``allow_changes=True``; CLI
  ``--i-understand-this-changes-clocks``), checked first, before NVML is opened, **and** the
  process may change clocks and limits (root or CAP_SYS_ADMIN, checked read-only through NVML).
  The error says which is missing.
* Values are checked against the GPU before the worker starts: power limits against
  ``nvmlDeviceGetPowerManagementLimitConstraints``, clocks against the supported SM clocks
  (:func:`check_gpu_settings`, read-only).
* ``dry_run=True`` touches no GPU and needs neither: every change it would make is logged and
  kept in :attr:`GPUActuator.actions`.
* The GPU is restored on :meth:`GPUActuator.close` (also via ``with``), on an exception inside
  the ``with`` block, on SIGTERM/SIGINT (handlers installed when started from the main thread;
  the previous handler runs afterwards), at interpreter exit (``atexit``), and by the worker
  itself if the parent dies. The worker ignores SIGINT so Ctrl-C in a terminal cannot kill it
  before the parent asks it to restore. Power limits go back to the value each GPU had when the
  worker started (not the default: an admin's own limit is respected); clocks are reset to the
  driver's default policy.
* Every change is appended to an optional journal file (``time text`` per line: ``ready``,
  ``lock 1230``, ``limit 300``, ``limit-restored 700``, ``parent-gone``, ``reset``), an audit
  trail that also lets tests see what a killed process's worker did.

The worker uses the ``spawn`` start method: forking a process that has initialised CUDA is unsafe,
and spawn inherits no file descriptors, so the pipe reports EOF when the parent dies. Scripts that
start an actuator need the usual ``if __name__ == "__main__":`` guard.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from perwatt.errors import ConfigError, DeviceError, NoPermissionError, PerwattError
from perwatt.meter.detect import nvml_module
from perwatt.meter.nvml import NVMLSession

log = logging.getLogger(__name__)

FLAG_HINT = "allow_changes=True (CLI: --i-understand-this-changes-clocks)"


@dataclass(frozen=True, slots=True, kw_only=True)
class GPUFacts:
    """What the read-only check found on one GPU."""

    index: int
    name: str
    power_limit_w: float  # nan: not readable
    power_limit_range_w: tuple[float, float] | None  # None: the GPU has no settable limit
    supported_sm_clocks_mhz: tuple[int, ...]
    can_change: bool
    why_not: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Action:
    """One change the actuator made (or, in a dry run, would have made)."""

    kind: str  # "lock_clocks" | "reset_clocks" | "power_limit" | "restore_power_limit"
    value: float | None
    dry_run: bool


def _open_session(nvml_factory: Callable[[], Any] | None, indices: Sequence[int]) -> Any:
    # No factory: PERWATT_FAKE_NVML (the demo/test hook) when set, else the real pynvml.
    return NVMLSession(list(indices), nvml=nvml_factory() if nvml_factory else nvml_module())


def read_gpu_facts(
    indices: Sequence[int], *, nvml_factory: Callable[[], Any] | None = None
) -> tuple[GPUFacts, ...]:
    """Each GPU's power limit, its settable range, supported SM clocks and whether perwatt may
    change them. Read-only: changes nothing."""
    out: list[GPUFacts] = []
    with _open_session(nvml_factory, indices) as s:
        for gpu in s.gpus:
            try:
                rng: tuple[float, float] | None = gpu.power_limit_constraints_w()
            except DeviceError:
                rng = None
            try:
                clocks = gpu.supported_sm_clocks_mhz()
            except DeviceError:
                clocks = ()
            check = gpu.can_set_clocks()
            try:
                limit_w = gpu.power_limit_w()
            except DeviceError:
                limit_w = math.nan
            out.append(
                GPUFacts(
                    index=gpu.index,
                    name=gpu.name,
                    power_limit_w=limit_w,
                    power_limit_range_w=rng,
                    supported_sm_clocks_mhz=clocks,
                    can_change=check.allowed,
                    why_not=None if check.allowed else check.reason,
                )
            )
    return tuple(out)


def check_gpu_settings(
    facts: Sequence[GPUFacts],
    *,
    power_limits_w: Sequence[float] = (),
    sm_clocks_mhz: Sequence[int] = (),
    field: str = "power_limits_w",
    clock_field: str = "sm_clocks_mhz",
) -> None:
    """Raise :class:`ConfigError` naming ``field`` when a value is outside a GPU's range."""
    for f in facts:
        for w in power_limits_w:
            if not (isinstance(w, (int, float)) and math.isfinite(w)):
                raise ConfigError(f"{field}: {w!r} is not a number of watts")
            if f.power_limit_range_w is None:
                raise ConfigError(f"{field}: gpu{f.index} ({f.name}) has no settable power limit")
            lo, hi = f.power_limit_range_w
            if not lo <= w <= hi:
                raise ConfigError(
                    f"{field}: {w:g} W is outside gpu{f.index} ({f.name})'s allowed {lo:g}-{hi:g} W"
                )
        if sm_clocks_mhz and f.supported_sm_clocks_mhz:
            lo_c, hi_c = min(f.supported_sm_clocks_mhz), max(f.supported_sm_clocks_mhz)
            for c in sm_clocks_mhz:
                if not lo_c <= c <= hi_c:
                    raise ConfigError(
                        f"{clock_field}: {c} MHz is outside gpu{f.index} ({f.name})'s supported "
                        f"{lo_c}-{hi_c} MHz"
                    )


# ---------------------------------------------------------------------- the worker process
def _journal(path: str | None, text: str) -> None:
    if path is None:
        return
    try:
        with open(path, "a") as f:
            f.write(f"{time.time():.6f} {text}\n")
            f.flush()
    except OSError as e:  # an audit trail must never stop the GPU from being restored
        log.warning("cannot write actuation journal %s: %s", path, e)


def _worker_main(
    conn: Any,
    nvml_factory: Callable[[], Any] | None,
    gpu_indices: Sequence[int],
    journal: str | None,
    parent_pid: int,
) -> None:
    """Runs in the worker process. Applies changes; restores on stop, EOF or parent death.

    Messages: ``("set", mhz)`` lock clocks (no reply, the training hot path);
    ``("clocks", mhz, token)``, ``("limit", w, token)``, ``("reset-clocks", token)``,
    ``("restore-limit", token)`` reply ``("ok", token)`` or ``("error", text, token)``;
    ``("stop",)``.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def _term(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _term)
    try:
        session = _open_session(nvml_factory, gpu_indices)
        gpus = session.gpus
        original_w: list[float | None] = []
        for g in gpus:
            try:
                original_w.append(g.power_limit_w())
            except DeviceError:  # no readable limit (old GPUs): nothing to restore later
                original_w.append(None)
    except PerwattError as e:
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    current: int | None = None
    limit_changed = False

    def restore_limits() -> None:
        nonlocal limit_changed
        if not limit_changed:
            return
        for g, w in zip(gpus, original_w, strict=True):
            if w is None:
                continue
            try:
                g.set_power_limit_w(w)
                _journal(journal, f"limit-restored {w:g}")
            except PerwattError as e:
                _journal(journal, f"limit-restore-failed {e}")
        limit_changed = False

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
                kind = msg[0]
                if kind == "stop":
                    break
                if kind == "set":  # the training controller's fire-and-forget clock lock
                    if msg[1] == current:
                        continue
                    try:
                        for g in gpus:
                            g.lock_sm_clocks(msg[1], msg[1])
                        current = msg[1]
                        _journal(journal, f"lock {msg[1]}")
                    except PerwattError as e:
                        with contextlib.suppress(OSError):
                            conn.send(("error", f"locking {msg[1]} MHz failed: {e}"))
                    continue
                token = msg[-1]
                try:
                    if kind == "clocks":
                        for g in gpus:
                            g.lock_sm_clocks(msg[1], msg[1])
                        current = msg[1]
                        _journal(journal, f"lock {msg[1]}")
                    elif kind == "limit":
                        limit_changed = True
                        for g in gpus:
                            g.set_power_limit_w(msg[1])
                        _journal(journal, f"limit {msg[1]:g}")
                    elif kind == "reset-clocks":
                        for g in gpus:
                            g.reset_sm_clocks()
                        current = None
                        _journal(journal, "reset")
                    elif kind == "restore-limit":
                        restore_limits()
                    conn.send(("ok", token))
                except PerwattError as e:
                    with contextlib.suppress(OSError):
                        conn.send(("error", f"{kind} {msg[1:-1]} failed: {e}", token))
            elif os.getppid() != parent_pid:
                _journal(journal, "parent-gone")
                break
    finally:
        restore_limits()
        try:
            for g in gpus:
                g.reset_sm_clocks()
            _journal(journal, "reset")
        except PerwattError as e:
            _journal(journal, f"reset-failed {e}")
        session.close()


# ---------------------------------------------------------------------- the actuator
class GPUActuator:
    """Changes clocks and power limits of ``gpu_indices`` from a worker process; see the module
    docstring for the guarantees. Use as a context manager or call :meth:`start`/:meth:`close`.

    ``power_limits_w``/``sm_clocks_mhz``: every value the caller will ask for, checked against
    the GPUs in :meth:`start` before the worker exists (out of range: :class:`ConfigError`).
    """

    #: What the refusals call the change (the training controller says "GPU clocks").
    what = "GPU clocks and power limits"
    flag_hint = FLAG_HINT

    def __init__(
        self,
        *,
        gpu_indices: Sequence[int] = (0,),
        allow_changes: bool = False,
        dry_run: bool = False,
        power_limits_w: Sequence[float] = (),
        sm_clocks_mhz: Sequence[int] = (),
        nvml_factory: Callable[[], Any] | None = None,
        journal_path: str | Path | None = None,
        start_timeout_s: float = 60.0,
        install_signal_handlers: bool = True,
        reply_timeout_s: float = 30.0,
    ) -> None:
        if not gpu_indices:
            raise ConfigError("name at least one GPU to change")
        self.gpu_indices = tuple(gpu_indices)
        self.allow_changes = allow_changes
        self.dry_run = dry_run
        self.power_limits_w = tuple(power_limits_w)
        self.sm_clocks_mhz = tuple(sm_clocks_mhz)
        self.nvml_factory = nvml_factory
        self.journal_path = None if journal_path is None else str(journal_path)
        self.start_timeout_s = start_timeout_s
        self.install_signal_handlers = install_signal_handlers
        self.reply_timeout_s = reply_timeout_s
        self.facts: tuple[GPUFacts, ...] = ()
        self.actions: list[Action] = []
        self.errors: list[str] = []
        self._proc: Any = None
        self._conn: Any = None
        self._started = False
        self._closed = False
        self._old_handlers: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._token = 0
        # Forked children (DataLoader workers) inherit handlers and the pipe: only the process
        # that started the worker may stop it.
        self._owner_pid = os.getpid()

    # ------------------------------------------------------------------ hooks for subclasses
    def _on_dry_run_start(self) -> None:
        log.info("dry run: no GPU will be touched")

    def _validate(self, facts: Sequence[GPUFacts]) -> None:
        check_gpu_settings(
            facts, power_limits_w=self.power_limits_w, sm_clocks_mhz=self.sm_clocks_mhz
        )

    # ------------------------------------------------------------------ start
    def _read_only_check(self) -> tuple[tuple[GPUFacts, ...], str | None]:
        facts = read_gpu_facts(self.gpu_indices, nvml_factory=self.nvml_factory)
        why = next((f"gpu{f.index}: {f.why_not}" for f in facts if not f.can_change), None)
        if len(facts) == 1 and why is not None:
            why = facts[0].why_not
        return facts, why

    def start(self) -> GPUActuator:
        """Check flag and privilege, validate the values, start the worker."""
        if self._started:
            return self
        if self.dry_run:
            self._started = True
            self._on_dry_run_start()
            return self
        # The flag first, before NVML is even opened: the refusal must not depend on whether
        # this machine has a driver or the privilege (a dry run elsewhere gives the same answer).
        if not self.allow_changes:
            raise ConfigError(
                f"refusing to change {self.what}: missing the explicit flag {self.flag_hint}"
            )
        facts, why_not = self._read_only_check()
        if why_not is not None:
            raise NoPermissionError(
                f"refusing to change {self.what}: missing the privilege to change clocks ({why_not})"
            )
        self.facts = facts
        self._validate(facts)
        ctx = multiprocessing.get_context("spawn")
        parent_conn, child_conn = ctx.Pipe()
        self._proc = ctx.Process(
            target=_worker_main,
            args=(child_conn, self.nvml_factory, self.gpu_indices, self.journal_path, os.getpid()),
            name="perwatt-actuation-worker",
            daemon=True,
        )
        self._proc.start()
        child_conn.close()
        self._conn = parent_conn
        if not parent_conn.poll(self.start_timeout_s):
            self._kill_worker()
            raise DeviceError(
                f"the actuation worker did not start within {self.start_timeout_s:g} s"
            )
        msg = parent_conn.recv()
        if msg[0] != "ready":
            self._kill_worker()
            raise DeviceError(f"the actuation worker could not open the GPU: {msg[1]}")
        self._started = True
        self._owner_pid = os.getpid()
        atexit.register(self.close)
        if self.install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        return self

    def __enter__(self) -> GPUActuator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ changes
    def _require_running(self) -> None:
        if not self._started or self._closed:
            raise ConfigError(f"{type(self).__name__} is not running: call start() first")

    def _request(self, *msg: Any) -> None:
        """Send a change and wait until the worker applied it (or refused: DeviceError)."""
        self._token += 1
        token = self._token
        self._conn.send((*msg, token))
        deadline = time.monotonic() + self.reply_timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._conn.poll(left):
                raise DeviceError(f"the actuation worker did not answer {msg[0]} in time")
            try:
                reply = self._conn.recv()
            except (EOFError, OSError):
                raise DeviceError("the actuation worker exited unexpectedly") from None
            if reply[0] == "ok" and reply[1] == token:
                return
            if reply[0] == "error" and len(reply) == 3 and reply[2] == token:
                raise DeviceError(reply[1])
            if reply[0] == "error":  # an earlier fire-and-forget lock failed
                self.errors.append(reply[1])

    def set_power_limit_w(self, limit_w: float) -> None:
        """Set every GPU's power limit to ``limit_w``; returns once applied."""
        self._require_running()
        self._check_limit(limit_w)
        self.actions.append(Action(kind="power_limit", value=float(limit_w), dry_run=self.dry_run))
        if self.dry_run:
            log.info("dry run: would set the power limit to %g W", limit_w)
            return
        self._request("limit", float(limit_w))

    def restore_power_limit(self) -> None:
        """Put every GPU's power limit back to its value when the worker started."""
        self._require_running()
        self.actions.append(Action(kind="restore_power_limit", value=None, dry_run=self.dry_run))
        if self.dry_run:
            log.info("dry run: would restore the power limit")
            return
        self._request("restore-limit")

    def lock_sm_clocks(self, freq_mhz: int) -> None:
        """Lock every GPU's SM clock to ``freq_mhz``; returns once applied."""
        self._require_running()
        if self.sm_clocks_mhz and freq_mhz not in self.sm_clocks_mhz:
            raise ConfigError(f"{freq_mhz} MHz was not among the clocks checked at start")
        self.actions.append(Action(kind="lock_clocks", value=float(freq_mhz), dry_run=self.dry_run))
        if self.dry_run:
            log.info("dry run: would lock the SM clock to %d MHz", freq_mhz)
            return
        self._request("clocks", int(freq_mhz))

    def reset_sm_clocks(self) -> None:
        """Back to the driver's default clock policy."""
        self._require_running()
        self.actions.append(Action(kind="reset_clocks", value=None, dry_run=self.dry_run))
        if self.dry_run:
            log.info("dry run: would reset the SM clocks")
            return
        self._request("reset-clocks")

    def _check_limit(self, limit_w: float) -> None:
        if self.power_limits_w and limit_w not in self.power_limits_w:
            raise ConfigError(f"{limit_w:g} W was not among the power limits checked at start")

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
                self.errors.append("the actuation worker exited unexpectedly")
                log.warning("the actuation worker exited unexpectedly; the GPU is not controlled")
                break
            if msg[0] == "error":
                self.errors.append(msg[1])
                log.warning("actuation worker: %s", msg[1])

    # ------------------------------------------------------------------ stop
    def close(self) -> None:
        """Restore the GPU and stop the worker. Safe to call more than once."""
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
        proc.terminate()  # SIGTERM: the worker restores the GPU on its way out
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
    def running(self) -> bool:
        """Started and not closed: changes are accepted."""
        return self._started and not self._closed

    @property
    def worker_pid(self) -> int | None:
        return None if self._proc is None else int(self._proc.pid)


__all__ = [
    "FLAG_HINT",
    "Action",
    "GPUActuator",
    "GPUFacts",
    "check_gpu_settings",
    "read_gpu_facts",
]
