"""Remote GPU energy: scrape dcgm-exporter, or ask the Prometheus server that already scrapes it.

At cluster scale GPU telemetry usually flows ``DCGM -> dcgm-exporter (:9400/metrics) ->
Prometheus``. perwatt can read either end:

* :class:`DCGMSource` scrapes one or more dcgm-exporter ``/metrics`` pages directly (a
  comma-separated URL list meters several nodes at once);
* :class:`PrometheusSource` runs instant queries against the Prometheus HTTP API for live
  windows, and :func:`prometheus_energy_between` uses ``/api/v1/query_range`` for windows
  chosen after the fact (a benchmark that ran last night).

Two DCGM fields matter (both in dcgm-exporter's ``default-counters.csv``):

==========================================  =======  ==========================================
``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION``    counter  energy since the driver loaded, in **mJ**
``DCGM_FI_DEV_POWER_USAGE``                 gauge    board power, in **W**
==========================================  =======  ==========================================

(units from the exporter's own ``# HELP`` lines: "Total energy consumption since boot (in mJ)",
"Power draw (in W)"). Figures from either source are labelled ``dcgm``.

How fresh is a reading? dcgm-exporter refreshes its cache every ``--collect-interval``
milliseconds, 30000 by default (``DCGM_EXPORTER_INTERVAL``; NVIDIA/dcgm-exporter
``pkg/cmd/app.go``), and NVIDIA's docs note that scraping faster than that returns the same
cached sample again. So ``counter_period_s`` defaults to 30 s: a window shorter than the
exporter's interval is flagged by the meter. Run the exporter with ``-c 1000`` and pass
``collect_interval_s=1.0`` for second-scale windows. Through Prometheus the effective period is
the larger of that and the ``scrape_interval``.

Device labels are ``<Hostname>/gpu<gpu>`` (``node1/gpu0``), unique across nodes. Where the
exporter runs with ``--no-hostname`` the URL's ``host:port`` stands in for the hostname.
Series that repeat one physical GPU (MIG instances carrying ``GPU_I_ID``, or Kubernetes pod
labels on a shared GPU) carry the device-level counter, so the first series per GPU is used.

Failure semantics (all :class:`~perwatt.errors.RemoteSourceError`, naming the URL and what to
check): exporter down, timeout, non-200, a body that is not the Prometheus text format, a page
with neither field, and **a GPU that was present and is now missing from a scrape**. We raise
rather than hold the last value: holding would silently under-count the window. A failed read
at a window edge raises from :meth:`Meter.end`; ``perwatt meter`` (:func:`measure_command`) then
reports the energy up to the last good reading, marked partial. If the GPU comes back, reads
resume.

Counter resets (driver reload, node reboot, GPU reset: the raw value goes *down*) are folded
into a per-device offset, the way Prometheus' ``increase()`` treats counter resets, so
:meth:`DCGMSource.read_energy_j` stays monotonic. Energy between the last reading before the
reset and the reset itself is lost; each reset is logged.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from perwatt.errors import ConfigError, DataFormatError, RemoteSourceError, UnknownDeviceError
from perwatt.meter.integrate import trapezoid_between
from perwatt.meter.prom_text import PromSample, parse_text
from perwatt.meter.source import PowerSource

log = logging.getLogger(__name__)

ENERGY_METRIC = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"  # mJ, counter
POWER_METRIC = "DCGM_FI_DEV_POWER_USAGE"  # W, gauge

#: dcgm-exporter's default ``--collect-interval`` (30000 ms), NVIDIA/dcgm-exporter pkg/cmd/app.go.
DEFAULT_COLLECT_INTERVAL_S = 30.0

# DCGM's "no value" sentinels (dcgm_structs.h): DCGM_INT64_BLANK = 0x7ffffffffffffff0 and the
# NOT_FOUND/NOT_SUPPORTED/NOT_PERMISSIONED codes just above it; DCGM_FP64_BLANK = 2**47 = 140737488355328.0
# and its siblings. An exporter that cannot read a field may print one of these.
_INT64_BLANK = float(0x7FFFFFFFFFFFFFF0)
_FP64_BLANK = 140737488355328.0

# Prometheus refuses more than 11,000 points per series in one query_range.
_MAX_POINTS = 11_000


def _is_blank(value: float, sentinel: float) -> bool:
    return math.isnan(value) or math.isinf(value) or value < 0 or value >= sentinel


def _normalise_exporter_url(raw: str) -> str:
    url = raw.strip()
    if not url:
        raise ConfigError("empty dcgm-exporter URL")
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"not an http(s) URL for dcgm-exporter: {raw!r} (e.g. http://node1:9400)")
    path = parts.path if parts.path not in ("", "/") else "/metrics"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def _http_failure(what: str, url: str, e: httpx.HTTPError, timeout_s: float) -> RemoteSourceError:
    if isinstance(e, httpx.TimeoutException):
        return RemoteSourceError(
            f"{what} at {url} did not answer within {timeout_s:g} s: check that it is "
            f"healthy (curl {url}); a loaded one may need a longer timeout (timeout_s in the "
            "Python API)"
        )
    if isinstance(e, httpx.ConnectError):
        return RemoteSourceError(
            f"cannot connect to {what} at {url} ({e}): check that it is running and that the "
            "host and port are reachable from here"
        )
    return RemoteSourceError(f"request to {what} at {url} failed: {type(e).__name__}: {e}")


class _CounterResets:
    """Makes a counter that may restart from zero monotonic (Prometheus ``increase()`` rule)."""

    def __init__(self) -> None:
        self._last_raw: dict[str, float] = {}
        self._offset: dict[str, float] = {}
        self.resets: dict[str, int] = {}

    def update(self, dev: str, raw: float, where: str) -> float:
        last = self._last_raw.get(dev)
        if last is not None and raw < last:
            self._offset[dev] = self._offset.get(dev, 0.0) + last
            self.resets[dev] = self.resets.get(dev, 0) + 1
            log.warning(
                "%s: energy counter of %s went down (%.3f J -> %.3f J): counter reset "
                "(driver reload, reboot or GPU reset); carrying an offset",
                where,
                dev,
                last,
                raw,
            )
        self._last_raw[dev] = raw
        return self._offset.get(dev, 0.0) + raw


@dataclass(slots=True)
class _GPU:
    label: str
    gpu: str
    uuid: str
    url: str
    model: str = ""
    energy_j: float | None = None
    power_w: float | None = None


@dataclass(slots=True)
class _Scrape:
    t: float
    gpus: dict[str, _GPU] = field(default_factory=dict)


def _gpus_from_page(samples: Sequence[PromSample], url: str) -> dict[str, _GPU]:
    """GPU readings on one page, keyed by device label; first series per GPU wins (MIG/pods)."""
    fallback_host = urlsplit(url).netloc
    out: dict[str, _GPU] = {}
    for s in samples:
        if s.name not in (ENERGY_METRIC, POWER_METRIC):
            continue
        gpu = s.labels.get("gpu")
        if gpu is None or gpu == "":
            continue  # not a GPU entity
        host = s.labels.get("Hostname") or fallback_host
        label = f"{host}/gpu{gpu}"
        g = out.get(label)
        if g is None:
            g = out[label] = _GPU(
                label=label,
                gpu=gpu,
                uuid=s.labels.get("UUID", ""),
                url=url,
                model=s.labels.get("modelName", ""),
            )
        if s.name == ENERGY_METRIC:
            if g.energy_j is None and not _is_blank(s.value, _INT64_BLANK):
                g.energy_j = s.value / 1e3  # mJ -> J
        elif g.power_w is None and not _is_blank(s.value, _FP64_BLANK):
            g.power_w = s.value
    # A GPU whose fields are all blank has nothing to offer (and is "missing" if it had before).
    return {k: g for k, g in out.items() if g.energy_j is not None or g.power_w is not None}


class DCGMSource(PowerSource):
    """GPU energy from one or more dcgm-exporter ``/metrics`` endpoints. See the module docstring.

    ``url``: ``http://node1:9400/metrics`` or a comma-separated list of them (``/metrics`` is added
    when the path is empty, ``http://`` when the scheme is missing). ``gpus`` keeps only the GPUs
    named by index (``"0"``), UUID (``"GPU-…"``) or device label (``"node1/gpu0"``).
    ``collect_interval_s`` is the exporter's ``--collect-interval`` (becomes
    ``counter_period_s``); ``reuse_s`` lets a power read reuse the energy read's scrape when they
    are that close together (the meter asks for both in one sample).
    """

    name = "dcgm"
    energy_label = "dcgm"
    power_label = "dcgm"

    def __init__(
        self,
        url: str,
        *,
        gpus: Sequence[str] | None = None,
        timeout_s: float = 2.0,
        collect_interval_s: float | None = DEFAULT_COLLECT_INTERVAL_S,
        reuse_s: float = 0.05,
    ) -> None:
        if not (timeout_s > 0 and math.isfinite(timeout_s)):
            raise ConfigError(f"timeout_s must be a positive number, got {timeout_s}")
        if collect_interval_s is not None and not collect_interval_s > 0:
            raise ConfigError(f"collect_interval_s must be positive, got {collect_interval_s}")
        urls = [_normalise_exporter_url(u) for u in url.split(",") if u.strip()]
        if not urls:
            raise ConfigError("no dcgm-exporter URL given (e.g. http://node1:9400/metrics)")
        if len(set(urls)) != len(urls):
            raise ConfigError(f"dcgm-exporter URL listed twice: {url}")
        self.urls: tuple[str, ...] = tuple(urls)
        self.timeout_s = timeout_s
        self.counter_period_s = collect_interval_s
        self.reuse_s = reuse_s
        self._client = httpx.Client(timeout=timeout_s, follow_redirects=True)
        self._lock = threading.Lock()
        self._last: _Scrape | None = None
        self._resets = _CounterResets()
        try:
            first = self._scrape(max_age_s=0.0)
        except BaseException:
            self._client.close()
            raise
        found = first.gpus
        if not found:
            self._client.close()
            raise RemoteSourceError(
                f"no {ENERGY_METRIC} or {POWER_METRIC} samples at {', '.join(self.urls)}: "
                "is this a dcgm-exporter, and are both fields in its collectors CSV "
                "(default-counters.csv has them)?"
            )
        chosen = sorted(found, key=_device_sort_key)
        if gpus is not None:
            chosen = []
            for want in gpus:
                hits = [lab for lab, g in found.items() if want in (lab, g.gpu, g.uuid)]
                if not hits:
                    self._client.close()
                    raise UnknownDeviceError(
                        f"GPU {want!r} not found at {', '.join(self.urls)}; available: "
                        + ", ".join(sorted(found, key=_device_sort_key))
                    )
                chosen += [h for h in hits if h not in chosen]
        self._devices = tuple(chosen)
        self._has_counter = all(found[d].energy_j is not None for d in self._devices)
        self._models = {d: found[d].model for d in self._devices}

    # ------------------------------------------------------------------ scraping
    def _fetch(self, url: str) -> dict[str, _GPU]:
        try:
            r = self._client.get(url)
        except httpx.HTTPError as e:
            raise _http_failure("dcgm-exporter", url, e, self.timeout_s) from e
        if r.status_code != 200:
            raise RemoteSourceError(
                f"dcgm-exporter at {url} answered HTTP {r.status_code} "
                f"{r.reason_phrase}: expected 200; check the URL (the exporter serves /metrics, "
                "port 9400 by default)"
            )
        try:
            doc = parse_text(r.text, source=url)
        except DataFormatError as e:
            raise RemoteSourceError(
                f"garbage from {url}, not the Prometheus text format ({e}); "
                "is this a dcgm-exporter /metrics URL?"
            ) from e
        return _gpus_from_page(doc.samples, url)

    def _scrape(self, *, max_age_s: float) -> _Scrape:
        with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._last.t <= max_age_s:
                return self._last
            gpus: dict[str, _GPU] = {}
            for url in self.urls:
                for label, g in self._fetch(url).items():
                    if label in gpus:
                        raise RemoteSourceError(
                            f"{label} is reported by both {gpus[label].url} and {url}: two "
                            "exporters on one node, or two nodes with the same Hostname"
                        )
                    gpus[label] = g
            for label, g in gpus.items():
                if g.energy_j is not None:
                    g.energy_j = self._resets.update(label, g.energy_j, g.url)
            self._last = _Scrape(now, gpus)
            return self._last

    def _values(self, scrape: _Scrape, what: str) -> dict[str, float]:
        """``energy_j`` or ``power_w`` of every chosen GPU; a GPU missing from the scrape raises."""
        out: dict[str, float] = {}
        missing: list[str] = []
        for d in self._devices:
            g = scrape.gpus.get(d)
            v = None if g is None else (g.energy_j if what == "energy" else g.power_w)
            if v is None:
                missing.append(d)
            else:
                out[d] = v
        if missing:
            urls = sorted(
                {scrape.gpus[d].url if d in scrape.gpus else "its exporter" for d in missing}
            )
            raise RemoteSourceError(
                f"{', '.join(missing)} present in earlier scrapes but missing {what} now "
                f"({', '.join(urls)}): the GPU may have fallen off the bus or been reset, or the "
                "exporter restarted with other --devices; check nvidia-smi and the exporter log "
                "on that node"
            )
        return out

    # ------------------------------------------------------------------ PowerSource
    @property
    def devices(self) -> tuple[str, ...]:
        return self._devices

    @property
    def has_energy_counter(self) -> bool:
        return self._has_counter

    @property
    def resets(self) -> Mapping[str, int]:
        """Counter resets seen per device since this source was created."""
        return dict(self._resets.resets)

    def read_energy_j(self) -> Mapping[str, float] | None:
        if not self._has_counter:
            return None
        return self._values(self._scrape(max_age_s=self.reuse_s), "energy")

    def read_power_w(self) -> Mapping[str, float] | None:
        scrape = self._scrape(max_age_s=self.reuse_s)
        if self._has_counter and any(
            d in scrape.gpus and scrape.gpus[d].power_w is None for d in self._devices
        ):
            return None  # counter-only exporter: the meter derives power from the counter
        return self._values(scrape, "power")

    def describe(self) -> str:
        nodes = len({d.split("/", 1)[0] for d in self._devices})
        models = sorted({m for m in self._models.values() if m})
        what = ENERGY_METRIC if self._has_counter else f"{POWER_METRIC} (integrated; no counter)"
        period = (
            f"refreshed every ~{self.counter_period_s:g} s"
            if self.counter_period_s is not None
            else "refresh interval unknown"
        )
        return (
            f"dcgm: {len(self._devices)} GPU(s) on {nodes} node(s)"
            + (f" ({', '.join(models)})" if models else "")
            + f" via dcgm-exporter {', '.join(self.urls)}; {what}, {period}"
        )

    def close(self) -> None:
        self._client.close()


def _device_sort_key(label: str) -> tuple[str, int, str]:
    host, _, gpu = label.rpartition("/gpu")
    return (host, int(gpu) if gpu.isdigit() else -1, gpu)


# ====================================================================== Prometheus HTTP API
def _normalise_selector(selector: str) -> str:
    sel = selector.strip()
    if sel.startswith("{") and sel.endswith("}"):
        sel = sel[1:-1].strip()
    if "{" in sel or "}" in sel:
        raise ConfigError(
            f"query_selector should be label matchers like 'Hostname=~\"node[12]\"', got {selector!r}"
        )
    return sel


def _query(metric: str, selector: str) -> str:
    return f"{metric}{{{selector}}}" if selector else metric


def _prom_label(metric: Mapping[str, str]) -> str | None:
    gpu = metric.get("gpu")
    if gpu is None or gpu == "":
        return None
    host = metric.get("Hostname") or metric.get("instance") or "?"
    return f"{host}/gpu{gpu}"


def _prom_float(raw: object, where: str) -> float:
    if not isinstance(raw, str):
        raise RemoteSourceError(f"{where}: sample value {raw!r} is not a string")
    try:
        return float(raw)
    except ValueError:
        raise RemoteSourceError(f"{where}: sample value {raw!r} is not a number") from None


class _PromAPI:
    """A thin client for ``/api/v1/query`` and ``/api/v1/query_range``; maps every failure."""

    def __init__(self, url: str, timeout_s: float) -> None:
        base = url.strip().rstrip("/")
        if not base:
            raise ConfigError("empty Prometheus URL (e.g. http://prometheus:9090)")
        if "://" not in base:
            base = "http://" + base
        for suffix in ("/api/v1/query_range", "/api/v1/query"):
            if base.endswith(suffix):
                base = base[: -len(suffix)]
        self.url = base
        self.timeout_s = timeout_s
        self.client = httpx.Client(timeout=timeout_s, follow_redirects=True)

    def close(self) -> None:
        self.client.close()

    def call(self, path: str, params: Mapping[str, str]) -> list[dict[str, Any]]:
        url = self.url + path
        query = params.get("query", "")
        try:
            r = self.client.get(url, params=dict(params))
        except httpx.HTTPError as e:
            raise _http_failure("Prometheus", url, e, self.timeout_s) from e
        try:
            body = r.json()
        except ValueError:
            raise RemoteSourceError(
                f"Prometheus at {url} answered HTTP {r.status_code} with a body that is not "
                f"JSON: is {self.url} a Prometheus server (e.g. http://prometheus:9090)?"
            ) from None
        if not isinstance(body, dict) or "status" not in body:
            raise RemoteSourceError(f"Prometheus at {url}: unexpected JSON (no 'status' field)")
        if body["status"] == "error":
            raise RemoteSourceError(
                f"Prometheus at {url} rejected {query!r}: "
                f"{body.get('errorType', 'error')}: {body.get('error', '(no message)')}"
            )
        if body["status"] != "success" or r.status_code != 200:
            raise RemoteSourceError(
                f"Prometheus at {url} answered HTTP {r.status_code}, status {body['status']!r}"
            )
        data = body.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("result"), list):
            raise RemoteSourceError(f"Prometheus at {url}: response has no data.result list")
        want = "matrix" if path.endswith("query_range") else "vector"
        if data.get("resultType") != want:
            raise RemoteSourceError(
                f"Prometheus at {url}: expected a {want} result for {query!r}, "
                f"got {data.get('resultType')!r}"
            )
        out: list[dict[str, Any]] = []
        for item in data["result"]:
            if not isinstance(item, dict) or not isinstance(item.get("metric"), dict):
                raise RemoteSourceError(f"Prometheus at {url}: malformed series {item!r:.200}")
            out.append(item)
        return out

    def instant(self, metric: str, selector: str) -> dict[str, float]:
        """Latest value per GPU label (first series per GPU, as for the exporter)."""
        where = f"Prometheus {self.url}"
        out: dict[str, float] = {}
        for item in self.call("/api/v1/query", {"query": _query(metric, selector)}):
            label = _prom_label(item["metric"])
            value = item.get("value")
            if label is None or label in out:
                continue
            if not isinstance(value, list) or len(value) != 2:
                raise RemoteSourceError(f"{where}: malformed instant sample {value!r}")
            out[label] = _prom_float(value[1], where)
        return out

    def range(
        self, metric: str, selector: str, start_s: float, end_s: float, step_s: float
    ) -> dict[str, list[tuple[float, float]]]:
        """``(t, value)`` per GPU label over ``[start_s, end_s]`` on a ``step_s`` grid."""
        where = f"Prometheus {self.url}"
        params = {
            "query": _query(metric, selector),
            "start": f"{start_s:.3f}",
            "end": f"{end_s:.3f}",
            "step": f"{step_s:g}",
        }
        out: dict[str, list[tuple[float, float]]] = {}
        for item in self.call("/api/v1/query_range", params):
            label = _prom_label(item["metric"])
            values = item.get("values")
            if label is None or label in out:
                continue
            if not isinstance(values, list):
                raise RemoteSourceError(f"{where}: series without a values list")
            pts: list[tuple[float, float]] = []
            for pair in values:
                if not isinstance(pair, list) or len(pair) != 2:
                    raise RemoteSourceError(f"{where}: malformed range sample {pair!r}")
                t = _prom_float(str(pair[0]), where)
                pts.append((t, _prom_float(pair[1], where)))
            out[label] = pts
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteEnergy:
    """Energy per GPU over a past window, from Prometheus, and how each figure was obtained."""

    start_unix_s: float
    end_unix_s: float
    energy_j: Mapping[str, float]
    methods: Mapping[str, str]  # "counter" (energy counter increase) or "power-integral"
    warnings: tuple[str, ...] = ()
    source: str = "dcgm"

    def __post_init__(self) -> None:
        if self.end_unix_s <= self.start_unix_s:
            raise ValueError("window must end after it starts")
        if set(self.energy_j) != set(self.methods):
            raise ValueError("energy_j and methods must name the same devices")

    @property
    def total_energy_j(self) -> float:
        return sum(self.energy_j.values())


def _counter_increase(values: Sequence[float]) -> tuple[float, int]:
    """Sum of increases; a drop is a restart from zero (Prometheus ``increase()`` rule)."""
    total = 0.0
    resets = 0
    for a, b in itertools.pairwise(values):
        if b >= a:
            total += b - a
        else:
            total += b
            resets += 1
    return total, resets


def energy_between(
    api: _PromAPI,
    start_unix_s: float,
    end_unix_s: float,
    selector: str = "",
    *,
    step_s: float | None = None,
    devices: Sequence[str] | None = None,
) -> RemoteEnergy:
    """Energy per GPU over ``[start, end]`` (Unix seconds) from Prometheus' stored series.

    Each ``query_range`` point is the latest sample at or before that instant, so a figure is
    exact between the scrapes nearest the window edges and uncertain by at most one scrape
    interval of power at each edge. GPUs without the energy counter fall back to integrating
    ``POWER_USAGE`` (trapezoid rule over the step grid).
    """
    if not (math.isfinite(start_unix_s) and math.isfinite(end_unix_s)):
        raise ConfigError("window edges must be finite Unix times")
    if end_unix_s <= start_unix_s:
        raise ConfigError(f"window ends before it starts: [{start_unix_s}, {end_unix_s}]")
    span = end_unix_s - start_unix_s
    if step_s is None:
        step_s = max(1.0, math.ceil(span / 10_000))
    if not (step_s > 0 and math.isfinite(step_s)):
        raise ConfigError(f"step must be a positive number of seconds, got {step_s}")
    if span / step_s + 1 > _MAX_POINTS:
        raise ConfigError(
            f"a {span:g} s window at step {step_s:g} s needs {span / step_s + 1:.0f} points; "
            f"Prometheus allows {_MAX_POINTS}: use a step of at least {span / (_MAX_POINTS - 1):.3g} s"
        )
    sel = _normalise_selector(selector)
    energy = api.range(ENERGY_METRIC, sel, start_unix_s, end_unix_s, step_s)
    power = api.range(POWER_METRIC, sel, start_unix_s, end_unix_s, step_s)
    wanted = sorted(set(energy) | set(power), key=_device_sort_key)
    if devices is not None:
        wanted = [d for d in devices]
    if not wanted:
        raise RemoteSourceError(
            f"Prometheus {api.url} has no {ENERGY_METRIC} or {POWER_METRIC} series"
            + (f" matching {{{sel}}}" if sel else "")
            + f" between {start_unix_s:.0f} and {end_unix_s:.0f}: is dcgm-exporter scraped there?"
        )
    out: dict[str, float] = {}
    methods: dict[str, str] = {}
    warnings: list[str] = []
    for dev in wanted:
        e_pts = energy.get(dev, [])
        p_pts = power.get(dev, [])
        if len(e_pts) >= 2:
            inc_mj, resets = _counter_increase([v for _, v in e_pts])
            out[dev] = inc_mj / 1e3
            methods[dev] = "counter"
            if resets:
                warnings.append(f"{dev}: {resets} counter reset(s) in the window")
            pts = e_pts
        elif len(p_pts) >= 2:
            ts = [t for t, _ in p_pts]
            out[dev] = trapezoid_between(ts, [v for _, v in p_pts], start_unix_s, end_unix_s)
            methods[dev] = "power-integral"
            pts = p_pts
        else:
            warnings.append(f"{dev}: fewer than 2 points in the window; no energy figure")
            continue
        if pts[0][0] > start_unix_s + step_s or pts[-1][0] < end_unix_s - step_s:
            warnings.append(
                f"{dev}: data covers only [{pts[0][0]:.0f}, {pts[-1][0]:.0f}] of the window "
                f"[{start_unix_s:.0f}, {end_unix_s:.0f}]"
            )
    for w in warnings:
        log.warning("prometheus energy: %s", w)
    return RemoteEnergy(
        start_unix_s=start_unix_s,
        end_unix_s=end_unix_s,
        energy_j=out,
        methods=methods,
        warnings=tuple(warnings),
    )


def prometheus_energy_between(
    url: str,
    start_unix_s: float,
    end_unix_s: float,
    selector: str = "",
    *,
    step_s: float | None = None,
    timeout_s: float = 5.0,
) -> dict[str, float]:
    """Joules per GPU (``node1/gpu0``) over a past window, from a Prometheus server at ``url``.

    The energy counter's increase where it exists, otherwise the integral of ``POWER_USAGE``;
    figures are labelled ``dcgm``. Use :func:`energy_between` for the method per GPU and warnings.
    """
    api = _PromAPI(url, timeout_s)
    try:
        return dict(energy_between(api, start_unix_s, end_unix_s, selector, step_s=step_s).energy_j)
    finally:
        api.close()


class PrometheusSource(PowerSource):
    """Live GPU energy from a Prometheus server that scrapes dcgm-exporter.

    ``url`` is the server (``http://prometheus:9090``); ``query_selector`` narrows the series,
    e.g. ``'Hostname=~"node[12]"'``. Each read is an instant query, so a reading is as fresh as
    the last scrape; ``counter_period_s`` defaults to dcgm-exporter's 30 s collection interval.
    """

    name = "prometheus"
    energy_label = "dcgm"
    power_label = "dcgm"

    def __init__(
        self,
        url: str,
        *,
        query_selector: str = "",
        timeout_s: float = 5.0,
        counter_period_s: float | None = DEFAULT_COLLECT_INTERVAL_S,
    ) -> None:
        if not (timeout_s > 0 and math.isfinite(timeout_s)):
            raise ConfigError(f"timeout_s must be a positive number, got {timeout_s}")
        self.selector = _normalise_selector(query_selector)
        self.counter_period_s = counter_period_s
        self._api = _PromAPI(url, timeout_s)
        self._lock = threading.Lock()
        self._resets = _CounterResets()
        try:
            energy = self._api.instant(ENERGY_METRIC, self.selector)
            power = self._api.instant(POWER_METRIC, self.selector)
        except BaseException:
            self._api.close()
            raise
        found = set(energy) | set(power)
        if not found:
            self._api.close()
            raise RemoteSourceError(
                f"Prometheus {self._api.url} has no {_query(ENERGY_METRIC, self.selector)} "
                f"or {POWER_METRIC} series: is dcgm-exporter scraped there, and does the "
                "selector match?"
            )
        self._devices = tuple(sorted(found, key=_device_sort_key))
        self._has_counter = all(d in energy for d in self._devices)

    @property
    def url(self) -> str:
        return self._api.url

    @property
    def devices(self) -> tuple[str, ...]:
        return self._devices

    @property
    def has_energy_counter(self) -> bool:
        return self._has_counter

    def _missing(self, got: Mapping[str, float], metric: str) -> None:
        missing = [d for d in self._devices if d not in got]
        if missing:
            raise RemoteSourceError(
                f"{', '.join(missing)} no longer in Prometheus {self._api.url} ({metric}): "
                "the exporter stopped reporting that GPU (GPU lost, node down, or scrape "
                "failing); check the target's health on the Prometheus /targets page"
            )

    def read_energy_j(self) -> Mapping[str, float] | None:
        if not self._has_counter:
            return None
        with self._lock:
            raw = self._api.instant(ENERGY_METRIC, self.selector)
            self._missing(raw, ENERGY_METRIC)
            return {d: self._resets.update(d, raw[d] / 1e3, self._api.url) for d in self._devices}

    def read_power_w(self) -> Mapping[str, float] | None:
        with self._lock:
            raw = self._api.instant(POWER_METRIC, self.selector)
        if self._has_counter and not raw:
            return None
        self._missing(raw, POWER_METRIC)
        return {d: raw[d] for d in self._devices}

    def query_range(
        self, start_unix_s: float, end_unix_s: float, step_s: float
    ) -> dict[str, dict[str, list[tuple[float, float]]]]:
        """Raw series over a past window: ``{"energy_j": {dev: [(t, J)]}, "power_w": {...}}``."""
        if end_unix_s <= start_unix_s or not step_s > 0:
            raise ConfigError("query_range needs start < end and a positive step")
        energy = self._api.range(ENERGY_METRIC, self.selector, start_unix_s, end_unix_s, step_s)
        power = self._api.range(POWER_METRIC, self.selector, start_unix_s, end_unix_s, step_s)
        return {
            "energy_j": {d: [(t, v / 1e3) for t, v in pts] for d, pts in energy.items()},
            "power_w": power,
        }

    def energy_between(
        self, start_unix_s: float, end_unix_s: float, *, step_s: float | None = None
    ) -> RemoteEnergy:
        """Energy per GPU of this source over a past window (see :func:`energy_between`)."""
        return energy_between(
            self._api,
            start_unix_s,
            end_unix_s,
            self.selector,
            step_s=step_s,
            devices=[d for d in self._devices],
        )

    def describe(self) -> str:
        what = ENERGY_METRIC if self._has_counter else f"{POWER_METRIC} (integrated)"
        sel = f" {{{self.selector}}}" if self.selector else ""
        return f"dcgm via Prometheus {self._api.url}{sel}: {len(self._devices)} GPU(s); {what}"

    def close(self) -> None:
        self._api.close()
