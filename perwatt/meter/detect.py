"""Pick the best real power source present on this machine, and say which.

Order: NVML GPUs (the energy the tokens cost), then a DCGM exporter named by ``PERWATT_DCGM_URL``,
then RAPL (CPU package and DRAM). When none is present the caller decides whether to fall back to
the ``estimated`` model; :func:`detect_sources` never falls back to simulated on its own.

NVML GPUs come as one source per capability class (:func:`perwatt.meter.nvml.open_nvml_sources`):
GPUs with the energy counter in one, counterless (pre-Volta) GPUs in another.

:func:`open_sources` turns the CLI's ``--source`` spec into sources:

==================  ===============================================================
``auto``            :func:`detect_sources` (falls back to ``estimated``)
``nvml``            every visible GPU; ``nvml:0,2`` visible GPUs 0 and 2
``rapl``            CPU package/DRAM from /sys/class/powercap (``rapl:ROOT`` for another root)
``dcgm:URL``        a dcgm-exporter ``/metrics`` page (comma-separated for several nodes)
``prometheus:URL``  a Prometheus server scraping dcgm-exporter (``--select`` picks GPUs of
                    either: ``Hostname="node1"``, ``0,2``, ``pod=~"vllm-.*"``)
``replay:FILE``     a recorded trace (CSV/JSONL)
``simulated``       the deterministic model (labelled ``simulated`` everywhere)
``simulated:URL``   the power model a perwatt test server serves (``http://HOST:PORT``; also
                    labelled ``simulated``)
``estimated``       utilisation × rated power (labelled ``estimated`` everywhere)
==================  ===============================================================

**Test/demo hook**: with ``PERWATT_FAKE_NVML=H100,A100`` in the environment, every NVML source
uses :class:`perwatt.meter.testing.FakeNVML` with those presets instead of the real library. Its
figures are labelled ``simulated`` and every description says "FAKE NVML"; it exists so the CLI
can be exercised end to end without a GPU, never for real measurements. ``PERWATT_FAKE_NVML=missing``
behaves like a machine without the NVIDIA driver.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perwatt.errors import (
    ConfigError,
    DeviceError,
    PerwattError,
    RemoteSourceError,
    SourceUnavailableError,
)
from perwatt.meter.source import PowerSource

#: Environment variable that swaps the real NVML for the fake (tests and demos only).
FAKE_NVML_ENV = "PERWATT_FAKE_NVML"

SPEC_HELP = (
    "auto, nvml, nvml:0,2, rapl, dcgm:URL, prometheus:URL, replay:FILE, simulated, "
    "simulated:URL (a perwatt test server's power model) or estimated"
)


@dataclass(frozen=True, slots=True)
class Detection:
    """What detection found: the chosen sources and why others were skipped."""

    sources: tuple[PowerSource, ...]
    skipped: tuple[str, ...] = field(default=())

    @property
    def description(self) -> str:
        return "; ".join(s.describe() for s in self.sources) or "no power source"


def nvml_module() -> Any | None:
    """The fake NVML when ``PERWATT_FAKE_NVML`` is set, else ``None`` (use the real pynvml)."""
    spec = os.environ.get(FAKE_NVML_ENV)
    if spec is None:
        return None
    # lazy: the fake NVML loads only when PERWATT_FAKE_NVML asks for it
    from perwatt.meter.testing import fake_from_env

    return fake_from_env(spec)


def detect_sources(*, allow_estimated: bool = True, include_cpu: bool = False) -> Detection:
    """Detect power sources. GPUs first; RAPL too when ``include_cpu`` or when there is no GPU.

    Raises :class:`SourceUnavailableError` when nothing real is present and ``allow_estimated``
    is false. A malformed ``CUDA_VISIBLE_DEVICES`` is the user's to fix and is raised, not skipped.
    """
    found: list[PowerSource] = []
    skipped: list[str] = []
    try:
        # lazy: load only the source asked for (every command imports this module)
        from perwatt.meter.nvml import open_nvml_sources

        found.extend(open_nvml_sources(nvml=nvml_module()))
    except (SourceUnavailableError, DeviceError) as e:
        skipped.append(f"nvml: {e}")
    url = os.environ.get("PERWATT_DCGM_URL")
    if url and not found:
        try:
            # lazy: pulls httpx (~0.1 s of start-up); only this source needs it
            from perwatt.meter.dcgm import DCGMSource

            found.append(DCGMSource(url))
        except SourceUnavailableError as e:
            skipped.append(f"dcgm: {e}")
        except RemoteSourceError as e:
            # The user named this exporter: falling back to RAPL or an estimate would meter
            # something else without saying so. Name the variable that chose it.
            raise RemoteSourceError(
                f"PERWATT_DCGM_URL={url}: {e} (unset PERWATT_DCGM_URL to use another source)"
            ) from None
    if include_cpu or not found:
        try:
            # lazy: load only the source asked for (every command imports this module)
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
        # lazy: load only the source asked for (every command imports this module)
        from perwatt.meter.estimated import EstimatedCPUSource

        found.append(EstimatedCPUSource())
    return Detection(tuple(found), tuple(skipped))


def _parse_indices(arg: str, spec: str) -> list[int]:
    out: list[int] = []
    for part in arg.split(","):
        p = part.strip()
        if not p.isdigit():
            raise ConfigError(
                f"--source {spec!r}: {p!r} is not a GPU index; use e.g. nvml:0,2 (see `perwatt env`)"
            )
        out.append(int(p))
    return out


def open_sources(spec: str, *, select: str | None = None) -> tuple[PowerSource, ...]:
    """Open the sources a ``--source`` spec names (see the module docstring for the forms).

    ``select`` (``--select``) chooses GPUs of a ``dcgm:`` or ``prometheus:`` source by label
    matchers, indices or UUIDs (:mod:`perwatt.meter.select`); other sources refuse it."""
    spec = spec.strip()
    kind, sep, arg = spec.partition(":")
    kind = kind.lower()
    if sep and not arg.strip():
        raise ConfigError(f"--source {spec!r} is missing its argument after ':'; use {SPEC_HELP}")
    if select is not None and kind not in ("dcgm", "prometheus"):
        raise ConfigError(
            f"--select chooses GPUs of dcgm:URL and prometheus:URL sources, not {spec!r}"
            + (" (use nvml:0,2 for local GPUs)" if kind in ("nvml", "auto") else "")
        )
    if kind == "auto" and not sep:
        return detect_sources().sources
    if kind == "nvml":
        # lazy: load only the source asked for (every command imports this module)
        from perwatt.meter.nvml import open_nvml_sources

        indices = _parse_indices(arg, spec) if sep else None
        return open_nvml_sources(indices, nvml=nvml_module())
    if kind == "rapl":
        # lazy: load only the source asked for (every command imports this module)
        from perwatt.meter.rapl import RAPLSource

        return (RAPLSource(arg) if sep else RAPLSource(),)
    if kind == "dcgm" and sep:
        # lazy: pulls httpx (~0.1 s of start-up); only this source needs it
        from perwatt.meter.dcgm import DCGMSource

        return (DCGMSource(arg, select=select),)
    if kind == "prometheus" and sep:
        # lazy: pulls httpx (~0.1 s of start-up); only this source needs it
        from perwatt.meter.dcgm import PrometheusSource

        return (PrometheusSource(arg, select=select),)
    if kind == "replay" and sep:
        # lazy: load only the source asked for (every command imports this module)
        from perwatt.meter.replay import ReplaySource

        return (ReplaySource(arg),)
    if kind == "simulated" and sep and arg.strip().lower().startswith(("http://", "https://")):
        # lazy: pulls httpx (~0.1 s of start-up); only this source needs it
        from perwatt.meter.served import ServedSimulatedSource

        return (ServedSimulatedSource(arg),)
    if kind == "simulated" and not sep:
        # lazy: load only the source asked for (every command imports this module)
        from perwatt.meter.simulated import SimulatedSource

        return (SimulatedSource(),)
    if kind == "estimated" and not sep:
        # lazy: load only the source asked for (every command imports this module)
        from perwatt.meter.estimated import EstimatedCPUSource

        return (EstimatedCPUSource(),)
    if kind in ("dcgm", "prometheus", "replay"):
        what = "FILE" if kind == "replay" else "URL"
        raise ConfigError(f"power source {kind} needs a {what}: {kind}:{what}")
    raise ConfigError(f"unknown power source {spec!r}; use {SPEC_HELP}")


def close_sources(sources: Sequence[PowerSource]) -> None:
    """Close every source, even if one fails to close."""
    for s in sources:
        # Best effort: the measurement is already taken; a failing close must not hide it.
        with contextlib.suppress(Exception):
            s.close()


# ------------------------------------------------------------------------- perwatt env


@dataclass(frozen=True, slots=True, kw_only=True)
class EnvReport:
    """What ``perwatt env`` reports: GPUs, RAPL, CPU and what auto-detection would pick."""

    gpus: tuple[Any, ...]  # perwatt.meter.nvml.GPUInfo
    gpu_error: str | None
    gpu_catalog: tuple[str | None, ...]  # perwatt.hardware key matched per GPU, None if unknown
    fake_nvml: bool
    rapl_domains: tuple[str, ...]
    rapl_error: str | None
    cpu_model: str
    cpu_cores: int
    platform: str
    python: str
    auto_sources: tuple[str, ...]
    auto_labels: tuple[str, ...]
    auto_skipped: tuple[str, ...]
    #: optional parts of perwatt and whether they are usable here (one line each)
    components: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.gpu_catalog) != len(self.gpus):
            raise ValueError("gpu_catalog must have one entry per GPU")

    def to_dict(self) -> dict[str, Any]:
        return {
            "gpus": [
                {**g.to_dict(), "catalog": c}
                for g, c in zip(self.gpus, self.gpu_catalog, strict=True)
            ],
            "gpu_error": self.gpu_error,
            "fake_nvml": self.fake_nvml,
            "rapl": {"domains": list(self.rapl_domains), "error": self.rapl_error},
            "cpu": {"model": self.cpu_model, "cores": self.cpu_cores},
            "platform": self.platform,
            "python": self.python,
            "auto_detect": {
                "sources": list(self.auto_sources),
                "labels": list(self.auto_labels),
                "skipped": list(self.auto_skipped),
            },
            "components": list(self.components),
        }


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def describe_environment(components: Sequence[str] = ()) -> EnvReport:
    """Inspect this machine read-only: nothing is changed, every source opened is closed.

    ``components``: lines about other parts of perwatt to report alongside (the CLI passes the
    planner's build and the engine's torch; the meter itself imports nothing from them)."""
    # lazy: keeps the start-up of every command light (used by `perwatt env` only)
    from perwatt.hardware import lookup_gpu
    from perwatt.meter.nvml import gpu_inventory

    fake = nvml_module()
    gpus: tuple[Any, ...] = ()
    gpu_error: str | None = None
    try:
        gpus = gpu_inventory(nvml=fake)
    except (SourceUnavailableError, DeviceError) as e:
        gpu_error = str(e)
    catalog = []
    for g in gpus:
        spec = lookup_gpu(g.name)
        catalog.append(spec.key if spec else None)

    rapl_domains: tuple[str, ...] = ()
    rapl_error: str | None = None
    try:
        # lazy: load only the source asked for (every command imports this module)
        from perwatt.meter.rapl import RAPLSource

        rapl = RAPLSource()
        try:
            rapl_domains = tuple(rapl.devices)
        finally:
            rapl.close()
    except (SourceUnavailableError, DeviceError) as e:
        rapl_error = str(e)

    auto_sources: tuple[str, ...] = ()
    auto_labels: tuple[str, ...] = ()
    auto_skipped: tuple[str, ...] = ()
    try:
        det = detect_sources()
    except PerwattError as e:
        auto_skipped = (f"auto-detection failed: {e}",)
    else:
        try:
            auto_sources = tuple(s.describe() for s in det.sources)
            auto_labels = tuple(
                s.energy_label if s.has_energy_counter else s.power_label for s in det.sources
            )
            auto_skipped = det.skipped
        finally:
            close_sources(det.sources)
    return EnvReport(
        gpus=gpus,
        gpu_error=gpu_error,
        gpu_catalog=tuple(catalog),
        fake_nvml=fake is not None,
        rapl_domains=rapl_domains,
        rapl_error=rapl_error,
        cpu_model=cpu_model(),
        cpu_cores=os.cpu_count() or 1,
        platform=platform.platform(),
        python=platform.python_version(),
        auto_sources=auto_sources,
        auto_labels=auto_labels,
        auto_skipped=auto_skipped,
        components=tuple(components),
    )


def _clock_range(clocks: Sequence[int]) -> str:
    if not clocks:
        return "n/a"
    return f"{min(clocks)}-{max(clocks)} MHz ({len(clocks)} steps)"


def _w(v: float | None) -> str:
    return "n/a" if v is None else f"{v:g} W"


def format_environment(env: EnvReport) -> str:
    """The human-readable ``perwatt env`` text."""
    lines: list[str] = []
    if env.fake_nvml:
        lines.append(
            f"NOTE: {FAKE_NVML_ENV} is set: the GPUs below are FAKE (perwatt.meter.testing), "
            "for tests and demos; their figures are simulated"
        )
    lines.append("GPUs")
    if env.gpu_error:
        lines.append(f"  none usable: {env.gpu_error}")
    for g, cat in zip(env.gpus, env.gpu_catalog, strict=True):
        fake = " [FAKE]" if g.fake else ""
        lines.append(f"  {g.label}: {g.name}{fake} ({g.architecture}), {g.uuid}")
        if g.index != g.physical_index:
            lines.append(f"    physical NVML index {g.physical_index} (CUDA_VISIBLE_DEVICES)")
        lines.append(
            f"    driver {g.driver_version}; catalog entry: {cat or 'not in perwatt.hardware'}"
        )
        lines.append(
            f"    power limit {_w(g.power_limit_w)} (default {_w(g.default_power_limit_w)}, "
            f"range {_w(g.min_power_limit_w)}-{_w(g.max_power_limit_w)})"
        )
        sm = "n/a" if g.sm_clock_mhz is None else f"{g.sm_clock_mhz} MHz"
        mem = "n/a" if g.mem_clock_mhz is None else f"{g.mem_clock_mhz} MHz"
        lines.append(f"    clocks now: SM {sm}, memory {mem}")
        lines.append(
            f"    supported: SM {_clock_range(g.supported_sm_clocks_mhz)}; memory "
            + (", ".join(str(c) for c in g.supported_mem_clocks_mhz) or "n/a")
            + (" MHz" if g.supported_mem_clocks_mhz else "")
        )
        energy = (
            "energy counter (nvmlDeviceGetTotalEnergyConsumption)"
            if g.has_energy_counter
            else f"no energy counter: instant power integrated ({g.power_method})"
        )
        lines.append(f"    energy: {energy}")
        can = "yes" if g.clock_control.allowed else "no"
        lines.append(f"    can set clocks/power limit: {can} — {g.clock_control.reason}")
        for n in g.notes:
            lines.append(f"    note: {n}")
    lines.append("RAPL (CPU package/DRAM)")
    if env.rapl_domains:
        lines.append("  domains: " + ", ".join(env.rapl_domains))
    else:
        lines.append(f"  unavailable: {env.rapl_error or 'no domains'}")
    lines.append(f"CPU: {env.cpu_model}, {env.cpu_cores} logical cores")
    lines.append(f"Platform: {env.platform}, Python {env.python}")
    lines.append("Auto-detected source (perwatt meter --source auto)")
    for desc, label in zip(env.auto_sources, env.auto_labels, strict=True):
        lines.append(f"  uses: {desc} [{label}]")
    for sk in env.auto_skipped:
        lines.append(f"  skipped {sk}")
    if env.components:
        lines.append("perwatt components")
        lines.extend(f"  {c}" for c in env.components)
    return "\n".join(lines)
