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
cached sample again. So a direct source declares ``counter_period_s`` = 30 s until told
otherwise (``collect_interval_s``); through Prometheus the period is the scrape interval the
server reports, times the scrapes per counter change it stored. Either way the meter then uses
the period it *observes* (how often the value actually changes), bounds every figure's
quantization error by one period's energy, and falls back to integrated power where that is
tighter (:mod:`perwatt.meter.figure`). Run the exporter with ``-c 1000`` for second-scale
windows.

Device labels are ``<Hostname>/gpu<gpu>`` (``node1/gpu0``), unique across nodes. Where the
exporter runs with ``--no-hostname`` the URL's ``host:port`` stands in for the hostname.
Series that repeat one physical GPU (MIG instances carrying ``GPU_I_ID``, or Kubernetes pod
labels on a shared GPU) carry the device-level counter, so the first series per GPU is used.

Selection (``select=``, the CLI's ``--select``; see :mod:`perwatt.meter.select`): label
matchers such as ``Hostname="node1"`` or ``pod=~"vllm-.*"``, GPU indices and UUIDs. For
Prometheus they become part of every query, so only the metered series are fetched; a
Prometheus that serves GPUs of more than one host is refused without a selection (it would
meter the whole cluster).

Failure semantics. Construction fails with :class:`~perwatt.errors.RemoteSourceError`,
naming the URL and what to check: exporter or Prometheus down, timeout, non-200 (a Prometheus
answering 503 while it starts is retried for ``startup_wait_s`` and then reported as
starting), a body that is not the Prometheus text format or JSON, no matching series. Once
running, the meter reads through :meth:`read` (one request per sample) and never holds an old
value as a live one: a GPU missing from a page, an exporter that does not answer, a series
whose newest sample in Prometheus is older than a few scrape intervals (its target is down), or
a counter that stopped changing (an exporter serving its last page) is reported as *missing*
with the reason; the meter records a gap and marks the figures it affects partial
(:mod:`perwatt.meter.figure`). The older per-quantity reads (``read_energy_j``,
``read_power_w``) raise :class:`~perwatt.errors.RemoteSourceError` instead. If a GPU comes
back, reads resume.

Counter resets (driver reload, node reboot, GPU reset: the raw value goes *down*) are folded
into a per-device offset, the way Prometheus' ``increase()`` treats counter resets, so the
counter stays monotonic. Energy between the last reading before the reset and the reset itself
is lost; each reset is logged and reported in :attr:`Reading.resets`, and the meter states the
energy lost (estimated by integrated power) in the measurement's warnings.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import re
import statistics
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
from perwatt.meter.remote import Reading, RemoteSource
from perwatt.meter.select import Selection, parse_selection

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

    def update(
        self, dev: str, raw: float, where: str, seen: dict[str, float] | None = None
    ) -> float:
        """The monotonic value of ``raw``; a reset records ``dev -> raw`` in ``seen``."""
        last = self._last_raw.get(dev)
        if last is not None and raw < last:
            self._offset[dev] = self._offset.get(dev, 0.0) + last
            self.resets[dev] = self.resets.get(dev, 0) + 1
            if seen is not None:
                seen[dev] = raw
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
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class _Scrape:
    t: float
    gpus: dict[str, _GPU] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # url -> why it could not be read
    resets: dict[str, float] = field(default_factory=dict)  # device -> J since its counter reset


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
                labels=dict(s.labels),
            )
        if s.name == ENERGY_METRIC:
            if g.energy_j is None and not _is_blank(s.value, _INT64_BLANK):
                g.energy_j = s.value / 1e3  # mJ -> J
        elif g.power_w is None and not _is_blank(s.value, _FP64_BLANK):
            g.power_w = s.value
    # A GPU whose fields are all blank has nothing to offer (and is "missing" if it had before).
    return {k: g for k, g in out.items() if g.energy_j is not None or g.power_w is not None}


