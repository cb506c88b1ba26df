"""DCGM and Prometheus sources against real HTTP servers on loopback (no mocks of httpx).

The exporter pages below follow what dcgm-exporter 3.x/4.x serves: a ``# HELP`` and ``# TYPE``
line before each family, labels ``gpu, UUID, pci_bus_id, device, modelName, Hostname,
DCGM_FI_DRIVER_VERSION``, energy in mJ printed as an integer or in exponent form, power in W
printed with Go's ``%f``. The Prometheus responses follow the HTTP API's JSON envelope.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from perwatt.errors import ConfigError, RemoteSourceError, UnknownDeviceError
from perwatt.meter import Meter
from perwatt.meter.dcgm import (
    DCGMSource,
    PrometheusSource,
    energy_between,
    prometheus_energy_between,
)

# ---------------------------------------------------------------------------- fixtures


@dataclass
class Reply:
    status: int = 200
    body: str = ""
    content_type: str = "text/plain; version=0.0.4; charset=utf-8"
    delay_s: float = 0.0


@dataclass
class FakeServer:
    """A real HTTP server on 127.0.0.1:<random>; ``route(path, query)`` decides each reply."""

    route: Callable[[str, dict[str, list[str]]], Reply]
    requests: list[tuple[str, dict[str, list[str]]]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def base(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[str, dict[str, list[str]]], Reply]], FakeServer]]:
    servers: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    def start(route: Callable[[str, dict[str, list[str]]], Reply]) -> FakeServer:
        fake = FakeServer(route)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                fake.requests.append((parts.path, query))
                reply = fake.route(parts.path, query)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                data = reply.body.encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", reply.content_type)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        srv.daemon_threads = True
        th = threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True)
        th.start()
        fake.server = srv
        servers.append((srv, th))
        return fake

    yield start
    for srv, th in servers:
        srv.shutdown()
        srv.server_close()
        th.join(timeout=5)


LABELS = (
    'gpu="{gpu}",UUID="GPU-{uuid}",pci_bus_id="00000000:{bus:02X}:00.0",device="nvidia{gpu}",'
    'modelName="NVIDIA H100 80GB HBM3",Hostname="{host}",DCGM_FI_DRIVER_VERSION="550.54.15"'
)


def exporter_page(
    host: str,
    gpus: dict[int, tuple[float | None, float | None]],
    *,
    mig: bool = False,
    hostname_label: bool = True,
) -> str:
    """A dcgm-exporter page: ``gpus[i] = (energy_mJ or None, power_W or None)``."""

    def labels(i: int, extra: str = "") -> str:
        lab = LABELS.format(
            gpu=i,
            uuid=f"{i:08x}-1111-2222-3333-{host.encode().hex()[:12]:0>12}",
            bus=0x18 + i,
            host=host,
        )
        if not hostname_label:
            lab = lab.replace(f',Hostname="{host}"', "")
        return lab + extra

    out = [
        "# HELP DCGM_FI_DEV_SM_CLOCK SM clock frequency (in MHz).",
        "# TYPE DCGM_FI_DEV_SM_CLOCK gauge",
    ]
    out += [f"DCGM_FI_DEV_SM_CLOCK{{{labels(i)}}} 1980" for i in gpus]
    out += [
        "# HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W).",
        "# TYPE DCGM_FI_DEV_POWER_USAGE gauge",
    ]
    out += [
        f"DCGM_FI_DEV_POWER_USAGE{{{labels(i)}}} {p:f}"
        for i, (_, p) in gpus.items()
        if p is not None
    ]
    out += [
        "# HELP DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION Total energy consumption since boot (in mJ).",
        "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter",
    ]
    for i, (e, _) in gpus.items():
        if e is None:
            continue
        if mig:  # every MIG instance repeats the parent GPU's counter
            for gi, prof in ((1, "3g.40gb"), (2, "3g.40gb")):
                extra = f',GPU_I_PROFILE="{prof}",GPU_I_ID="{gi}"'
                out.append(f"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{labels(i, extra)}}} {e:.0f}")
        else:
            out.append(f"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{labels(i)}}} {e:.17g}")
    out += [
        "# HELP DCGM_FI_DEV_GPU_TEMP GPU temperature (in C).",
        "# TYPE DCGM_FI_DEV_GPU_TEMP gauge",
    ]
    out += [f"DCGM_FI_DEV_GPU_TEMP{{{labels(i)}}} 41" for i in gpus]
    return "\n".join(out) + "\n"


class Exporter:
    """Mutable exporter state served at /metrics."""

    def __init__(self, host: str, gpus: dict[int, tuple[float | None, float | None]]) -> None:
        self.host = host
        self.gpus = gpus
        self.mig = False
        self.hostname_label = True
        self.override: Reply | None = None

    def route(self, path: str, query: dict[str, list[str]]) -> Reply:
        if self.override is not None:
            return self.override
        if path != "/metrics":
            return Reply(404, "404 page not found\n")
        return Reply(
            body=exporter_page(
                self.host, self.gpus, mig=self.mig, hostname_label=self.hostname_label
            )
        )


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


# ---------------------------------------------------------------------------- DCGMSource


def test_reads_energy_in_joules_and_power_in_watts(serve: Any) -> None:
    exp = Exporter("node1", {0: (1.234e9, 312.457), 1: (2.0e9, 95.0)})
    srv = serve(exp.route)
    src = DCGMSource(srv.base + "/metrics", collect_interval_s=1.0, reuse_s=0.0)
    try:
        assert src.devices == ("node1/gpu0", "node1/gpu1")
        assert src.has_energy_counter
        assert src.counter_period_s == 1.0
        assert src.energy_label == "dcgm" and src.power_label == "dcgm"
        assert src.read_energy_j() == {"node1/gpu0": 1.234e6, "node1/gpu1": 2.0e6}
        power = src.read_power_w()
        assert power is not None
        assert power["node1/gpu0"] == pytest.approx(312.457)
        assert "2 GPU(s) on 1 node(s)" in src.describe()
        assert "NVIDIA H100 80GB HBM3" in src.describe()
    finally:
        src.close()


def test_url_without_path_or_scheme_gets_metrics_and_http(serve: Any) -> None:
    exp = Exporter("node1", {0: (1e6, 100.0)})
    srv = serve(exp.route)
    hostport = srv.base.removeprefix("http://")
    with_default = DCGMSource(hostport)
    try:
        assert with_default.urls == (f"http://{hostport}/metrics",)
        assert with_default.counter_period_s == 30.0  # dcgm-exporter's default interval
    finally:
        with_default.close()
    assert srv.requests[0][0] == "/metrics"


def test_counter_reset_keeps_energy_monotonic(serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    exp = Exporter("node1", {0: (5_000_000.0, 300.0)})  # 5000 J since boot
    srv = serve(exp.route)
    src = DCGMSource(srv.base, collect_interval_s=1.0, reuse_s=0.0)
    try:
        e0 = src.read_energy_j()
        assert e0 == {"node1/gpu0": 5000.0}
        exp.gpus[0] = (5_600_000.0, 300.0)  # +600 J
        assert src.read_energy_j() == {"node1/gpu0": 5600.0}
        exp.gpus[0] = (150_000.0, 300.0)  # driver reloaded: counter restarted, 150 J since
        with caplog.at_level(logging.WARNING, logger="perwatt.meter.dcgm"):
            e2 = src.read_energy_j()
        assert e2 == {"node1/gpu0": 5600.0 + 150.0}
        assert "counter reset" in caplog.text
        exp.gpus[0] = (350_000.0, 300.0)  # +200 J after the reset
        assert src.read_energy_j() == {"node1/gpu0": 5950.0}
        assert src.resets == {"node1/gpu0": 1}
    finally:
        src.close()


def test_meter_window_over_exporter_with_counter_reset(serve: Any) -> None:
    exp = Exporter("node1", {0: (1_000_000.0, 250.0)})
    srv = serve(exp.route)
    src = DCGMSource(srv.base, collect_interval_s=0.001, reuse_s=0.0)
    now = [100.0]
    meter = Meter(src, sampler=False, sync_cuda=False, clock=lambda: now[0])
    try:
        meter.start()
        meter.begin("job")
        now[0] += 10.0
        exp.gpus[0] = (1_500_000.0, 250.0)  # +500 J
        meter.sample_now()
        now[0] += 10.0
        exp.gpus[0] = (400_000.0, 250.0)  # reset; +400 J since
        m = meter.end("job")
    finally:
        meter.close()
    assert m.energy_j == {"node1/gpu0": pytest.approx(900.0)}
    assert m.sources == {"node1/gpu0": "dcgm"}
    assert m.measured


def test_multi_node_comma_separated_urls(serve: Any) -> None:
    a = serve(Exporter("node1", {0: (1e6, 100.0), 1: (2e6, 110.0)}).route)
    b = serve(Exporter("node2", {0: (3e6, 120.0)}).route)
    src = DCGMSource(f"{a.base}/metrics, {b.base}/metrics", reuse_s=0.0)
    try:
        assert src.devices == ("node1/gpu0", "node1/gpu1", "node2/gpu0")
        assert src.read_energy_j() == {"node1/gpu0": 1e3, "node1/gpu1": 2e3, "node2/gpu0": 3e3}
        assert "3 GPU(s) on 2 node(s)" in src.describe()
    finally:
        src.close()


def test_same_hostname_on_two_urls_is_an_error(serve: Any) -> None:
    a = serve(Exporter("node1", {0: (1e6, 100.0)}).route)
    b = serve(Exporter("node1", {0: (1e6, 100.0)}).route)
    with pytest.raises(RemoteSourceError, match="reported by both"):
        DCGMSource(f"{a.base},{b.base}")


def test_same_url_twice_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="listed twice"):
        DCGMSource("http://127.0.0.1:9/metrics,127.0.0.1:9")


def test_no_hostname_label_falls_back_to_host_port(serve: Any) -> None:
    exp = Exporter("node1", {0: (1e6, 100.0)})
    exp.hostname_label = False
    srv = serve(exp.route)
    src = DCGMSource(srv.base)
    try:
        assert src.devices == (f"{srv.base.removeprefix('http://')}/gpu0",)
    finally:
        src.close()


def test_mig_instances_count_the_gpu_once(serve: Any) -> None:
    exp = Exporter("node1", {0: (7_000_000.0, 200.0)})
    exp.mig = True
    srv = serve(exp.route)
    src = DCGMSource(srv.base)
    try:
        assert src.devices == ("node1/gpu0",)
        assert src.read_energy_j() == {"node1/gpu0": 7000.0}
    finally:
        src.close()


def test_gpu_filter_by_index_uuid_or_label(serve: Any) -> None:
    exp = Exporter("node1", {0: (1e6, 1.0), 1: (2e6, 2.0), 2: (3e6, 3.0)})
    srv = serve(exp.route)
    page = exporter_page("node1", exp.gpus)
    uuid2 = page.split('gpu="2",UUID="', 1)[1].split('"', 1)[0]
    src = DCGMSource(srv.base, gpus=["node1/gpu1", uuid2])
    try:
        assert src.devices == ("node1/gpu1", "node1/gpu2")
    finally:
        src.close()
    src = DCGMSource(srv.base, gpus=["0"])
    try:
        assert src.devices == ("node1/gpu0",)
    finally:
        src.close()
    with pytest.raises(UnknownDeviceError, match=r"'7' not found.*available: node1/gpu0"):
        DCGMSource(srv.base, gpus=["7"])


def test_gpu_missing_from_a_later_scrape_raises_then_recovers(serve: Any) -> None:
    exp = Exporter("node1", {0: (1e6, 100.0), 1: (2e6, 100.0)})
    srv = serve(exp.route)
    src = DCGMSource(srv.base, reuse_s=0.0)
    try:
        del exp.gpus[1]
        with pytest.raises(RemoteSourceError, match=r"node1/gpu1 present in earlier scrapes"):
            src.read_energy_j()
        with pytest.raises(RemoteSourceError, match="fallen off the bus"):
            src.read_power_w()
        exp.gpus[1] = (2.5e6, 100.0)  # back
        assert src.read_energy_j() == {"node1/gpu0": 1e3, "node1/gpu1": 2.5e3}
    finally:
        src.close()


def test_power_only_exporter_has_no_counter(serve: Any) -> None:
    exp = Exporter("node1", {0: (None, 150.0)})
    srv = serve(exp.route)
    src = DCGMSource(srv.base)
    try:
        assert not src.has_energy_counter
        assert src.read_energy_j() is None
        assert src.read_power_w() == {"node1/gpu0": 150.0}
        assert "no counter" in src.describe()
    finally:
        src.close()


def test_blank_sentinel_values_are_not_readings(serve: Any) -> None:
    exp = Exporter("node1", {0: (float(0x7FFFFFFFFFFFFFF2), 140737488355330.0)})
    srv = serve(exp.route)
    with pytest.raises(RemoteSourceError, match="no DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"):
        DCGMSource(srv.base)


def test_exporter_down_closed_port() -> None:
    url = f"http://127.0.0.1:{closed_port()}/metrics"
    with pytest.raises(RemoteSourceError) as ei:
        DCGMSource(url)
    msg = str(ei.value)
    assert url in msg and "cannot connect" in msg and "reachable" in msg


def test_exporter_going_down_after_start(serve: Any) -> None:
    exp = Exporter("node1", {0: (1e6, 100.0)})
    srv = serve(exp.route)
    src = DCGMSource(srv.base, reuse_s=0.0)
    try:
        assert srv.server is not None
        srv.server.shutdown()
        srv.server.server_close()
        with pytest.raises(RemoteSourceError, match="cannot connect to dcgm-exporter"):
            src.read_energy_j()
    finally:
        src.close()


def test_non_200(serve: Any) -> None:
    exp = Exporter("node1", {0: (1e6, 100.0)})
    srv = serve(exp.route)
    with pytest.raises(RemoteSourceError, match=r"HTTP 404 .*check the URL"):
        DCGMSource(srv.base + "/wrong")
    exp.override = Reply(503, "busy")
    with pytest.raises(RemoteSourceError, match="HTTP 503"):
        DCGMSource(srv.base)


def test_garbage_body_names_url_and_line(serve: Any) -> None:
    body = '# HELP x y\nDCGM_FI_DEV_POWER_USAGE{gpu="0"} 1\n<html>oops</html>\n'
    srv = serve(lambda path, q: Reply(body=body, content_type="text/html"))
    with pytest.raises(RemoteSourceError) as ei:
        DCGMSource(srv.base)
    msg = str(ei.value)
    assert f"{srv.base}/metrics:3:" in msg
    assert "is this a dcgm-exporter" in msg


def test_unrelated_prometheus_page_is_rejected(serve: Any) -> None:
    srv = serve(lambda path, q: Reply(body="# TYPE up gauge\nup 1\n"))
    with pytest.raises(RemoteSourceError, match="is this a dcgm-exporter"):
        DCGMSource(srv.base)


def test_slow_exporter_times_out(serve: Any) -> None:
    exp = Exporter("node1", {0: (1e6, 100.0)})
    srv = serve(exp.route)
    src = DCGMSource(srv.base, timeout_s=0.2, reuse_s=0.0)
    try:
        exp.override = Reply(body=exporter_page("node1", exp.gpus), delay_s=1.0)
        t0 = time.monotonic()
        with pytest.raises(RemoteSourceError, match=r"did not answer within 0.2 s"):
            src.read_energy_j()
        assert time.monotonic() - t0 < 0.9
    finally:
        src.close()


def test_power_read_reuses_a_fresh_scrape(serve: Any) -> None:
    exp = Exporter("node1", {0: (1e6, 100.0)})
    srv = serve(exp.route)
    src = DCGMSource(srv.base, reuse_s=60.0)
    try:
        n = len(srv.requests)
        src.read_energy_j()
        src.read_power_w()
        assert len(srv.requests) == n  # both served from the construction scrape
    finally:
        src.close()


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError):
        DCGMSource("")
    with pytest.raises(ConfigError):
        DCGMSource("ftp://x/metrics")
    with pytest.raises(ConfigError):
        DCGMSource("http://127.0.0.1:1", timeout_s=0)


# ---------------------------------------------------------------------------- Prometheus


def _series(host: str, gpu: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    m = {
        "DCGM_FI_DRIVER_VERSION": "550.54.15",
        "Hostname": host,
        "UUID": f"GPU-{gpu:08x}-aaaa",
        "device": f"nvidia{gpu}",
        "gpu": str(gpu),
        "instance": f"{host}:9400",
        "job": "dcgm-exporter",
        "modelName": "NVIDIA H100 80GB HBM3",
        "pci_bus_id": f"00000000:{0x18 + gpu:02X}:00.0",
    }
    m.update(extra or {})
    return m


class FakePrometheus:
    """Serves /api/v1/query and /api/v1/query_range from per-GPU functions of time."""

    def __init__(self) -> None:
        # label -> (energy_mJ(t) or None, power_W(t) or None)
        self.gpus: dict[
            tuple[str, int], tuple[Callable[[float], float] | None, Callable[[float], float] | None]
        ] = {}
        self.now = 1_700_000_000.0
        self.override: Reply | None = None

    def _metric_fn(self, query: str, key: tuple[str, int]) -> Callable[[float], float] | None:
        e, p = self.gpus[key]
        return e if query.startswith("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION") else p

    def _matches(self, query: str, host: str) -> bool:
        return 'Hostname="' not in query or f'Hostname="{host}"' in query

    def route(self, path: str, q: dict[str, list[str]]) -> Reply:
        if self.override is not None:
            return self.override
        query = q.get("query", [""])[0]
        if path == "/api/v1/query" and query.startswith("{__name__=~"):
            # The meter's one query per sample: both fields, newest samples with their times.
            result = []
            for key in self.gpus:
                for metric, fn in zip(
                    ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "DCGM_FI_DEV_POWER_USAGE"),
                    self.gpus[key],
                    strict=True,
                ):
                    if fn is None or not self._matches(query, key[0]):
                        continue
                    result.append(
                        {
                            "metric": {"__name__": metric, **_series(*key)},
                            "values": [[self.now, repr(fn(self.now))]],
                        }
                    )
            data = {"resultType": "matrix", "result": result}
        elif path == "/api/v1/query":
            result = []
            for key in self.gpus:
                fn = self._metric_fn(query, key)
                if fn is None or not self._matches(query, key[0]):
                    continue
                result.append(
                    {
                        "metric": {"__name__": query.split("{")[0], **_series(*key)},
                        "value": [self.now, repr(fn(self.now))],
                    }
                )
            data = {"resultType": "vector", "result": result}
        elif path == "/api/v1/query_range":
            start, end = float(q["start"][0]), float(q["end"][0])
            step = float(q["step"][0])
            n = int((end - start) / step + 1e-9) + 1
            result = []
            for key in self.gpus:
                fn = self._metric_fn(query, key)
                if fn is None or not self._matches(query, key[0]):
                    continue
                vals = [[start + i * step, repr(fn(start + i * step))] for i in range(n)]
                result.append(
                    {"metric": {"__name__": query.split("{")[0], **_series(*key)}, "values": vals}
                )
            data = {"resultType": "matrix", "result": result}
        else:
            return Reply(404, "404 page not found\n")
        return Reply(
            body=json.dumps({"status": "success", "data": data}),
            content_type="application/json",
        )


def test_prometheus_live_reads_and_selector(serve: Any) -> None:
    prom = FakePrometheus()
    prom.gpus[("node1", 0)] = (lambda t: 2e9 + 300e3 * (t - 1.7e9), lambda t: 300.0)
    prom.gpus[("node2", 0)] = (lambda t: 1e9, lambda t: 80.0)
    srv = serve(prom.route)
    src = PrometheusSource(srv.base, query_selector='{Hostname="node1"}')
    try:
        assert src.devices == ("node1/gpu0",)
        assert src.energy_label == "dcgm"
        assert src.read_energy_j() == {"node1/gpu0": pytest.approx(2e6)}
        prom.now += 10
        assert src.read_energy_j() == {"node1/gpu0": pytest.approx(2e6 + 3000.0)}
        assert src.read_power_w() == {"node1/gpu0": 300.0}
        assert "Prometheus" in src.describe()
    finally:
        src.close()
    (path, q) = srv.requests[0]
    assert path == "/api/v1/query"
    assert q["query"] == ['DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{Hostname="node1"}']


def test_prometheus_counter_reset_in_live_reads(serve: Any) -> None:
    prom = FakePrometheus()
    energy = [3e6]
    prom.gpus[("node1", 0)] = (lambda t: energy[0], lambda t: 100.0)
    srv = serve(prom.route)
    src = PrometheusSource(srv.base)
    try:
        assert src.read_energy_j() == {"node1/gpu0": 3000.0}
        energy[0] = 1e6
        assert src.read_energy_j() == {"node1/gpu0": 4000.0}
    finally:
        src.close()


def test_prometheus_energy_between_uses_the_counter(serve: Any) -> None:
    prom = FakePrometheus()
    t0 = 1_700_000_000.0
    # 250 W on node1/gpu0 from t0; 400 W on node2/gpu1.
    prom.gpus[("node1", 0)] = (lambda t: 1e9 + 250e3 * (t - t0), lambda t: 250.0)
    prom.gpus[("node2", 1)] = (lambda t: 5e9 + 400e3 * (t - t0), lambda t: 400.0)
    srv = serve(prom.route)
    got = prometheus_energy_between(srv.base, t0 + 100, t0 + 700)
    assert got == {
        "node1/gpu0": pytest.approx(250.0 * 600),
        "node2/gpu1": pytest.approx(400.0 * 600),
    }
    _, q = next(r for r in srv.requests if r[0] == "/api/v1/query_range")
    assert q["start"] == [f"{t0 + 100:.3f}"] and q["step"] == ["1"]


def test_prometheus_energy_between_handles_resets_and_falls_back_to_power(serve: Any) -> None:
    prom = FakePrometheus()
    t0 = 1_700_000_000.0

    def with_reset(t: float) -> float:  # 100 W; counter restarts from 0 at t0 + 50
        return 9e6 + 100e3 * (t - t0) if t < t0 + 50 else 100e3 * (t - (t0 + 50))

    prom.gpus[("node1", 0)] = (with_reset, lambda t: 100.0)
    prom.gpus[("node1", 1)] = (None, lambda t: 20.0 + 0.5 * (t - t0))  # no counter: linear power
    srv = serve(prom.route)
    from perwatt.meter.dcgm import _PromAPI

    api = _PromAPI(srv.base + "/", 5.0)
    try:
        res = energy_between(api, t0, t0 + 100, step_s=5)
    finally:
        api.close()
    # Counter: 100 W for 100 s, minus the 5 s step before the reset: the energy between the last
    # sample before a restart and the restart itself is lost, as in Prometheus' increase().
    assert res.energy_j["node1/gpu0"] == pytest.approx(100.0 * 95)
    assert res.methods == {"node1/gpu0": "counter", "node1/gpu1": "power-integral"}
    assert res.energy_j["node1/gpu1"] == pytest.approx(20.0 * 100 + 0.25 * 100**2)
    assert any("counter reset" in w for w in res.warnings)
    assert res.total_energy_j == pytest.approx(sum(res.energy_j.values()))


def test_prometheus_error_envelope(serve: Any) -> None:
    prom = FakePrometheus()
    prom.override = Reply(
        400,
        json.dumps(
            {
                "status": "error",
                "errorType": "bad_data",
                "error": 'invalid parameter "query": 1:38: parse error: unexpected "}"',
            }
        ),
        content_type="application/json",
    )
    srv = serve(prom.route)
    with pytest.raises(RemoteSourceError, match=r"rejected .*bad_data: invalid parameter"):
        PrometheusSource(srv.base)
    with pytest.raises(RemoteSourceError, match="bad_data"):
        prometheus_energy_between(srv.base, 1.0, 2.0)


def test_prometheus_not_json_and_wrong_shapes(serve: Any) -> None:
    prom = FakePrometheus()
    srv = serve(prom.route)
    prom.override = Reply(200, "<html>Grafana</html>", content_type="text/html")
    with pytest.raises(RemoteSourceError, match="not JSON"):
        PrometheusSource(srv.base)
    prom.override = Reply(
        200,
        json.dumps({"status": "success", "data": {"resultType": "scalar", "result": [1, "1"]}}),
    )
    with pytest.raises(RemoteSourceError, match="expected a vector"):
        PrometheusSource(srv.base)
    prom.override = Reply(200, json.dumps({"data": {}}))
    with pytest.raises(RemoteSourceError, match="no 'status'"):
        PrometheusSource(srv.base)


def test_prometheus_without_dcgm_series(serve: Any) -> None:
    prom = FakePrometheus()
    srv = serve(prom.route)
    with pytest.raises(RemoteSourceError, match="is dcgm-exporter scraped there"):
        PrometheusSource(srv.base)
    with pytest.raises(RemoteSourceError, match="is dcgm-exporter scraped there"):
        prometheus_energy_between(srv.base, 1_700_000_000.0, 1_700_000_100.0)


def test_prometheus_down_and_slow(serve: Any) -> None:
    with pytest.raises(RemoteSourceError, match="cannot connect to Prometheus"):
        PrometheusSource(f"http://127.0.0.1:{closed_port()}")
    prom = FakePrometheus()
    prom.override = Reply(200, "{}", delay_s=1.0)
    srv = serve(prom.route)
    with pytest.raises(RemoteSourceError, match=r"did not answer within 0\.2 s"):
        PrometheusSource(srv.base, timeout_s=0.2)


def test_prometheus_gpu_disappears(serve: Any) -> None:
    prom = FakePrometheus()
    prom.gpus[("node1", 0)] = (lambda t: 1e6, lambda t: 100.0)
    prom.gpus[("node1", 1)] = (lambda t: 1e6, lambda t: 100.0)
    srv = serve(prom.route)
    src = PrometheusSource(srv.base)
    try:
        del prom.gpus[("node1", 1)]
        with pytest.raises(RemoteSourceError, match=r"node1/gpu1 no longer in Prometheus"):
            src.read_energy_j()
    finally:
        src.close()


def test_prometheus_query_range_and_window_checks(serve: Any) -> None:
    prom = FakePrometheus()
    t0 = 1_700_000_000.0
    prom.gpus[("node1", 0)] = (lambda t: 1e6 + 1e3 * (t - t0), lambda t: 1.0)
    srv = serve(prom.route)
    src = PrometheusSource(srv.base)
    try:
        raw = src.query_range(t0, t0 + 10, 5)
        assert raw["energy_j"]["node1/gpu0"] == [(t0, 1000.0), (t0 + 5, 1005.0), (t0 + 10, 1010.0)]
        assert raw["power_w"]["node1/gpu0"][0] == (t0, 1.0)
        assert src.energy_between(t0, t0 + 10, step_s=5).energy_j == {"node1/gpu0": 10.0}
        with pytest.raises(ConfigError, match="ends before it starts"):
            src.energy_between(t0 + 10, t0)
        with pytest.raises(ConfigError, match="Prometheus allows 11000"):
            src.energy_between(t0, t0 + 86_400, step_s=1)
    finally:
        src.close()
    with pytest.raises(ConfigError, match="label matchers"):
        PrometheusSource(srv.base, query_selector="up{job='x'}")


LITERAL_PAGE = """\
# HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W).
# TYPE DCGM_FI_DEV_POWER_USAGE gauge
DCGM_FI_DEV_POWER_USAGE{gpu="0",UUID="GPU-5b4e07f6-3a86-4340-039d-25f2a83cdc43",pci_bus_id="00000000:00:07.0",device="nvidia0",modelName="NVIDIA H100 80GB HBM3",Hostname="node1",DCGM_FI_DRIVER_VERSION="550.54.15"} 35.686000
# HELP DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION Total energy consumption since boot (in mJ).
# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter
DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="0",UUID="GPU-5b4e07f6-3a86-4340-039d-25f2a83cdc43",pci_bus_id="00000000:00:07.0",device="nvidia0",modelName="NVIDIA H100 80GB HBM3",Hostname="node1",DCGM_FI_DRIVER_VERSION="550.54.15"} 1.234e+09
"""


def test_literal_exporter_page(serve: Any) -> None:
    srv = serve(lambda path, q: Reply(body=LITERAL_PAGE))
    src = DCGMSource(srv.base)
    try:
        assert src.read_energy_j() == {"node1/gpu0": 1.234e6}
        assert src.read_power_w() == {"node1/gpu0": pytest.approx(35.686)}
    finally:
        src.close()


# ------------------------------------------------------------- exporter failing mid-command
class _LiveExporter(Exporter):
    """A counter that advances at the gauge's power in real time, like a busy GPU."""

    def __init__(self, power_w: float) -> None:
        super().__init__("node1", {0: (1e9, power_w)})
        self.t0 = time.monotonic()
        self.power_w = power_w

    def route(self, path: str, query: dict[str, list[str]]) -> Reply:
        mj = 1e9 + (time.monotonic() - self.t0) * self.power_w * 1e3
        self.gpus[0] = (mj, self.power_w)
        return super().route(path, query)


