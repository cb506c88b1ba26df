"""Pick the best real power source present on this machine, and say which.

Order: NVML GPUs (the energy the tokens cost), then a DCGM exporter named by ``PERWATT_DCGM_URL``,
then RAPL (CPU package and DRAM). When none is present the caller decides whether to fall back to
the ``estimated`` model; :func:`detect_sources` never falls back to simulated on its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from perwatt.errors import SourceUnavailableError
from perwatt.meter.source import PowerSource


@dataclass(frozen=True, slots=True)
class Detection:
    """What detection found: the chosen sources and why others were skipped."""

    sources: tuple[PowerSource, ...]
    skipped: tuple[str, ...] = field(default=())

    @property
    def description(self) -> str:
        return "; ".join(s.describe() for s in self.sources) or "no power source"


def detect_sources(*, allow_estimated: bool = True, include_cpu: bool = False) -> Detection:
    """Detect power sources. GPUs first; RAPL too when ``include_cpu`` or when there is no GPU.

    Raises :class:`SourceUnavailableError` when nothing real is present and ``allow_estimated``
    is false.
    """
    found: list[PowerSource] = []
    skipped: list[str] = []
    try:
        from perwatt.meter.nvml import NVMLSource

        found.append(NVMLSource())
    except SourceUnavailableError as e:
        skipped.append(f"nvml: {e}")
    url = os.environ.get("PERWATT_DCGM_URL")
    if url and not found:
        try:
            from perwatt.meter.dcgm import DCGMSource

            found.append(DCGMSource(url))
        except SourceUnavailableError as e:
            skipped.append(f"dcgm: {e}")
    if include_cpu or not found:
        try:
            from perwatt.meter.rapl import RAPLSource

            found.append(RAPLSource())
        except SourceUnavailableError as e:
            skipped.append(f"rapl: {e}")
    if not found:
        if not allow_estimated:
            raise SourceUnavailableError(
                "no power source found (" + "; ".join(skipped) + "); "
                "use --source simulated for a demo or --source replay:FILE"
            )
        from perwatt.meter.estimated import EstimatedCPUSource

        found.append(EstimatedCPUSource())
    return Detection(tuple(found), tuple(skipped))
