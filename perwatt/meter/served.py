"""The power model a perwatt test server serves, read over HTTP. Labelled ``simulated``: never a
measurement.

``python -m perwatt.bench.testing --precision fp8`` simulates a deployment whose power follows
its own load (requests in flight, at that precision's speed) and answers ``GET /perwatt/power``
with its energy counter and instant power. This source reads them, so a benchmark run on the same
machine meters the *server's* model — what a GPU counter would show for that deployment — rather
than a model driven by the client's view of the load. It exists for demos and tests: the README
quick start runs two such servers (BF16 and FP8) and compares them.

``perwatt bench --energy-source simulated`` uses it on its own when the server under test serves
a power model (:func:`probe_served_power`); ``--source simulated:URL`` names one explicitly.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import httpx

from perwatt.errors import ConfigError, RemoteSourceError
from perwatt.meter.source import PowerSource

POWER_PATH: Final = "/perwatt/power"
POWER_SCHEMA: Final = "perwatt.testing.power/1"


def power_url(url: str) -> str:
    """The power endpoint of a server given by its base URL (``http://h:8000/v1``, ``h:8000``)."""
    raw = url.strip()
    if "://" not in raw:
        raw = "http://" + raw
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"not an http(s) URL for a simulated power model: {url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith(POWER_PATH):
        path = POWER_PATH  # a base URL (…/v1) or a bare host:port: the server's endpoint
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _parse(obj: Any, url: str) -> dict[str, tuple[float, float]]:
    """``{device: (energy_j, power_w)}`` from the endpoint's JSON, or a one-line error."""
    if not isinstance(obj, dict) or obj.get("schema") != POWER_SCHEMA:
        raise RemoteSourceError(f"{url} is not a perwatt test server's power model")
    devs = obj.get("devices")
    out: dict[str, tuple[float, float]] = {}
    if isinstance(devs, dict):
        for name, d in devs.items():
            if not isinstance(d, dict):
                continue
            e, p = d.get("energy_j"), d.get("power_w")
            if not (isinstance(e, int | float) and isinstance(p, int | float)):
                continue
            if math.isfinite(e) and math.isfinite(p) and e >= 0 and p >= 0:
                out[str(name)] = (float(e), float(p))
    if not out:
        raise RemoteSourceError(f"{url}: the power model lists no devices")
    return out


class ServedSimulatedSource(PowerSource):
    """A perwatt test server's simulated power, read from its ``/perwatt/power`` endpoint."""

    name = "simulated"
    energy_label = "simulated"
    power_label = "simulated"

    def __init__(self, url: str, *, timeout_s: float = 2.0) -> None:
        self.url = power_url(url)
        self.timeout_s = timeout_s
        self._client = httpx.Client(timeout=timeout_s)
        self._lock = threading.Lock()
        try:
            first = self._get()
        except BaseException:
            self._client.close()
            raise
        self._devices = tuple(first["devices"])
        self._info = first

    def _get(self) -> dict[str, Any]:
        with self._lock:
            try:
                r = self._client.get(self.url)
            except httpx.HTTPError as e:
                raise RemoteSourceError(
                    f"cannot read the simulated power model at {self.url} ({e}): is the perwatt "
                    "test server still running?"
                ) from None
        if r.status_code != 200:
            raise RemoteSourceError(
                f"{self.url} answered HTTP {r.status_code}: not a perwatt test server's power "
                "model (start one with python -m perwatt.bench.testing)"
            )
        try:
            obj = r.json()
        except ValueError:
            raise RemoteSourceError(f"{self.url} did not answer JSON") from None
        devices = _parse(obj, self.url)
        return {"devices": devices, "precision": obj.get("precision"), "raw": obj}

    @property
    def devices(self) -> tuple[str, ...]:
        return self._devices

    @property
    def has_energy_counter(self) -> bool:
        return True

    def read_energy_j(self) -> Mapping[str, float]:
        devs = self._get()["devices"]
        return {d: devs[d][0] for d in self._devices if d in devs}

    def read_power_w(self) -> Mapping[str, float]:
        devs = self._get()["devices"]
        return {d: devs[d][1] for d in self._devices if d in devs}

    def describe(self) -> str:
        raw = self._info["raw"]
        prec = self._info["precision"]
        what = f"{prec} deployment, " if prec else ""
        return (
            f"simulated: power model of the perwatt test server at {self.url} ({what}idle "
            f"{raw.get('idle_w', 0):g} W, busy {raw.get('busy_w', 0):g} W; a model, not a "
            "measurement)"
        )

    def close(self) -> None:
        self._client.close()


def probe_served_power(base_url: str, *, timeout_s: float = 2.0) -> ServedSimulatedSource | None:
    """The server's power model when ``base_url``'s server serves one, else ``None`` (quietly:
    a real server answers 404 and gets the client-side simulated model instead)."""
    try:
        return ServedSimulatedSource(base_url, timeout_s=timeout_s)
    except (RemoteSourceError, ConfigError):
        return None
