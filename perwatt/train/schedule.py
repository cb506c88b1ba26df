"""Pipeline-parallel training schedules as DAGs of forward/backward instructions.

One training iteration of a pipeline with ``S`` stages and ``M`` microbatches is a set of
*instructions* — ``forward`` or ``backward`` of one microbatch on one stage (and, for
interleaved schedules, one model chunk). Two kinds of edges order them:

* **pipeline data dependencies** — the forward of microbatch ``j`` on stage ``s`` needs the
  activations from stage ``s - 1``; its backward needs the gradients from stage ``s + 1``;
* **program order** — a GPU runs its own instructions one after another, in the order the
  schedule issues them (this is what makes 1F1B differ from GPipe).

Synchronous 1F1B, 4 stages, 4 microbatches (F/B = forward/backward, digit = microbatch)::

    stage 0 | F0 F1 F2 F3       B0    B1    B2    B3
    stage 1 |    F0 F1 F2    B0 F3 B1    B2    B3
    stage 2 |       F0 F1 B0 F2 B1 F3 B2    B3
    stage 3 |          F0 B0 F1 B1 F2 B2 F3 B3

(time flows right; gaps are the *blocking* time where a GPU waits on communication). The
iteration time is the longest path through this DAG; the frequency planner
(:mod:`perwatt.train.frontier`) slows down instructions that are off that path.

Optional *recomputation* (activation checkpointing) makes every backward re-run its forward
first; the planner then prices a backward as ``backward + forward`` at the same clock.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from perwatt.errors import ConfigError

InstructionName = Literal["forward", "backward"]
INSTRUCTIONS: Final[tuple[InstructionName, ...]] = ("forward", "backward")

__all__ = [
    "INSTRUCTIONS",
    "InstructionName",
    "Node",
    "Schedule",
    "gpipe",
    "interleaved_one_f_one_b",
    "one_f_one_b",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Node:
    """One instruction: ``instruction`` of ``microbatch`` on ``stage`` (model ``chunk``)."""

    stage: int
    microbatch: int
    instruction: InstructionName
    chunk: int = 0

    def __post_init__(self) -> None:
        if self.stage < 0 or self.microbatch < 0 or self.chunk < 0:
            raise ConfigError(f"negative index in {self}")
        if self.instruction not in INSTRUCTIONS:
            raise ConfigError(f"unknown instruction {self.instruction!r}; use forward/backward")


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    """A pipeline schedule: per stage, its instructions in program order, plus the DAG.

    ``order[s]`` lists stage ``s``'s instructions in the order the GPU runs them. Node ids are
    positions in :attr:`nodes` (stage-major, program order), and :attr:`edges` holds
    ``(u, v)`` pairs meaning *v cannot start before u has finished*.
    """

    name: str
    num_stages: int
    num_microbatches: int
    chunks: int = 1
    recompute: bool = False
    order: tuple[tuple[Node, ...], ...]
    nodes: tuple[Node, ...] = field(init=False)
    edges: npt.NDArray[np.int64] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.num_stages < 1 or self.num_microbatches < 1 or self.chunks < 1:
            raise ConfigError(
                f"schedule needs ≥1 stage, microbatch and chunk, got stages={self.num_stages} "
                f"microbatches={self.num_microbatches} chunks={self.chunks}"
            )
        if len(self.order) != self.num_stages:
            raise ConfigError(f"order has {len(self.order)} stages, expected {self.num_stages}")
        nodes = tuple(n for stage_nodes in self.order for n in stage_nodes)
        index = {n: i for i, n in enumerate(nodes)}
        if len(index) != len(nodes):
            raise ConfigError(f"{self.name}: an instruction appears twice in the schedule")
        expected = 2 * self.num_stages * self.num_microbatches * self.chunks
        if len(nodes) != expected:
            raise ConfigError(f"{self.name}: {len(nodes)} instructions, expected {expected}")
        for s, stage_nodes in enumerate(self.order):
            if any(n.stage != s for n in stage_nodes):
                raise ConfigError(f"{self.name}: stage {s} lists another stage's instruction")
        edges: list[tuple[int, int]] = []
        # Program order: each GPU runs its instructions one at a time.
        for stage_nodes in self.order:
            edges.extend((index[a], index[b]) for a, b in itertools.pairwise(stage_nodes))
        # Pipeline data dependencies along the virtual-stage chain
        # (virtual stage v = chunk * S + stage, as in Megatron-LM's interleaved schedule).
        last_v = self.num_stages * self.chunks - 1
        for n in nodes:
            v = n.chunk * self.num_stages + n.stage
            if n.instruction == "forward" and v > 0:
                pv = v - 1
            elif n.instruction == "backward" and v < last_v:
                pv = v + 1
            else:
                pv = -1
            if pv >= 0:
                src = Node(
                    stage=pv % self.num_stages,
                    microbatch=n.microbatch,
                    instruction=n.instruction,
                    chunk=pv // self.num_stages,
                )
                edges.append((index[src], index[n]))
            if n.instruction == "backward" and v == last_v:
                # The loss: the last virtual stage's backward needs its own forward.
                fwd = Node(
                    stage=n.stage, microbatch=n.microbatch, instruction="forward", chunk=n.chunk
                )
                edges.append((index[fwd], index[n]))
        arr = np.array(sorted(set(edges)), dtype=np.int64).reshape(-1, 2)
        object.__setattr__(self, "nodes", nodes)
        object.__setattr__(self, "edges", arr)
        topological_order(len(nodes), arr)  # raises if the program order deadlocks

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    def stage_slices(self) -> list[slice]:
        """Node-id range of each stage (nodes are stored stage-major, in program order)."""
        out, start = [], 0
        for stage_nodes in self.order:
            out.append(slice(start, start + len(stage_nodes)))
            start += len(stage_nodes)
        return out


def topological_order(num_nodes: int, edges: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Kahn's algorithm; raises ConfigError when the DAG has a cycle (a deadlocking schedule)."""
    indeg = np.zeros(num_nodes, dtype=np.int64)
    np.add.at(indeg, edges[:, 1], 1)
    succ: list[list[int]] = [[] for _ in range(num_nodes)]
    for u, v in edges.tolist():
        succ[u].append(v)
    ready = [i for i in range(num_nodes) if indeg[i] == 0]
    out: list[int] = []
    while ready:
        u = ready.pop()
        out.append(u)
        for v in succ[u]:
            indeg[v] -= 1
            if indeg[v] == 0:
                ready.append(v)
    if len(out) != num_nodes:
        raise ConfigError("schedule deadlocks: its program order contradicts the pipeline deps")
    return np.array(out, dtype=np.int64)


