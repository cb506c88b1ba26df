"""Pipeline schedules: program order, dependencies, and agreement with lowtime's 1F1B."""

from __future__ import annotations

import numpy as np
import pytest

from perwatt.errors import ConfigError
from perwatt.train.schedule import (
    Node,
    Schedule,
    gpipe,
    interleaved_one_f_one_b,
    one_f_one_b,
    topological_order,
)


def _compact(sched: Schedule, stage: int) -> str:
    return " ".join(f"{n.instruction[0].upper()}{n.microbatch}" for n in sched.order[stage])


def test_1f1b_matches_the_textbook_diagram() -> None:
    s = one_f_one_b(4, 4)
    assert _compact(s, 0) == "F0 F1 F2 F3 B0 B1 B2 B3"
    assert _compact(s, 1) == "F0 F1 F2 B0 F3 B1 B2 B3"
    assert _compact(s, 2) == "F0 F1 B0 F2 B1 F3 B2 B3"
    assert _compact(s, 3) == "F0 B0 F1 B1 F2 B2 F3 B3"


def test_1f1b_fewer_microbatches_than_stages() -> None:
    s = one_f_one_b(4, 2)
    assert _compact(s, 0) == "F0 F1 B0 B1"
    assert _compact(s, 3) == "F0 B0 F1 B1"
    assert s.num_nodes == 16


@pytest.mark.parametrize(("stages", "mbs"), [(1, 1), (2, 5), (4, 4), (8, 12), (3, 7)])
def test_1f1b_matches_lowtime_synchronous_1f1b(stages: int, mbs: int) -> None:
    pytest.importorskip("lowtime")
    pytest.importorskip("networkx")
    from lowtime.perseus.schedule import Synchronous1F1B

    ours = one_f_one_b(stages, mbs)
    for s in range(stages):
        sched = Synchronous1F1B(
            num_stages=stages, num_micro_batches=mbs, stage_id=s, operation_spec_map={}
        )
        expected = []
        for step in range(2 * (mbs + stages - 1)):
            mb, is_fwd = sched._step_to_micro_batch(step)
            if 0 <= mb < mbs:
                expected.append(("forward" if is_fwd else "backward", mb))
        got = [(n.instruction, n.microbatch) for n in ours.order[s]]
        assert got == expected, f"stage {s}"


def test_dependencies_of_1f1b() -> None:
    s = one_f_one_b(3, 2)
    idx = {n: i for i, n in enumerate(s.nodes)}
    edges = {(int(u), int(v)) for u, v in s.edges}

    def e(a: Node, b: Node) -> bool:
        return (idx[a], idx[b]) in edges

    f = lambda st, mb: Node(stage=st, microbatch=mb, instruction="forward")  # noqa: E731
    b = lambda st, mb: Node(stage=st, microbatch=mb, instruction="backward")  # noqa: E731
    assert e(f(0, 0), f(1, 0)) and e(f(1, 1), f(2, 1))
    assert e(b(2, 0), b(1, 0)) and e(b(1, 1), b(0, 1))
    assert e(f(2, 0), b(2, 0))  # the loss on the last stage
    assert not e(f(1, 0), f(0, 0))
    # program order on stage 1: F0 F1 B0 B1
    assert e(f(1, 0), f(1, 1)) and e(f(1, 1), b(1, 0)) and e(b(1, 0), b(1, 1))
    assert len(topological_order(s.num_nodes, s.edges)) == s.num_nodes


def test_gpipe_order() -> None:
    s = gpipe(2, 3)
    assert _compact(s, 0) == "F0 F1 F2 B0 B1 B2"
    assert s.name == "gpipe"


def test_interleaved_counts_and_deadlock_free() -> None:
    s = interleaved_one_f_one_b(4, 8, 2)
    assert s.num_nodes == 2 * 4 * 8 * 2
    assert {n.chunk for n in s.nodes} == {0, 1}
    # Megatron-LM warm-up on stage 0: (S - 1) * 2 + (chunks - 1) * S forwards
    first = s.order[0][:10]
    assert all(n.instruction == "forward" for n in first)
    assert s.order[0][10].instruction == "forward" and s.order[0][11].instruction == "backward"
    # virtual stage chain: forward of chunk 1 on stage 0 waits for chunk 0 on stage 3
    idx = {n: i for i, n in enumerate(s.nodes)}
    a = idx[Node(stage=3, microbatch=0, instruction="forward", chunk=0)]
    b = idx[Node(stage=0, microbatch=0, instruction="forward", chunk=1)]
    assert any(int(u) == a and int(v) == b for u, v in s.edges)


def test_interleaved_with_one_chunk_is_1f1b() -> None:
    assert interleaved_one_f_one_b(4, 6, 1).order == one_f_one_b(4, 6).order


def test_interleaved_needs_multiple_of_stages() -> None:
    with pytest.raises(ConfigError, match="multiple of stages"):
        interleaved_one_f_one_b(4, 6, 2)


def test_recompute_flag_is_kept() -> None:
    assert one_f_one_b(2, 2, recompute=True).recompute
    assert gpipe(2, 2, recompute=True).recompute


@pytest.mark.parametrize(("stages", "mbs"), [(0, 4), (4, 0), (-1, 2)])
def test_bad_sizes(stages: int, mbs: int) -> None:
    with pytest.raises(ConfigError):
        one_f_one_b(stages, mbs)


def test_deadlocking_order_is_rejected() -> None:
    f = lambda st, mb: Node(stage=st, microbatch=mb, instruction="forward")  # noqa: E731
    b = lambda st, mb: Node(stage=st, microbatch=mb, instruction="backward")  # noqa: E731
    # stage 0 waits for B0 before sending F0 — impossible
    order = ((b(0, 0), f(0, 0)), (f(1, 0), b(1, 0)))
    with pytest.raises(ConfigError, match="deadlock"):
        Schedule(name="bad", num_stages=2, num_microbatches=1, order=order)


def test_stage_slices_cover_nodes() -> None:
    s = one_f_one_b(3, 4)
    sl = s.stage_slices()
    assert sl[0].start == 0 and sl[-1].stop == s.num_nodes
    assert all(all(n.stage == k for n in s.nodes[x]) for k, x in enumerate(sl))
    assert np.all(s.edges[:, 0] != s.edges[:, 1])
