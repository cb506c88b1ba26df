"""What runs on the site: inference services, training jobs and batch jobs, placed on racks.

Every job takes a share of the site's racks (``share``, a fraction, so one workload file fits a
site of any size) or a number of racks (``racks``), optionally inside one element of the tree
(``under``), and has a **priority** (higher wins when power is short) and a **flexibility tier**:
the slowdown it tolerates, 0, 10, 25 or 50% — below the cap that costs more, the job's
throughput target is missed. Jobs are placed on whole racks, in tree order.

Inference services (JSON ``"kind": "inference"``)::

    {"name": "chat", "kind": "inference", "share": 0.6, "priority": 2, "flex": 0,
     "trace": "diurnal" | "azure:PATH", "peak_load": 0.8,
     "prefill_tok_s_per_gpu": 20000, "decode_tok_s_per_gpu": 3000,
     "tpot_ms": 30, "slo_tpot_ms": 50}

``peak_load`` scales the trace so its busiest minute asks for that fraction of the service's
full-power capacity. Per-GPU token rates are the service's (model, precision, batch) at full
power: the defaults are perwatt *assumptions* for a 70B-class model on H100 (pass measured
figures from ``perwatt bench``). Decode time per output token (TPOT) rises as the cap slows
decode; a step whose TPOT exceeds ``slo_tpot_ms``, or where demand exceeds what the GPUs can
serve, counts as an SLO violation, and tokens that cannot be served are counted unserved.

Training jobs (``"kind": "training"``): a power waveform of ``period_s`` iterations with a
``compute_fraction`` of compute near TDP and the rest communication near the blocking power,
and a checkpoint every ``checkpoint_every_s`` lasting ``checkpoint_s`` (GPUs near idle).

Batch jobs (``"kind": "batch"``): constant compute-bound ``utilization``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from perwatt.errors import ConfigError, DataFormatError
from perwatt.facility.files import read_document
from perwatt.facility.traces import TokenTrace, diurnal, load_azure_trace

F64 = npt.NDArray[np.float64]
FLEX_TIERS: Final = (0.0, 0.10, 0.25, 0.50)
JOB_KINDS: Final = ("inference", "training", "batch")
WORKLOAD_SCHEMA: Final = "perwatt.workload/1"


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """One job (see the module docstring for every field)."""

    name: str
    kind: str
    share: float | None = None
    racks: int | None = None
    under: str | None = None
    priority: int = 1
    flex: float = 0.0
    # inference
    trace: str = "diurnal"
    peak_load: float = 0.8
    prefill_tok_s_per_gpu: float = 20_000.0
    decode_tok_s_per_gpu: float = 3_000.0
    tpot_ms: float = 30.0
    slo_tpot_ms: float = 50.0
    # training
    period_s: float = 20.0
    compute_fraction: float = 0.85
    checkpoint_every_s: float = 3600.0
    checkpoint_s: float = 60.0
    # batch
    utilization: float = 0.9

    def __post_init__(self) -> None:
        w = f"job {self.name!r}"
        if not self.name:
            raise ConfigError("a job has no name")
        if self.kind not in JOB_KINDS:
            raise ConfigError(f"{w}: kind must be one of {', '.join(JOB_KINDS)}")
        if (self.share is None) == (self.racks is None):
            raise ConfigError(f"{w}: give exactly one of share or racks")
        if self.share is not None and not 0 < self.share <= 1:
            raise ConfigError(f"{w}: share must be in (0, 1]")
        if self.racks is not None and (isinstance(self.racks, bool) or self.racks < 1):
            raise ConfigError(f"{w}: racks must be >= 1")
        if self.flex not in FLEX_TIERS:
            raise ConfigError(f"{w}: flex must be one of 0, 0.1, 0.25, 0.5")
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise ConfigError(f"{w}: priority must be an integer")
        positive = (
            "peak_load",
            "prefill_tok_s_per_gpu",
            "decode_tok_s_per_gpu",
            "tpot_ms",
            "slo_tpot_ms",
            "period_s",
            "checkpoint_every_s",
        )
        for name in positive:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
                raise ConfigError(f"{w}: {name} must be > 0, got {v!r}")
        if not 0 < self.compute_fraction <= 1:
            raise ConfigError(f"{w}: compute_fraction must be in (0, 1]")
        if not 0 <= self.checkpoint_s < self.checkpoint_every_s:
            raise ConfigError(f"{w}: checkpoint_s must be in [0, checkpoint_every_s)")
        if not 0 <= self.utilization <= 1:
            raise ConfigError(f"{w}: utilization must be in [0, 1]")
        if self.peak_load > 1.5:
            raise ConfigError(f"{w}: peak_load above 1.5x capacity is not a plausible service")

    def to_dict(self) -> dict[str, Any]:
        keys = ["name", "kind", "priority", "flex"]
        keys += ["share"] if self.share is not None else ["racks"]
        if self.under:
            keys.append("under")
        keys += {
            "inference": [
                "trace",
                "peak_load",
                "prefill_tok_s_per_gpu",
                "decode_tok_s_per_gpu",
                "tpot_ms",
                "slo_tpot_ms",
            ],
            "training": ["period_s", "compute_fraction", "checkpoint_every_s", "checkpoint_s"],
            "batch": ["utilization"],
        }[self.kind]
        return {k: getattr(self, k) for k in keys}


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    """A named set of jobs; ``base_dir`` resolves relative trace paths."""

    name: str
    jobs: tuple[Job, ...]
    source: str = "<python>"
    base_dir: str = "."
    traces: dict[str, TokenTrace] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.jobs:
            raise ConfigError(f"{self.source}: a workload needs at least one job")
        names = [j.name for j in self.jobs]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ConfigError(f"{self.source}: job name(s) used twice: {', '.join(sorted(dup))}")
        shares = sum(j.share or 0.0 for j in self.jobs)
        if shares > 1 + 1e-9:
            raise ConfigError(f"{self.source}: job shares add up to {shares:g} > 1")

    def trace(self, job: Job) -> TokenTrace:
        """The job's token trace (loaded once)."""
        if job.name not in self.traces:
            spec = job.trace
            if spec == "diurnal":
                t = diurnal(seed=sum(map(ord, job.name)) % 1000)  # deterministic per job
            elif spec.startswith("azure:"):
                path = Path(spec[6:])
                if not path.is_absolute():
                    path = Path(self.base_dir) / path
                t = load_azure_trace(path)
            else:
                raise ConfigError(
                    f"{self.source}: job {job.name!r}: trace must be 'diurnal' or 'azure:PATH'"
                )
            self.traces[job.name] = t
        return self.traces[job.name]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": WORKLOAD_SCHEMA,
            "name": self.name,
            "jobs": [j.to_dict() for j in self.jobs],
        }


