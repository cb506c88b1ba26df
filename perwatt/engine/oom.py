"""Is this exception the machine running out of memory? One answer for every engine path that
turns an out-of-memory into a one-line error naming the knobs (bench, serve, quantize)."""

from __future__ import annotations

import sys


def is_oom(e: BaseException) -> bool:
    """True for Python's :class:`MemoryError`, torch's CUDA ``OutOfMemoryError`` and the CPU
    allocator's failure, which torch raises as a plain :class:`RuntimeError`.

    torch is looked up in ``sys.modules``, not imported: an exception can only come from torch
    once torch is loaded, and this helper must not load it."""
    if isinstance(e, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None) if torch else None
    if oom is not None and isinstance(e, oom):
        return True
    # torch's CPU allocator raises a plain RuntimeError ("DefaultCPUAllocator: can't allocate
    # memory: ..." as of torch 2.13), not OutOfMemoryError, so match its text as well.
    text = str(e).lower()
    return isinstance(e, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text
    )