def test_exporter_hanging_mid_command_keeps_the_energy_measured_before(serve: Any) -> None:
    """dcgm-exporter stops answering while the command runs: the command finishes, the energy
    up to the last good scrape is returned marked partial, and the exit code is non-zero."""
    from perwatt.meter.run import format_command_measurement, measure_command

    exp = _LiveExporter(power_w=250.0)
    srv = serve(exp.route)
    src = DCGMSource(srv.base, timeout_s=0.3, collect_interval_s=1.0, reuse_s=0.0)
    meter = Meter(src, sample_interval_s=0.05, sync_cuda=False)
    hang = threading.Timer(0.6, lambda: setattr(exp, "override", Reply(delay_s=3.0)))
    try:
        hang.start()
        cm = measure_command([sys.executable, "-c", "import time; time.sleep(1.5)"], meter)
    finally:
        hang.cancel()
        meter.close()
    m = cm.measurement
    assert cm.partial and cm.partial_reason is not None
    assert "power source failed" in cm.partial_reason
    assert "did not answer within 0.3 s" in cm.partial_reason and srv.base in cm.partial_reason
    assert cm.command_exit_code == 0 and cm.exit_code == 1
    # The figure covers the time before the hang (~0.6 s of ~1.5 s), at the exporter's power.
    assert 0.3 < m.duration_s < 1.4
    assert m.energy_j["node1/gpu0"] == pytest.approx(250.0 * m.duration_s, rel=0.05)
    assert m.source == "dcgm"
    d = cm.to_dict()
    assert d["partial"] is True and d["partial_reason"] == cm.partial_reason
    text = format_command_measurement(cm)
    assert "PARTIAL: power source failed" in text and "the command exited 0" in text


