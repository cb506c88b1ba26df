"""Session-wide test set-up."""

from __future__ import annotations

import signal


def pytest_sessionstart() -> None:
    """Give Ctrl-C its normal meaning in this process and in every process the tests start.

    A shell that starts a job in the background (``cmd &`` in a script, ``nohup``) sets SIGINT
    to *ignored*, and an ignored signal stays ignored across ``exec``: Python then never raises
    KeyboardInterrupt, and the tests that check what perwatt does on Ctrl-C (keep partial
    results, restore clocks) would fail for a reason that is not perwatt's. A handled signal is
    reset to its default on ``exec``, so installing Python's handler here fixes the children too.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