def workload_from_dict(doc: Any, *, source: str = "<dict>", base_dir: str = ".") -> Workload:
    if not isinstance(doc, Mapping) or doc.get("schema") != WORKLOAD_SCHEMA:
        raise ConfigError(f'expected a JSON object with "schema": "{WORKLOAD_SCHEMA}"')
    raw = doc.get("jobs")
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise ConfigError("jobs must be a list")
    jobs = []
    known = set(Job.__dataclass_fields__)
    for i, j in enumerate(raw):
        if not isinstance(j, Mapping):
            raise ConfigError(f"job {i} is not an object")
        extra = sorted(set(j) - known - {"note"})
        if extra:
            raise ConfigError(f"job {j.get('name', i)!r}: unknown field(s) {', '.join(extra)}")
        try:
            jobs.append(Job(**{k: v for k, v in j.items() if k != "note"}))
        except TypeError as e:
            raise ConfigError(f"job {j.get('name', i)!r}: {e}") from None
    return Workload(
        name=str(doc.get("name", "workload")), jobs=tuple(jobs), source=source, base_dir=base_dir
    )


def load_workload(path: str | Path) -> Workload:
    """Load a workload file (JSON, or YAML for ``*.yaml``); errors name the file and the job."""
    p = Path(path)
    doc = read_document(p, "workload file")
    try:
        w = workload_from_dict(doc, source=str(p), base_dir=str(p.parent))
        for j in w.jobs:
            if j.kind == "inference":
                w.trace(j)
        return w
    except ConfigError as e:
        msg = str(e)
        raise DataFormatError(msg if msg.startswith(str(p)) else f"{p}: {msg}") from None


def training_phase(job: Job, time_s: npt.ArrayLike) -> npt.NDArray[np.int8]:
    """Per step: 1 compute, 0 communication, 2 checkpoint (GPUs near idle)."""
    t = np.asarray(time_s, dtype=np.float64)
    # offset by the job's name so two jobs do not beat in phase (deterministic)
    off = (sum(map(ord, job.name)) % 97) / 97.0 * job.period_s
    within = np.mod(t + off, job.period_s) / job.period_s
    phase = np.where(within < job.compute_fraction, 1, 0).astype(np.int8)
    ck = np.mod(t, job.checkpoint_every_s) >= job.checkpoint_every_s - job.checkpoint_s
    phase[ck] = 2
    return phase


def mixed_inference(share: float = 0.6) -> Workload:
    """A shipped example: an inference service, a training job and a batch job."""
    rest = 1 - share
    return Workload(
        name="mixed",
        jobs=(
            Job(name="chat", kind="inference", share=share, priority=2, flex=0.0),
            Job(
                name="pretrain",
                kind="training",
                share=round(rest * 0.75, 6),
                priority=1,
                flex=0.10,
            ),
            Job(name="embeddings", kind="batch", share=round(rest * 0.25, 6), priority=0, flex=0.5),
        ),
        source="preset mixed",
    )


def inference_only() -> Workload:
    return Workload(
        name="inference",
        jobs=(
            Job(name="chat", kind="inference", share=0.7, priority=2),
            Job(
                name="batch-api",
                kind="inference",
                share=0.3,
                priority=0,
                flex=0.5,
                slo_tpot_ms=200.0,
                peak_load=0.6,
            ),
        ),
        source="preset inference",
    )


def training_only() -> Workload:
    return Workload(
        name="training",
        jobs=(Job(name="pretrain", kind="training", share=1.0, priority=1, flex=0.1),),
        source="preset training",
    )


WORKLOADS: Final = {
    "mixed": mixed_inference,
    "inference": inference_only,
    "training": training_only,
}


def preset_workload(name: str) -> Workload:
    f = WORKLOADS.get(name)
    if f is None:
        raise ConfigError(f"unknown workload preset {name!r}; known: {', '.join(WORKLOADS)}")
    return f()


__all__ = [
    "FLEX_TIERS",
    "JOB_KINDS",
    "WORKLOADS",
    "WORKLOAD_SCHEMA",
    "Job",
    "Workload",
    "inference_only",
    "load_workload",
    "mixed_inference",
    "preset_workload",
    "training_only",
    "training_phase",
    "workload_from_dict",
]
