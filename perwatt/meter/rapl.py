"""CPU package and DRAM energy from Linux powercap (RAPL).

The kernel's powercap framework exposes each RAPL domain as a *zone* directory
(https://docs.kernel.org/power/powercap/powercap.html, and the ABI in
``Documentation/ABI/testing/sysfs-class-powercap``)::

    /sys/class/powercap/
      intel-rapl:0/          name = "package-0"    energy_uj, max_energy_range_uj
      intel-rapl:0:0/        name = "core"         (part of the package: skipped)
      intel-rapl:0:1/        name = "dram"
      intel-rapl:1/          name = "package-1"    (second socket)  or  name = "psys" (skipped)

AMD Zen CPUs appear under the same ``intel-rapl`` control type on recent kernels (package
domain only, no DRAM). We read the ``package-N`` zones as ``cpuN-package`` and their ``dram``
sub-zones as ``cpuN-dram``; ``core``/``uncore`` are parts of the package and ``psys`` contains
it, so adding them would count the same joules twice.

Units and update rate: ``energy_uj`` is a cumulative counter in **µJ** that wraps to 0 after
``max_energy_range_uj``. The hardware updates it about every 1 ms (Intel SDM vol. 3B, "Platform
Specific Power Management Support"/RAPL; measured ~1 ms by Hähnel et al., "Measuring energy
consumption for short code paths using RAPL", SIGMETRICS PER 40(3), 2012), hence
``counter_period_s = 0.001``.

Wraparound: a reading lower than the previous one means the counter wrapped once, and the
energy is ``max_energy_range_uj - previous + current``. **Several wraps between two readings
cannot be detected**: keep readings closer together than ``max_energy_range_uj / peak power``
(e.g. 262,143 J on many Intel servers: ~20 min at 200 W). The meter's background sampler
(default every 0.1 s) reads far more often than that; do not turn it off for long windows.
The running totals are guarded by a lock, so the sampler and window edges may read at once.

Permissions: since Linux 5.10 (and stable backports), ``energy_uj`` is readable by root only,
a fix for the PLATYPUS power side channel (CVE-2020-8694). The error says how to grant access.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from perwatt.errors import RAPLUnavailableError
from perwatt.meter.source import PowerSource

_ZONE_DIR = re.compile(r"intel-rapl:(\d+)(?::(\d+))?")
_PACKAGE = re.compile(r"package-(\d+)(?:-die-(\d+))?")


def _read_text(path: Path) -> str:
    """One sysfs read (a seam for tests: the suite runs as root, where chmod cannot deny)."""
    return path.read_text()


@dataclass(slots=True)
class _Zone:
    device: str
    energy_path: Path
    max_range_uj: int
    last_uj: int = 0
    total_uj: int = 0


def _permission_hint(path: Path, root: Path) -> str:
    return (
        f"cannot read {path}: permission denied; Linux >= 5.10 makes energy_uj readable by root "
        f"only (CVE-2020-8694): run as root or `sudo chmod o+r {root}/intel-rapl:*/energy_uj` "
        "(until reboot)"
    )


class RAPLSource(PowerSource):
    """CPU package and DRAM energy counters from ``/sys/class/powercap`` (see module docstring)."""

    name = "rapl"
    energy_label = "rapl"
    power_label = "rapl"
    counter_period_s: float | None = 0.001

    def __init__(self, root: str | Path = "/sys/class/powercap") -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise RAPLUnavailableError(
                f"no {self.root}: not Linux or no RAPL driver (try `modprobe intel_rapl_msr`)"
            )
        self._lock = threading.Lock()
        self._zones = self._discover()
        if not self._zones:
            raise RAPLUnavailableError(
                f"no RAPL package zones under {self.root}: the intel_rapl driver is not loaded "
                "(`modprobe intel_rapl_msr`) or this CPU / VM does not expose RAPL"
            )
        for z in self._zones:
            z.last_uj = self._read_uj(z.energy_path)

    # ------------------------------------------------------------------ discovery
    def _zone_dirs(self) -> dict[str, Path]:
        # /sys/class/powercap lists every zone flat (symlinks); /sys/devices/virtual/powercap
        # nests them. Accept both, once per zone name.
        found: dict[str, Path] = {}
        for pattern in (
            "intel-rapl:*",
            "intel-rapl:*/intel-rapl:*",
            "intel-rapl/intel-rapl:*",
            "intel-rapl/intel-rapl:*/intel-rapl:*",
        ):
            for p in sorted(self.root.glob(pattern)):
                if _ZONE_DIR.fullmatch(p.name) and p.is_dir():
                    found.setdefault(p.name, p)
        return found

    def _read_field(self, path: Path) -> str:
        try:
            return _read_text(path).strip()
        except PermissionError as e:
            raise RAPLUnavailableError(_permission_hint(path, self.root)) from e
        except OSError as e:
            raise RAPLUnavailableError(f"cannot read {path}: {e.strerror or e}") from e

    def _read_uj(self, path: Path) -> int:
        text = self._read_field(path)
        try:
            value = int(text)
        except ValueError:
            raise RAPLUnavailableError(f"{path}: expected an integer (µJ), got {text!r}") from None
        if value < 0:
            raise RAPLUnavailableError(f"{path}: negative energy counter {value}")
        return value

    def _discover(self) -> list[_Zone]:
        dirs = self._zone_dirs()
        package_of: dict[str, str] = {}  # "0" -> "cpu0", from intel-rapl:0/name = package-0
        zones: list[tuple[tuple[int, int], _Zone]] = []
        for dirname, path in dirs.items():
            m = _ZONE_DIR.fullmatch(dirname)
            assert m is not None
            if m.group(2) is not None:
                continue
            name = self._read_field(path / "name")
            pm = _PACKAGE.fullmatch(name)
            if pm is None:
                continue  # psys (contains the packages) or an unknown domain
            cpu = f"cpu{pm.group(1)}" + (f"-die{pm.group(2)}" if pm.group(2) is not None else "")
            package_of[m.group(1)] = cpu
            zones.append(((int(m.group(1)), -1), self._zone(f"{cpu}-package", path)))
        for dirname, path in dirs.items():
            m = _ZONE_DIR.fullmatch(dirname)
            assert m is not None
            if m.group(2) is None or m.group(1) not in package_of:
                continue
            if self._read_field(path / "name") != "dram":
                continue  # core / uncore are parts of the package already counted
            dev = f"{package_of[m.group(1)]}-dram"
            zones.append(((int(m.group(1)), int(m.group(2))), self._zone(dev, path)))
        zones.sort(key=lambda kz: kz[0])
        return [z for _, z in zones]

    def _zone(self, device: str, path: Path) -> _Zone:
        max_range = self._read_uj(path / "max_energy_range_uj")
        if max_range <= 0:
            raise RAPLUnavailableError(f"{path}/max_energy_range_uj is {max_range}; expected > 0")
        return _Zone(device=device, energy_path=path / "energy_uj", max_range_uj=max_range)

    # ------------------------------------------------------------------ PowerSource
    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(z.device for z in self._zones)

    @property
    def has_energy_counter(self) -> bool:
        return True

    def read_energy_j(self) -> Mapping[str, float]:
        """Joules per domain since this source was created; monotonic across one wrap per read."""
        with self._lock:
            out: dict[str, float] = {}
            for z in self._zones:
                raw = self._read_uj(z.energy_path)
                # Lower than last time: wrapped once (several wraps cannot be told apart).
                wrapped = raw < z.last_uj
                z.total_uj += (z.max_range_uj - z.last_uj + raw) if wrapped else raw - z.last_uj
                z.last_uj = raw
                out[z.device] = z.total_uj / 1e6  # µJ -> J
            return out

    def read_power_w(self) -> Mapping[str, float] | None:
        return None  # counter only: the meter derives power from successive readings

    def describe(self) -> str:
        return f"rapl: {', '.join(self.devices)} (Linux powercap energy counters, {self.root})"
