"""Training energy: pipeline schedules, stage profiles, the time–energy frontier and plans.

Planner (this package's core)::

    from perwatt.train import load_profile, one_f_one_b, compute_frontier, choose_plan

    profile = load_profile("data/perseus-sosp24/stage_profile/gpt3-175b+a100_sxm_bf16.csv")
    frontier = compute_frontier(profile, one_f_one_b(8, 24), p_block_w=83.64)
    choice = choose_plan(frontier, target="fastest")
    choice.plan.for_stage(0)  # [("forward", 0, 1350), …] in program order

The run-time side (profiler, ``FrequencyController``, simulator) lives in sibling modules and is
re-exported here lazily so that importing the planner never loads NVML.
"""

from __future__ import annotations

import importlib
from typing import Any

from perwatt.train.frontier import (
    FrequencyPlan,
    Frontier,
    FrontierPoint,
    NoisyProfileWarning,
    PlannedInstruction,
    compute_frontier,
)
from perwatt.train.pipeline import PipelineSpec
from perwatt.train.plan import PlanChoice, Savings, choose_plan
from perwatt.train.profile import InstructionProfile, StageProfile, combine_ranks, load_profile
from perwatt.train.schedule import (
    Node,
    Schedule,
    gpipe,
    interleaved_one_f_one_b,
    one_f_one_b,
)

__all__ = [
    "FrequencyPlan",
    "Frontier",
    "FrontierPoint",
    "InstructionProfile",
    "Node",
    "NoisyProfileWarning",
    "PipelineSpec",
    "PlanChoice",
    "PlannedInstruction",
    "Savings",
    "Schedule",
    "StageProfile",
    "choose_plan",
    "combine_ranks",
    "compute_frontier",
    "gpipe",
    "interleaved_one_f_one_b",
    "load_profile",
    "one_f_one_b",
]

# Names from the run-time modules, imported on first use.
_LAZY = {
    "FrequencyController": "perwatt.train.controller",
    "SimulatedGPU": "perwatt.train.simgpu",
    "StageProfiler": "perwatt.train.profiler",
    "SweepConfig": "perwatt.train.profiler",
    "attach_to_pipeline_stage": "perwatt.train.profiler",
    "run_simulation": "perwatt.train.simulate",
    "simulate_plan": "perwatt.train.simulate",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'perwatt.train' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
