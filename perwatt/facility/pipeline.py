"""A training job's power waveform from perwatt.train's pipeline simulation.

:func:`perwatt.train.simulate.simulate_plan` replays one iteration of a pipeline schedule on a
measured stage profile (compute near TDP while an instruction runs, ``P_block`` while a stage
waits on its peers). The site model's training job is a square wave — compute for
``compute_fraction`` of each ``period_s``, communication/blocking the rest — so a replayed
iteration maps onto it exactly in its two first moments: the period is the iteration time, the
compute fraction is the stages' mean busy share. (The per-stage bubble pattern inside one
iteration, tens of milliseconds, is far below a site step and averages out at the feed.)
"""

from __future__ import annotations

from typing import Any

from perwatt.errors import ConfigError
from perwatt.facility.workload import Job
from perwatt.train.simulate import Timeline


def training_job_from_timeline(timeline: Timeline, *, name: str, **job: Any) -> Job:
    """A ``training`` :class:`Job` whose waveform follows ``timeline`` (module docstring).

    ``job`` holds the placement and policy fields (``share`` or ``racks``, ``priority``,
    ``flex``, checkpoint settings).
    """
    t = timeline.iteration_time_s
    if not t > 0:
        raise ConfigError("the timeline has no iteration time")
    busy = sum(timeline.busy_s(s) for s in range(timeline.num_stages)) / (timeline.num_stages * t)
    for k in ("kind", "period_s", "compute_fraction"):
        if k in job:
            raise ConfigError(f"{k} comes from the timeline; do not pass it")
    return Job(
        name=name,
        kind="training",
        period_s=t,
        compute_fraction=min(1.0, max(busy, 1e-6)),
        **job,
    )


__all__ = ["training_job_from_timeline"]
