"""perwatt._signals: SIGTERM taken the road of Ctrl-C, in this process, with real signals."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest

from perwatt._signals import (
    EXIT_CTRL_C,
    EXIT_SIGTERM,
    Terminated,
    interrupt_exit_code,
    interrupt_reason,
    interrupts_deferred,
    sigterm_as_interrupt,
    was_sigterm,
)


def _term_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_raises_an_interrupt_inside_and_the_old_handler_comes_back() -> None:
    seen: list[int] = []
    old = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with pytest.raises(KeyboardInterrupt) as e, sigterm_as_interrupt():
            _term_self()
        assert isinstance(e.value, Terminated)
        assert interrupt_reason(e.value) == "interrupted by SIGTERM"
        assert interrupt_exit_code(e.value) == EXIT_SIGTERM == 143
        _term_self()  # outside: the previous handler again
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, old)


def test_an_ignored_sigterm_stays_ignored() -> None:
    old = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with sigterm_as_interrupt():
            _term_self()  # would raise Terminated if the handler had been replaced
    finally:
        signal.signal(signal.SIGTERM, old)


def test_reason_and_exit_code_follow_the_chain() -> None:
    ctrl_c = KeyboardInterrupt()
    assert interrupt_reason(ctrl_c) == "interrupted by Ctrl-C"
    assert interrupt_exit_code(ctrl_c) == EXIT_CTRL_C == 130
    try:
        try:
            raise Terminated
        except KeyboardInterrupt as e:
            raise KeyboardInterrupt("wrapper") from e
    except KeyboardInterrupt as wrapped:
        assert was_sigterm(wrapped)


def test_deferred_signal_is_raised_after_the_block() -> None:
    done = []
    with pytest.raises(Terminated), sigterm_as_interrupt(), interrupts_deferred():
        _term_self()
        done.append("write finished")
    assert done == ["write finished"]
    with pytest.raises(KeyboardInterrupt) as e, interrupts_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        done.append("again")
    assert not isinstance(e.value, Terminated) and done[-1] == "again"


def test_deferred_signal_is_dropped_in_clean_up_or_when_asked() -> None:
    with sigterm_as_interrupt():
        with interrupts_deferred(drop=True):
            _term_self()
        with pytest.raises(ValueError), interrupts_deferred():  # the first error stays the one
            _term_self()
            raise ValueError("first")
        with pytest.raises(Terminated, match="first"):
            try:
                raise Terminated("first")
            finally:
                with interrupts_deferred():  # clean-up after the first signal
                    _term_self()


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.run handles Ctrl-C from 3.11")
def test_sigterm_inside_asyncio_run_unwinds_every_task() -> None:
    """Raised inside a random task, the interrupt left the others pending ("Task was destroyed
    but it is pending"); asyncio's own Ctrl-C road cancels them all, then raises."""
    unwound: list[str] = []

    async def worker(name: str) -> None:
        try:
            await asyncio.sleep(30)
        finally:
            unwound.append(name)

    async def main() -> None:
        asyncio.get_running_loop().call_later(0.05, _term_self)
        await asyncio.gather(worker("a"), worker("b"))

    with sigterm_as_interrupt():
        with pytest.raises(KeyboardInterrupt) as e:
            asyncio.run(main())
        assert interrupt_reason(e.value) == "interrupted by SIGTERM"
    assert sorted(unwound) == ["a", "b"]
    assert interrupt_reason(KeyboardInterrupt()) == "interrupted by Ctrl-C"  # afterwards