class DCGMSource(RemoteSource):
    """GPU energy from one or more dcgm-exporter ``/metrics`` endpoints. See the module docstring.

    ``url``: ``http://node1:9400/metrics`` or a comma-separated list of them (``/metrics`` is added
    when the path is empty, ``http://`` when the scheme is missing). ``gpus`` keeps only the GPUs
    named by index (``"0"``), UUID (``"GPU-…"``) or device label (``"node1/gpu0"``).
    ``select`` is a ``--select`` expression (:mod:`perwatt.meter.select`) matched against each
    GPU's labels on the page. ``collect_interval_s`` is the exporter's ``--collect-interval``
    (becomes ``counter_period_s``; the meter uses the period it observes once it has seen a few
    updates); ``reuse_s`` lets a power read reuse the energy read's scrape when they are that
    close together.
    """

    name = "dcgm"
    energy_label = "dcgm"
    power_label = "dcgm"

    def __init__(
        self,
        url: str,
        *,
        gpus: Sequence[str] | None = None,
        select: str | Selection | None = None,
        timeout_s: float = 2.0,
        collect_interval_s: float | None = DEFAULT_COLLECT_INTERVAL_S,
        reuse_s: float = 0.05,
    ) -> None:
        selection = parse_selection(select) if not isinstance(select, Selection) else select
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
        if not selection.empty:
            found = {lab: g for lab, g in found.items() if selection.matches(g.labels, lab)}
            if not found:
                self._client.close()
                raise UnknownDeviceError(
                    f"--select {selection.text!r} matches no GPU at {', '.join(self.urls)}; "
                    "available: "
                    + ", ".join(
                        f"{lab} (Hostname={g.labels.get('Hostname', '')!r}, UUID={g.uuid!r})"
                        for lab, g in sorted(first.gpus.items())
                    )
                )
        self.selection = selection
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
        self._url_of = {d: found[d].url for d in self._devices}

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
            errors: dict[str, str] = {}
            first_error: RemoteSourceError | None = None
            for url in self.urls:
                try:
                    page = self._fetch(url)
                except RemoteSourceError as e:
                    # One node's exporter down must not blind the others: its GPUs go missing.
                    first_error = first_error or e
                    errors[url] = str(e)
                    continue
                for label, g in page.items():
                    if label in gpus:
                        raise RemoteSourceError(
                            f"{label} is reported by both {gpus[label].url} and {url}: two "
                            "exporters on one node, or two nodes with the same Hostname"
                        )
                    gpus[label] = g
            if first_error is not None and not gpus:
                raise first_error
            resets: dict[str, float] = {}
            for label, g in gpus.items():
                if g.energy_j is not None:
                    g.energy_j = self._resets.update(label, g.energy_j, g.url, resets)
            self._last = _Scrape(now, gpus, errors, resets)
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
        failed = [self._url_of.get(d, "") for d in missing if self._url_of.get(d) in scrape.errors]
        if failed:
            raise RemoteSourceError(scrape.errors[failed[0]])
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

    def read(self) -> Reading:
        """One scrape of every exporter: fresh values, and why any chosen GPU has none."""
        scrape = self._scrape(max_age_s=self.reuse_s)
        energy: dict[str, float] = {}
        power: dict[str, float] = {}
        missing: dict[str, str] = {}
        for d in self._devices:
            g = scrape.gpus.get(d)
            url = self._url_of.get(d, "")
            if g is None or (g.energy_j is None and g.power_w is None):
                missing[d] = scrape.errors.get(url) or (
                    f"missing from {url or 'its exporter'} (GPU fell off the bus or was reset, "
                    "or the exporter restarted with other --devices)"
                )
                continue
            if g.energy_j is not None and self._has_counter:
                energy[d] = g.energy_j
            if g.power_w is not None:
                power[d] = g.power_w
        resets = {d: j for d, j in scrape.resets.items() if d in energy}
        return Reading(energy_j=energy, power_w=power, missing=missing, resets=resets)

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
            f"refreshed every ~{self.counter_period_s:g} s (declared)"
            if self.counter_period_s is not None
            else "refresh interval unknown"
        )
        sel = f" selected by {self.selection.text!r}" if not self.selection.empty else ""
        return (
            f"dcgm: {len(self._devices)} GPU(s) on {nodes} node(s)"
            + (f" ({', '.join(models)})" if models else "")
            + f" via dcgm-exporter {', '.join(self.urls)}{sel}: {_device_list(self._devices)}; "
            + f"{what}, {period}"
        )

    def close(self) -> None:
        self._client.close()


def _device_list(devices: Sequence[str], most: int = 8) -> str:
    shown = ", ".join(devices[:most])
    return shown + (f" and {len(devices) - most} more" if len(devices) > most else "")


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