def _check(stages: int, microbatches: int) -> None:
    if stages < 1 or microbatches < 1:
        raise ConfigError(
            f"need stages ≥ 1 and microbatches ≥ 1, got stages={stages} microbatches={microbatches}"
        )


def one_f_one_b(stages: int, microbatches: int, *, recompute: bool = False) -> Schedule:
    """Synchronous 1F1B (PipeDream-Flush, as DeepSpeed and Megatron-LM run it).

    Stage ``s`` runs ``min(S - s - 1, M)`` warm-up forwards, then alternates one forward and
    one backward, then drains the remaining backwards. The order matches DeepSpeed's
    ``TrainSchedule`` and lowtime's ``Synchronous1F1B`` step for step.
    """
    _check(stages, microbatches)
    order = []
    for s in range(stages):
        warmup = min(stages - s - 1, microbatches)
        seq: list[Node] = [
            Node(stage=s, microbatch=j, instruction="forward") for j in range(warmup)
        ]
        f, b = warmup, 0
        while f < microbatches:
            seq.append(Node(stage=s, microbatch=f, instruction="forward"))
            seq.append(Node(stage=s, microbatch=b, instruction="backward"))
            f, b = f + 1, b + 1
        seq.extend(
            Node(stage=s, microbatch=j, instruction="backward") for j in range(b, microbatches)
        )
        order.append(tuple(seq))
    return Schedule(
        name="1f1b",
        num_stages=stages,
        num_microbatches=microbatches,
        recompute=recompute,
        order=tuple(order),
    )


def gpipe(stages: int, microbatches: int, *, recompute: bool = False) -> Schedule:
    """GPipe: every stage runs all forwards, then all backwards (microbatch order)."""
    _check(stages, microbatches)
    order = tuple(
        tuple(Node(stage=s, microbatch=j, instruction="forward") for j in range(microbatches))
        + tuple(Node(stage=s, microbatch=j, instruction="backward") for j in range(microbatches))
        for s in range(stages)
    )
    return Schedule(
        name="gpipe",
        num_stages=stages,
        num_microbatches=microbatches,
        recompute=recompute,
        order=order,
    )


def interleaved_one_f_one_b(
    stages: int, microbatches: int, chunks: int, *, recompute: bool = False
) -> Schedule:
    """Interleaved 1F1B (Megatron-LM virtual pipeline): each GPU holds ``chunks`` model chunks.

    Virtual stage ``v = chunk * S + stage``. Microbatches enter in groups of ``S``, so ``M`` must
    be a multiple of ``S`` (Megatron-LM's own requirement). Warm-up length on stage ``s`` is
    ``(S - s - 1) * 2 + (chunks - 1) * S`` forwards, capped at the total, as in Megatron-LM's
    ``forward_backward_pipelining_with_interleaving``.
    """
    _check(stages, microbatches)
    if chunks < 1:
        raise ConfigError(f"chunks must be ≥ 1, got {chunks}")
    if chunks == 1:
        sched = one_f_one_b(stages, microbatches, recompute=recompute)
        return sched
    if microbatches % stages:
        raise ConfigError(
            f"interleaved 1F1B needs microbatches to be a multiple of stages "
            f"({microbatches} % {stages} != 0); change --microbatches"
        )
    total = microbatches * chunks

    def fwd(k: int, s: int) -> Node:
        group, pos = divmod(k, stages * chunks)
        return Node(
            stage=s,
            microbatch=group * stages + pos % stages,
            instruction="forward",
            chunk=pos // stages,
        )

    def bwd(k: int, s: int) -> Node:
        group, pos = divmod(k, stages * chunks)
        return Node(
            stage=s,
            microbatch=group * stages + pos % stages,
            instruction="backward",
            chunk=chunks - 1 - pos // stages,
        )

    order = []
    for s in range(stages):
        warmup = min((stages - s - 1) * 2 + (chunks - 1) * stages, total)
        seq = [fwd(k, s) for k in range(warmup)]
        f, b = warmup, 0
        while f < total:
            seq.append(fwd(f, s))
            seq.append(bwd(b, s))
            f, b = f + 1, b + 1
        seq.extend(bwd(k, s) for k in range(b, total))
        order.append(tuple(seq))
    return Schedule(
        name="interleaved",
        num_stages=stages,
        num_microbatches=microbatches,
        chunks=chunks,
        recompute=recompute,
        order=tuple(order),
    )