# ------------------------------------------- the meter on remote telemetry (issue 15)
from perwatt.meter.fake_dcgm import FakeDCGMExporter  # noqa: E402
from perwatt.meter.testing import FakeClock  # noqa: E402


def _sample_until(meter: Meter, clock: FakeClock, t_end: float, dt: float = 0.1) -> None:
    while clock() < t_end - 1e-9:
        clock.advance(dt)
        meter.sample_now()


def test_dcgm_35s_window_on_a_30s_exporter_is_not_inflated() -> None:
    """The issue's +71 %: a 35 s window straddling two 30 s refreshes. Four GPUs at ~1 kW."""
    clock = FakeClock(1000.0)
    exp = FakeDCGMExporter(
        "node1", (1030.0, 1030.0, 1030.0, 1030.0), clock=clock, collect_interval_s=30.0
    )
    src = DCGMSource(exp.url, reuse_s=0.0)  # dcgm-exporter's default 30 s interval
    meter = Meter(src, sampler=False, sync_cuda=False, clock=clock)
    try:
        meter.start()
        _sample_until(meter, clock, 1029.9)
        meter.begin("w")
        _sample_until(meter, clock, 1064.9)
        m = meter.end("w")
    finally:
        meter.close()
        exp.close()
    truth = 4 * 1030.0 * 35.0
    assert m.total_energy_j == pytest.approx(truth, rel=0.01)  # raw counter: +71 %
    assert m.avg_power_w <= (m.peak_power_w or 0.0) * 1.001  # was 6,460 W beside 4,122 W
    assert set(m.methods.values()) == {"power-integral"}
    assert all(m.uncertainty_j[d] < 0.01 * m.energy_j[d] for d in m.energy_j)
    assert any("integrated power is tighter and was used" in w for w in m.warnings)


