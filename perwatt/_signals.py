"""SIGTERM means what Ctrl-C means: stop, keep what was measured, say why.

``timeout``, Slurm, systemd and Kubernetes stop a job with SIGTERM, whose default action ends the
process at once: no ``finally`` block runs, so a result file stays ``running`` and the energy of
the work already done is lost. :func:`sigterm_as_interrupt` turns SIGTERM into :class:`Terminated`,
a ``KeyboardInterrupt``, so every path that keeps partial results on Ctrl-C keeps them on SIGTERM
too, with no second copy of that code::

    SIGINT  (Ctrl-C, kill -INT)  ──▶ KeyboardInterrupt ─┐
    SIGTERM (timeout, scheduler) ──▶ Terminated ────────┴─▶ partial result, reason, exit 130 / 143

:func:`interrupt_reason` and :func:`interrupt_exit_code` tell the two apart afterwards (also
through an exception raised ``from`` one of them). :func:`interrupts_deferred` holds both signals
while a final file is written, so a second signal during clean-up cannot cut it short.

Inside ``asyncio.run`` (Python >= 3.11), which handles Ctrl-C by cancelling its main task so that
every coroutine unwinds, SIGTERM takes that same road rather than raising in a random task.

Handlers can only be installed from the main thread; elsewhere these are no-ops.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import Any, TypeAlias

_Handler: TypeAlias = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None

#: Shell convention: a process ended by signal N exits 128 + N.
EXIT_CTRL_C = 128 + signal.SIGINT  # 130
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143


class Terminated(KeyboardInterrupt):
    """SIGTERM reached perwatt (``timeout``, ``kill``, a job scheduler).

    A ``KeyboardInterrupt``, so code that keeps partial results on Ctrl-C does so here too.
    """


class _State:
    depth = 0  # nested sigterm_as_interrupt blocks
    handed_to_asyncio = False  # a SIGTERM went the way of asyncio's Ctrl-C (see _on_sigterm)


def _is_asyncio_sigint(handler: object) -> bool:
    """Whether ``handler`` is the SIGINT handler ``asyncio.run`` installs (Python >= 3.11).

    It is ``functools.partial(runner._on_sigint, main_task=...)``: on Ctrl-C it cancels the main
    task, so every coroutine's ``finally`` runs, and raises ``KeyboardInterrupt`` afterwards.
    """
    func = getattr(handler, "func", None)
    owner = getattr(func, "__self__", None)
    return getattr(func, "__name__", "") == "_on_sigint" and type(owner).__name__ == "Runner"


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    on_int = signal.getsignal(signal.SIGINT)
    if callable(on_int) and _is_asyncio_sigint(on_int):
        # An exception raised here would surface inside whichever task was running and leave
        # the others pending; Ctrl-C's road (cancel, unwind, then KeyboardInterrupt) is clean.
        _State.handed_to_asyncio = True
        on_int(signal.SIGINT, frame)
        return
    raise Terminated("interrupted by SIGTERM")


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated`; the previous handler comes back after.

    A SIGTERM that was ignored when perwatt started (the parent asked for that) stays ignored.
    """
    if not _on_main_thread() or signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        yield
        return
    if _State.depth == 0:
        _State.handed_to_asyncio = False
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
        if _State.depth == 0:  # what an interrupt was is asked inside; not after
            _State.handed_to_asyncio = False
        # None: the old handler was not installed from Python; the default is what it was.
        signal.signal(signal.SIGTERM, signal.SIG_DFL if old is None else old)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def was_sigterm(exc: BaseException) -> bool:
    """Whether ``exc``, or an exception it was raised from, is :class:`Terminated`, or came from
    asyncio's Ctrl-C road that a SIGTERM took (its ``KeyboardInterrupt`` is asyncio's own)."""
    if any(isinstance(e, Terminated) for e in _chain(exc)):
        return True
    return _State.handed_to_asyncio and isinstance(exc, KeyboardInterrupt)


def interrupt_reason(exc: BaseException) -> str:
    """``interrupted by SIGTERM`` or ``interrupted by Ctrl-C``: the words a partial result keeps."""
    return "interrupted by SIGTERM" if was_sigterm(exc) else "interrupted by Ctrl-C"


def interrupt_exit_code(exc: BaseException) -> int:
    """143 after SIGTERM, 130 after Ctrl-C (128 + the signal, as a shell reports it)."""
    return EXIT_SIGTERM if was_sigterm(exc) else EXIT_CTRL_C


class interrupts_deferred:  # lower case: used like a function, ``with interrupts_deferred():``
    """Hold Ctrl-C and SIGTERM while a final file is written; act on a held one afterwards.

    If the block runs while an interrupt is already being handled (clean-up after the first
    signal), a held second signal is dropped: the run is stopping anyway, and the file it
    would have cut short is now complete. Otherwise the held signal is raised on exit, or
    dropped too with ``drop=True`` (the work is done and only its report is left).
    """

    __slots__ = ("_drop", "_held", "_old")

    def __init__(self, *, drop: bool = False) -> None:
        self._drop = drop
        self._held: list[int] = []
        self._old: dict[int, _Handler] = {}

    def _hold(self, signum: int, frame: FrameType | None) -> None:
        self._held.append(signum)

    def __enter__(self) -> None:
        if not _on_main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) not in (signal.SIG_IGN, signal.SIG_DFL, None):
                self._old[sig] = signal.signal(sig, self._hold)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
        held, self._held = self._held, []
        if not held or self._drop or exc is not None or sys.exc_info()[1] is not None:
            return
        first = held[0]
        if first == signal.SIGTERM:
            raise Terminated("interrupted by SIGTERM")
        raise KeyboardInterrupt


__all__ = [
    "EXIT_CTRL_C",
    "EXIT_SIGTERM",
    "Terminated",
    "interrupt_exit_code",
    "interrupt_reason",
    "interrupts_deferred",
    "sigterm_as_interrupt",
    "was_sigterm",
]
