"""Site power: the power tree, GPU power–performance, workloads, policies, simulator, capacity.

A site's power is fixed by its grid connection; how many GPUs it runs and how many tokens it
sells depend on how that budget is shared. This package models the tree (utility feed →
switchboard/UPS → PDU/RPP → rack → node → GPUs, with capacities, efficiencies, redundancy and
oversubscription), what GPUs do under a power cap per phase of work, the workloads on them, and
the policies that share the power — one interface (:class:`~perwatt.facility.policy.Policy`)
for the simulator and a live controller alike. Every energy figure it produces is simulated and
labelled so.

    from perwatt.facility import make_policy, preset_site, preset_workload, simulate
    r = simulate(preset_site("site-96mw"), preset_workload("mixed"), make_policy("realloc"))

Grid demand response (:mod:`.loadtarget`, :mod:`.flex`, :mod:`.flexsim`) and training power
smoothing (:mod:`.waveform`, :mod:`.smoothing`, :mod:`.storage`, :mod:`.smoothrun`) build on
the same jobs, GPU curves and policies.
"""

from __future__ import annotations

from perwatt.facility.allocate import Allocation, AllocTree, reallocate
from perwatt.facility.capacity import CapacityRow, capacity
from perwatt.facility.cooling import CoolingModel, Weather, load_weather, synthetic_weather
from perwatt.facility.curves import GPUModel, PhaseCurve, calibrate_from_bench, gpu_model
from perwatt.facility.flex import FlexJob, FlexOptimiser, uniform_cap
from perwatt.facility.flexsim import FlexScenario, load_flex_scenario, simulate_flex
from perwatt.facility.loaders import load_site, site_from_dict, to_dps
from perwatt.facility.loadtarget import LoadTarget, load_targets
from perwatt.facility.placement import Placement, place
from perwatt.facility.policies import POLICIES, make_policy
from perwatt.facility.policy import Policy, Snapshot
from perwatt.facility.presets import SITES, SYSTEMS, build_site, preset_site
from perwatt.facility.result import JobResult, LevelStress, PolicyResult, write_results
from perwatt.facility.simulate import SimConfig, simulate
from perwatt.facility.smoothing import GridLimits, Mitigation, SmoothingProfile, grid_figures
from perwatt.facility.smoothrun import load_smooth_scenario, run_smooth
from perwatt.facility.storage import Storage
from perwatt.facility.topology import Element, Topology, expand
from perwatt.facility.traces import TokenTrace, diurnal, load_azure_trace
from perwatt.facility.workload import Job, Workload, load_workload, preset_workload

__all__ = [
    "POLICIES",
    "SITES",
    "SYSTEMS",
    "AllocTree",
    "Allocation",
    "CapacityRow",
    "CoolingModel",
    "Element",
    "FlexJob",
    "FlexOptimiser",
    "FlexScenario",
    "GPUModel",
    "GridLimits",
    "Job",
    "JobResult",
    "LevelStress",
    "LoadTarget",
    "Mitigation",
    "PhaseCurve",
    "Placement",
    "Policy",
    "PolicyResult",
    "SimConfig",
    "SmoothingProfile",
    "Snapshot",
    "Storage",
    "TokenTrace",
    "Topology",
    "Weather",
    "Workload",
    "build_site",
    "calibrate_from_bench",
    "capacity",
    "diurnal",
    "expand",
    "gpu_model",
    "grid_figures",
    "load_azure_trace",
    "load_flex_scenario",
    "load_site",
    "load_smooth_scenario",
    "load_targets",
    "load_weather",
    "load_workload",
    "make_policy",
    "place",
    "preset_site",
    "preset_workload",
    "reallocate",
    "run_smooth",
    "simulate",
    "simulate_flex",
    "site_from_dict",
    "synthetic_weather",
    "to_dps",
    "uniform_cap",
    "write_results",
]