def test_dcgm_hung_exporter_serving_its_last_page_is_partial() -> None:
    exp = FakeDCGMExporter("node1", (300.0,), collect_interval_s=0.2)
    src = DCGMSource(exp.url, collect_interval_s=0.2, reuse_s=0.0)
    meter = Meter(src, sample_interval_s=0.05, sync_cuda=False)
    try:
        meter.start()
        meter.begin("w")
        time.sleep(0.8)
        exp.hang()
        time.sleep(3.0)  # the counter stands still for over 2 s: stale
        m = meter.end("w")
    finally:
        meter.close()
        exp.close()
    dev = "node1/gpu0"
    assert dev in m.partial_devices and "stale page" in m.partial_devices[dev]
    assert m.energy_j[dev] < 0.6 * 300.0 * m.duration_s  # only what was read, and it says so


def test_dcgm_exporter_down_for_part_of_the_run_is_a_gap_the_counter_spans() -> None:
    exp = FakeDCGMExporter("node1", (300.0, 450.0), collect_interval_s=0.1)
    src = DCGMSource(exp.url, collect_interval_s=0.1, reuse_s=0.0, timeout_s=0.5)
    meter = Meter(src, sample_interval_s=0.05, sync_cuda=False)
    try:
        meter.start()
        meter.begin("w")
        time.sleep(0.8)
        exp.go_down()
        time.sleep(1.0)
        exp.come_up()
        time.sleep(1.2)
        m = meter.end("w")
    finally:
        meter.close()
        exp.close()
    assert {g.device for g in m.gaps} == {"node1/gpu0", "node1/gpu1"}, m.gaps
    assert all("dcgm-exporter at" in g.reason for g in m.gaps), m.gaps  # refused, or reset
    assert all(g.duration_s is not None and g.duration_s >= 0.8 for g in m.gaps), m.gaps
    assert any("spanned by the energy counter" in w for w in m.warnings)
    assert not m.partial
    for gpu, watts in ((0, 300.0), (1, 450.0)):
        dev = f"node1/gpu{gpu}"
        true_j = exp.true_energy_j(gpu, m.start_s, m.end_s)
        assert m.methods[dev] == "counter"
        assert abs(m.energy_j[dev] - true_j) <= m.uncertainty_j[dev] + 0.01 * true_j
        assert m.energy_j[dev] == pytest.approx(watts * m.duration_s, rel=0.06)


