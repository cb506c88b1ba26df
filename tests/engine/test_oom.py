"""One out-of-memory test for bench, serve and quantize."""

from __future__ import annotations

import torch

from perwatt.engine.oom import is_oom


def test_memory_errors_are_oom_and_other_errors_are_not() -> None:
    assert is_oom(MemoryError())
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 8 GB"))
    assert not is_oom(RuntimeError("shape mismatch"))
    assert not is_oom(ValueError("out of memory"))  # only the allocator's RuntimeError counts
