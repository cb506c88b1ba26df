"""Type stub of the compiled frontier sweep (perwatt/train/_sweep.c)."""

from collections.abc import Callable
from typing import Any

import numpy.typing as npt

def sweep(
    order: npt.NDArray[Any],
    pred_ptr: npt.NDArray[Any],
    pred_idx: npt.NDArray[Any],
    succ_ptr: npt.NDArray[Any],
    succ_idx: npt.NDArray[Any],
    edge_u: npt.NDArray[Any],
    edge_v: npt.NDArray[Any],
    qmin: npt.NDArray[Any],
    qmax: npt.NDArray[Any],
    flat: npt.NDArray[Any],
    base: npt.NDArray[Any],
    stop_q: int,
    progress: Callable[[int], object] | None = None,
    /,
) -> tuple[bytes, bytes, bytes, bytes, bytes, bytes, bool]: ...