def test_dcgm_counter_reset_reaches_the_warnings_with_the_energy_lost() -> None:
    exp = FakeDCGMExporter("node1", (300.0,), collect_interval_s=0.1)
    src = DCGMSource(exp.url, collect_interval_s=0.1, reuse_s=0.0)
    meter = Meter(src, sample_interval_s=0.05, sync_cuda=False)
    try:
        meter.start()
        meter.begin("w")
        time.sleep(1.0)
        exp.reset_counter(0)
        time.sleep(1.0)
        m = meter.end("w")
    finally:
        meter.close()
        exp.close()
    said = [w for w in (*m.warnings, *m.partial_devices.values()) if "restarted from zero" in w]
    assert said and "J by integrated power" in said[0]


def test_dcgm_select_by_label_and_index(serve: Any) -> None:
    exp = FakeDCGMExporter("node1", (100.0, 200.0, 300.0), pods={2: ("llm", "vllm-0", "vllm")})
    try:
        src = DCGMSource(exp.url, select='pod=~"vllm-.*"')
        assert src.devices == ("node1/gpu2",)
        assert "selected by" in src.describe() and "node1/gpu2" in src.describe()
        src.close()
        src = DCGMSource(exp.url, select="0,1")
        assert src.devices == ("node1/gpu0", "node1/gpu1")
        src.close()
        with pytest.raises(UnknownDeviceError, match="matches no GPU"):
            DCGMSource(exp.url, select='Hostname="node9"')
    finally:
        exp.close()


