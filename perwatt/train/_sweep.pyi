"""Type stub of the compiled frontier sweep (perwatt/train/_sweep.c)."""

from _typeshed import ReadableBuffer as Buffer

def sweep(
    order: Buffer,
    pred_ptr: Buffer,
    pred_idx: Buffer,
    succ_ptr: Buffer,
    succ_idx: Buffer,
    edge_u: Buffer,
    edge_v: Buffer,
    qmin: Buffer,
    qmax: Buffer,
    flat: Buffer,
    base: Buffer,
    stop_q: int,
    /,
) -> tuple[bytes, bytes, bytes, bytes, bytes, bytes, bool]: ...