def _host_of(labels: Mapping[str, str]) -> str:
    return labels.get("Hostname") or labels.get("instance") or "?"


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
        #: Seconds to keep retrying a 503 (a Prometheus replaying its WAL answers 503 until
        #: ready). Set while a source starts; 0 afterwards: a 503 mid-run is a gap, not a wait.
        self.startup_wait_s = 0.0

    def close(self) -> None:
        self.client.close()

    def get(self, path: str, params: Mapping[str, str]) -> httpx.Response:
        """GET with failures mapped; a 503 is retried for ``startup_wait_s``, then explained."""
        url = self.url + path
        deadline = time.monotonic() + self.startup_wait_s
        delay = 0.1
        while True:
            try:
                r = self.client.get(url, params=dict(params))
            except httpx.HTTPError as e:
                raise _http_failure("Prometheus", url, e, self.timeout_s) from e
            if r.status_code != 503:
                return r
            if time.monotonic() + delay > deadline:
                waited = f" for {self.startup_wait_s:g} s" if self.startup_wait_s > 0 else ""
                raise RemoteSourceError(
                    f"Prometheus at {self.url} is starting or overloaded: HTTP 503 "
                    f"{r.reason_phrase}{waited} (it answers 503 until its storage is loaded; "
                    f"retry when {self.url}/-/ready answers 200)"
                )
            time.sleep(delay)
            delay = min(1.0, delay * 2)

    def call(
        self, path: str, params: Mapping[str, str], want: str | None = None
    ) -> list[dict[str, Any]]:
        url = self.url + path
        query = params.get("query", "")
        r = self.get(path, params)
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
        if want is None:
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

    def series(self, metric: str, selector: str) -> dict[str, tuple[float, dict[str, str]]]:
        """Latest value and labels per GPU label (first series per GPU)."""
        where = f"Prometheus {self.url}"
        out: dict[str, tuple[float, dict[str, str]]] = {}
        for item in self.call("/api/v1/query", {"query": _query(metric, selector)}):
            label = _prom_label(item["metric"])
            value = item.get("value")
            if label is None or label in out:
                continue
            if not isinstance(value, list) or len(value) != 2:
                raise RemoteSourceError(f"{where}: malformed instant sample {value!r}")
            out[label] = (_prom_float(value[1], where), dict(item["metric"]))
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


def _go_duration_s(text: str) -> float | None:
    """A Go/Prometheus duration (``15s``, ``1m30s``, ``500ms``) in seconds, or None."""
    units = {
        "ms": 1e-3,
        "s": 1.0,
        "m": 60.0,
        "h": 3600.0,
        "d": 86400.0,
        "w": 604800.0,
        "y": 31536000.0,
    }
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)", text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        return None
    return sum(float(n) * units[u] for n, u in parts)


