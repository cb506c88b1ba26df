"""Energy measurement: a :class:`Meter` over pluggable power sources.

Sources: ``nvml`` (GPU energy counter or integrated instant power), ``rapl`` (CPU package/DRAM),
``dcgm`` (dcgm-exporter / Prometheus, for remote and multi-node GPUs), ``replay`` (a recorded
trace), ``simulated`` (a deterministic model) and ``estimated`` (utilisation x rated power). Every
figure says which one it came from; see :data:`perwatt.meter.source.SOURCE_LABELS`.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from perwatt.meter.dcgm import DCGMSource, PrometheusSource, prometheus_energy_between
    from perwatt.meter.detect import detect_sources, open_sources
    from perwatt.meter.estimated import EstimatedCPUSource
    from perwatt.meter.meter import IdleBaseline, Measurement, Meter, Sample, WindowHandle
    from perwatt.meter.nvml import NVMLSource, open_nvml_sources
    from perwatt.meter.rapl import RAPLSource
    from perwatt.meter.replay import PowerTrace, ReplaySource, load_trace
    from perwatt.meter.run import CommandMeasurement, measure_command
    from perwatt.meter.served import ServedSimulatedSource
    from perwatt.meter.simulated import SimulatedSource
    from perwatt.meter.source import MEASURED_LABELS, SOURCE_LABELS, PowerSource, is_measured

__all__ = [
    "MEASURED_LABELS",
    "SOURCE_LABELS",
    "CommandMeasurement",
    "DCGMSource",
    "EstimatedCPUSource",
    "IdleBaseline",
    "Measurement",
    "Meter",
    "NVMLSource",
    "PowerSource",
    "PowerTrace",
    "PrometheusSource",
    "RAPLSource",
    "ReplaySource",
    "Sample",
    "ServedSimulatedSource",
    "SimulatedSource",
    "WindowHandle",
    "detect_sources",
    "is_measured",
    "load_trace",
    "measure_command",
    "open_nvml_sources",
    "open_sources",
    "prometheus_energy_between",
]

# Loaded on first use: importing perwatt.meter (which `import perwatt` does) must not load every
# source (DCGM and the served source pull httpx, ~0.1 s) when a command needs one or none.
_WHERE = {
    "CommandMeasurement": "perwatt.meter.run",
    "DCGMSource": "perwatt.meter.dcgm",
    "EstimatedCPUSource": "perwatt.meter.estimated",
    "IdleBaseline": "perwatt.meter.meter",
    "MEASURED_LABELS": "perwatt.meter.source",
    "Measurement": "perwatt.meter.meter",
    "Meter": "perwatt.meter.meter",
    "NVMLSource": "perwatt.meter.nvml",
    "PowerSource": "perwatt.meter.source",
    "PowerTrace": "perwatt.meter.replay",
    "PrometheusSource": "perwatt.meter.dcgm",
    "RAPLSource": "perwatt.meter.rapl",
    "ReplaySource": "perwatt.meter.replay",
    "SOURCE_LABELS": "perwatt.meter.source",
    "Sample": "perwatt.meter.meter",
    "ServedSimulatedSource": "perwatt.meter.served",
    "SimulatedSource": "perwatt.meter.simulated",
    "WindowHandle": "perwatt.meter.meter",
    "detect_sources": "perwatt.meter.detect",
    "is_measured": "perwatt.meter.source",
    "load_trace": "perwatt.meter.replay",
    "measure_command": "perwatt.meter.run",
    "open_nvml_sources": "perwatt.meter.nvml",
    "open_sources": "perwatt.meter.detect",
    "prometheus_energy_between": "perwatt.meter.dcgm",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'perwatt.meter' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
