"""Place a workload's jobs on whole racks and cut the tree into cohorts.

Racks are numbered in depth-first order of the tree (an element with ``count`` k stands for k
consecutive copies). Jobs with ``under`` take the first free racks inside that element, then the
others take the first free racks anywhere, in the order the workload lists them; racks left over
are idle. Where a job boundary falls inside an element with ``count`` > 1, the element is split
into copies with one job each — the only place cohorts split, so every cohort's GPUs run the
same job under the same parents and a policy cannot treat them differently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from perwatt.errors import ConfigError
from perwatt.facility.topology import Element, Topology
from perwatt.facility.workload import Workload

IDLE = -1


def _racks(e: Element) -> int:
    """Racks in one copy of ``e`` (a node outside any rack counts as one rack)."""
    if e.kind in ("rack", "node"):
        return 1
    return sum(c.count * _racks(c) for c in e.children)


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    """The split topology and, per node element (flat index), the job it runs (-1: idle)."""

    topology: Topology
    node_job: dict[int, int]
    job_racks: tuple[int, ...]
    job_gpus: tuple[int, ...]

    def cohort_jobs(self) -> npt.NDArray[np.int64]:
        fl = self.topology.flat()
        return np.array([self.node_job[int(i)] for i in fl.leaves], dtype=np.int64)


def _ranges(root: Element) -> dict[str, tuple[int, int]]:
    """First rack and racks per copy of every element (for ``under``)."""
    out: dict[str, tuple[int, int]] = {}

    def walk(e: Element, off: int) -> None:
        r = _racks(e)
        out[e.name] = (off, e.count * r)
        if e.kind in ("rack", "node"):
            return
        o = off
        for c in e.children:
            walk(c, o)
            o += c.count * _racks(c)

    walk(root, 0)
    return out


def place(topology: Topology, workload: Workload) -> Placement:
    """Assign racks to jobs and split the tree (see the module docstring)."""
    root = topology.root
    total = _racks(root)
    ranges = _ranges(root)
    labels = np.full(total, IDLE, dtype=np.int64)
    order = [i for i, j in enumerate(workload.jobs) if j.under] + [
        i for i, j in enumerate(workload.jobs) if not j.under
    ]
    job_racks = [0] * len(workload.jobs)
    for i in order:
        j = workload.jobs[i]
        want = j.racks if j.racks is not None else max(1, math.floor((j.share or 0) * total))
        lo, n = 0, total
        if j.under:
            if j.under not in ranges:
                raise ConfigError(
                    f"{workload.source}: job {j.name!r}: under {j.under!r} is not an element of "
                    f"{topology.source}"
                )
            lo, n = ranges[j.under]
        free = np.flatnonzero(labels[lo : lo + n] == IDLE) + lo
        if len(free) < want:
            raise ConfigError(
                f"{workload.source}: job {j.name!r} needs {want} racks, only {len(free)} free "
                f"{'under ' + repr(j.under) if j.under else 'on the site'}"
            )
        labels[free[:want]] = i
        job_racks[i] = want
    # runs of equal labels
    change = np.flatnonzero(np.diff(labels)) + 1
    starts = np.r_[0, change]
    ends = np.r_[change, total]
    run_label = labels[starts]
    node_label: dict[str, int] = {}

    def label_all(e: Element, lab: int) -> None:
        for x in e.walk():
            if x.kind == "node":
                node_label[x.name] = lab

    def build(e: Element, off: int, suffix: str) -> list[Element]:
        """Copies of ``e`` starting at rack ``off``, split where the job changes."""
        r = _racks(e)
        out: list[Element] = []
        k = 0
        while k < e.count:
            a = off + k * r
            ri = int(np.searchsorted(starts, a, side="right") - 1)
            lab, run_end = int(run_label[ri]), int(ends[ri])
            full = min(e.count - k, (run_end - a) // r)
            if full >= 1:
                s = suffix if full == e.count else f"{suffix}@{k}"
                piece = _rename(e, s) if s else e
                piece = replace(piece, count=full)
                label_all(piece, lab)
                out.append(piece)
                k += full
                continue
            # this copy holds more than one job: split inside it
            s = f"{suffix}@{k}" if e.count > 1 else suffix
            kids: list[Element] = []
            o = a
            for c in e.children:
                kids.extend(build(c, o, s))
                o += c.count * _racks(c)
            out.append(replace(e, name=e.name + s, count=1, children=tuple(kids)))
            k += 1
        return out

    (new_root,) = build(root, 0, "")
    placed = Topology(
        name=topology.name, root=new_root, source=topology.source, notes=topology.notes
    )
    fl = placed.flat()
    node_job = {int(i): node_label[fl.names[int(i)]] for i in fl.leaves}
    gpus = [0] * len(workload.jobs)
    for i, lab in node_job.items():
        if lab >= 0:
            gpus[lab] += int(fl.leaf_gpus[list(fl.leaves).index(i)])
    return Placement(
        topology=placed, node_job=node_job, job_racks=tuple(job_racks), job_gpus=tuple(gpus)
    )


def _rename(e: Element, suffix: str) -> Element:
    return replace(e, name=e.name + suffix, children=tuple(_rename(c, suffix) for c in e.children))


__all__ = ["IDLE", "Placement", "place"]