class _Starting:
    """Prometheus while it replays its WAL: HTTP 503 "Service Unavailable" for a while."""

    def __init__(self, prom: FakePrometheus, first_503: int) -> None:
        self.prom = prom
        self.left = first_503

    def route(self, path: str, q: dict[str, list[str]]) -> Reply:
        if self.left > 0:
            self.left -= 1
            return Reply(503, "Service Unavailable\n")
        return self.prom.route(path, q)


def test_prometheus_503_while_starting_is_retried_then_reported(serve: Any) -> None:
    prom = FakePrometheus()
    prom.gpus[("node1", 0)] = (lambda t: 1e6, lambda t: 100.0)
    srv = serve(_Starting(prom, 3).route)
    src = PrometheusSource(srv.base, startup_wait_s=10.0)
    assert src.devices == ("node1/gpu0",)
    src.close()
    srv = serve(_Starting(prom, 10**6).route)
    with pytest.raises(RemoteSourceError, match=r"is starting .*HTTP 503.*-/ready") as ei:
        PrometheusSource(srv.base, startup_wait_s=0.3)
    assert "not a Prometheus server" not in str(ei.value)


def test_prometheus_one_query_per_sample_for_the_selection_only(serve: Any) -> None:
    prom = FakePrometheus()
    prom.gpus[("node1", 0)] = (lambda t: 1e6 + 300e3 * (t - 1.7e9), lambda t: 300.0)
    prom.gpus[("node2", 0)] = (lambda t: 1e6, lambda t: 100.0)
    srv = serve(prom.route)
    src = PrometheusSource(srv.base, select='Hostname="node1"')
    clock = FakeClock(0.0)
    meter = Meter(src, sampler=False, sync_cuda=False, clock=clock)
    try:
        meter.start()
        before = len(srv.requests)
        for _ in range(10):
            clock.advance(0.1)
            meter.sample_now()
        made = srv.requests[before:]
    finally:
        meter.close()
    assert len(made) == 10
    assert all('Hostname="node1"' in q["query"][0] for _, q in made)


def test_prometheus_without_selection_refuses_a_cluster(serve: Any) -> None:
    prom = FakePrometheus()
    prom.gpus[("node1", 0)] = (lambda t: 1e6, lambda t: 100.0)
    prom.gpus[("node2", 0)] = (lambda t: 1e6, lambda t: 100.0)
    srv = serve(prom.route)
    with pytest.raises(ConfigError, match=r"2 hosts \(node1, node2\).*--select"):
        PrometheusSource(srv.base)