class PrometheusSource(RemoteSource):
    """Live GPU energy from a Prometheus server that scrapes dcgm-exporter.

    ``url`` is the server (``http://prometheus:9090``). ``select`` is a ``--select`` expression
    (:mod:`perwatt.meter.select`) and ``query_selector`` raw PromQL matchers; both narrow every
    query, and one of them is required when the server holds GPUs of more than one host.

    The meter reads it through :meth:`read`: **one** query per sample, for both fields of the
    selected series only, over the last few scrape intervals (a range selector, so each value
    comes with the time Prometheus scraped it). A selected GPU without a sample in that span is
    stale (its target is down, or it stopped reporting): reported missing, with the target's
    ``up`` value. The scrape interval comes from the server (``/api/v1/targets``, else the
    global ``scrape_interval`` of ``/api/v1/status/config``); ``counter_period_s`` is how often
    the counter's stored value actually changes (the scrape interval times the scrapes per
    change over the last 5 minutes, as ``changes()`` counts them), unless given.
    """

    name = "prometheus"
    energy_label = "dcgm"
    power_label = "dcgm"
    delay_periods = 2.0

    def __init__(
        self,
        url: str,
        *,
        query_selector: str = "",
        select: str | Selection | None = None,
        timeout_s: float = 5.0,
        counter_period_s: float | None = None,
        startup_wait_s: float = 15.0,
    ) -> None:
        if not (timeout_s > 0 and math.isfinite(timeout_s)):
            raise ConfigError(f"timeout_s must be a positive number, got {timeout_s}")
        self.selection = parse_selection(select) if not isinstance(select, Selection) else select
        self.selector = ",".join(
            p for p in (_normalise_selector(query_selector), self.selection.promql()) if p
        )
        self._api = _PromAPI(url, timeout_s)
        self._lock = threading.Lock()
        self._resets = _CounterResets()
        self._why_missing: dict[str, str] = {}
        try:
            self._api.startup_wait_s = startup_wait_s
            energy = self._api.series(ENERGY_METRIC, self.selector)
            power = self._api.series(POWER_METRIC, self.selector)
            self._api.startup_wait_s = 0.0
            if self.selection.devices:
                keep = set(self.selection.devices)
                energy = {d: v for d, v in energy.items() if d in keep}
                power = {d: v for d, v in power.items() if d in keep}
            found = set(energy) | set(power)
            if not found:
                raise RemoteSourceError(
                    f"Prometheus {self._api.url} has no {_query(ENERGY_METRIC, self.selector)} "
                    f"or {POWER_METRIC} series: is dcgm-exporter scraped there, and does the "
                    "selector match?"
                )
            self._labels = {d: (energy.get(d) or power[d])[1] for d in found}
            hosts = sorted({_host_of(lab) for lab in self._labels.values()})
            if len(hosts) > 1 and not self.selector and not self.selection.devices:
                raise ConfigError(
                    f"Prometheus {self._api.url} holds GPUs of {len(hosts)} hosts "
                    f"({_device_list(hosts, 5)}): metering all of them would count the whole "
                    "cluster; choose with --select (perwatt bench: --energy-select), e.g. --select "
                    f"'Hostname=\"{hosts[0]}\"' (or 'Hostname=~\".+\"' to meter them all)"
                )
            self.hosts = tuple(hosts)
            self._devices = tuple(sorted(found, key=_device_sort_key))
            self._has_counter = all(d in energy for d in self._devices)
            self.scrape_interval_s, self.scrape_interval_from = self._scrape_interval()
            if counter_period_s is not None:
                self.counter_period_s, self.period_from = counter_period_s, "given"
            else:
                self.counter_period_s, self.period_from = self._stored_update_period()
            # A series with no sample in this span is stale: a missed scrape or two is not.
            self.fresh_s = (
                self.stale_periods * self.scrape_interval_s + 1.0
                if self.scrape_interval_s is not None
                else 300.0  # Prometheus' default lookback: the most an instant query would show
            )
            first = self.read()
            if not first.energy_j and not first.power_w:
                raise RemoteSourceError(
                    f"Prometheus {self._api.url}: no selected series has a sample from the last "
                    f"{self.fresh_s:g} s ("
                    + "; ".join(sorted(set(first.missing.values())))
                    + "): are the exporters up?"
                )
        except BaseException:
            self._api.close()
            raise

    # ------------------------------------------------------------------ discovery
    def _targets(self) -> list[tuple[str, str]]:
        return sorted(
            {(lab.get("job", ""), lab.get("instance", "")) for lab in self._labels.values()}
        )

    def _scrape_interval(self) -> tuple[float | None, str]:
        """The scrape interval of the metered targets, from the server's own API."""
        wanted = set(self._targets())
        with contextlib.suppress(RemoteSourceError, ValueError, KeyError, TypeError):
            body = self._api.get("/api/v1/targets", {"state": "active"}).json()
            found = [
                _go_duration_s(str(t.get("scrapeInterval", "")))
                for t in body["data"]["activeTargets"]
                if (t["labels"].get("job", ""), t["labels"].get("instance", "")) in wanted
            ]
            good = [f for f in found if f is not None]
            if good:
                return max(good), "api/v1/targets"
        with contextlib.suppress(RemoteSourceError, ValueError, KeyError, TypeError):
            body = self._api.get("/api/v1/status/config", {}).json()
            m = re.search(r"^\s+scrape_interval:\s*(\S+)", body["data"]["yaml"], re.M)
            if m is not None and (iv := _go_duration_s(m.group(1))) is not None:
                return iv, "api/v1/status/config"
        return None, "unknown"

    def _stored_update_period(self) -> tuple[float | None, str]:
        """How often the stored counter changes: scrape interval x scrapes per change (5 min)."""
        if self.scrape_interval_s is None:
            return DEFAULT_COLLECT_INTERVAL_S, "dcgm-exporter default"
        q = (
            f"(count_over_time({_query(ENERGY_METRIC, self.selector)}[5m]) - 1) / "
            f"changes({_query(ENERGY_METRIC, self.selector)}[5m])"
        )
        ratios: list[float] = []
        with contextlib.suppress(RemoteSourceError):
            for item in self._api.call("/api/v1/query", {"query": q}):
                value = item.get("value")
                # A function's result has no __name__; anything else is not an answer to this.
                if "__name__" in item["metric"] or not isinstance(value, list):
                    continue
                with contextlib.suppress(ValueError, TypeError, IndexError):
                    r = float(value[1])
                    if math.isfinite(r) and r >= 1:
                        ratios.append(r)
        if ratios:
            per = statistics.median(ratios)
            return self.scrape_interval_s * round(per), "stored samples"
        return self.scrape_interval_s, "scrape interval"

    # ------------------------------------------------------------------ reading
    def read(self) -> Reading:
        """One query for both fields of the selected series over the last ``fresh_s``."""
        q = (
            f'{{__name__=~"{ENERGY_METRIC}|{POWER_METRIC}"'
            + (f",{self.selector}" if self.selector else "")
            + f"}}[{max(1, math.ceil(self.fresh_s * 1000))}ms]"
        )
        where = f"Prometheus {self._api.url}"
        latest: dict[tuple[str, str], float] = {}
        for item in self._api.call("/api/v1/query", {"query": q}, want="matrix"):
            label = _prom_label(item["metric"])
            values = item.get("values")
            if label is None or label not in self._labels or not values:
                continue
            key = (label, str(item["metric"].get("__name__", "")))
            if key in latest:
                continue  # first series per GPU, as for the exporter (MIG, pods)
            last = values[-1]
            if not isinstance(last, list) or len(last) != 2:
                raise RemoteSourceError(f"{where}: malformed range sample {last!r}")
            latest[key] = _prom_float(last[1], where)
        energy: dict[str, float] = {}
        power: dict[str, float] = {}
        resets: dict[str, float] = {}
        with self._lock:
            for d in self._devices:
                e = latest.get((d, ENERGY_METRIC))
                if e is not None and self._has_counter:
                    energy[d] = self._resets.update(d, e / 1e3, self._api.url, resets)
                p = latest.get((d, POWER_METRIC))
                if p is not None:
                    power[d] = p
            fresh = set(energy) | set(power)
            gone = [d for d in self._devices if d not in fresh]
            for d in fresh:
                self._why_missing.pop(d, None)
            if any(d not in self._why_missing for d in gone):
                self._explain_missing([d for d in gone if d not in self._why_missing])
            missing = {d: self._why_missing[d] for d in gone}
        return Reading(energy_j=energy, power_w=power, missing=missing, resets=resets)

    def _explain_missing(self, devices: Sequence[str]) -> None:
        """Why these series have no fresh sample: their target's ``up``, asked once per loss."""
        up: dict[tuple[str, str], float] = {}
        targets = sorted(
            {(self._labels[d].get("job", ""), self._labels[d].get("instance", "")) for d in devices}
        )
        instances = "|".join(re.escape(i) for _, i in targets)
        with contextlib.suppress(RemoteSourceError):
            for item in self._api.call(
                "/api/v1/query", {"query": f'up{{instance=~"{instances}"}}'}
            ):
                m = item["metric"]
                with contextlib.suppress(ValueError, TypeError, IndexError):
                    up[(m.get("job", ""), m.get("instance", ""))] = float(item["value"][1])
        for d in devices:
            lab = self._labels[d]
            target = (lab.get("job", ""), lab.get("instance", ""))
            state = up.get(target)
            what = (
                f"its target {target[1]} is down (up=0)"
                if state == 0
                else f"its target {target[1]} is up but no longer reports this GPU"
                if state == 1
                else f"its target {target[1]} is no longer scraped (no up series)"
            )
            self._why_missing[d] = (
                f"no sample in Prometheus {self._api.url} for over {self.fresh_s:g} s: {what}"
            )

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
        scrape = (
            f"scraped every {self.scrape_interval_s:g} s ({self.scrape_interval_from})"
            if self.scrape_interval_s is not None
            else "scrape interval unknown"
        )
        period = (
            f"counter changes every ~{self.counter_period_s:g} s ({self.period_from})"
            if self.counter_period_s is not None
            else ""
        )
        return (
            f"dcgm via Prometheus {self._api.url}{sel}: {len(self._devices)} GPU(s) on "
            f"{len(self.hosts)} host(s): {_device_list(self._devices)}; {what}, {scrape}"
            + (f", {period}" if period else "")
        )

    def close(self) -> None:
        self._api.close()
