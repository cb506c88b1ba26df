"""Energy measurement: a :class:`Meter` over pluggable power sources.

Sources: ``nvml`` (GPU energy counter or integrated instant power), ``rapl`` (CPU package/DRAM),
``dcgm`` (dcgm-exporter / Prometheus, for remote and multi-node GPUs), ``replay`` (a recorded
trace), ``simulated`` (a deterministic model) and ``estimated`` (utilisation x rated power). Every
figure says which one it came from; see :data:`perwatt.meter.source.SOURCE_LABELS`.
"""

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
