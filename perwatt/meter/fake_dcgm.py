"""A loopback dcgm-exporter with a known power profile, and a real Prometheus to scrape it.

Shipped in the package (like :mod:`perwatt.meter.testing`'s fake NVML) so the remote sources can
be checked end to end without a GPU: the true energy of any window is known exactly, so a test or
a benchmark can compare perwatt's figure with the truth.

:class:`FakeDCGMExporter` serves ``/metrics`` in dcgm-exporter's text format (the ``# HELP`` /
``# TYPE`` lines and labels of dcgm-exporter 3.x/4.x: ``gpu, UUID, pci_bus_id, device,
modelName, Hostname, DCGM_FI_DRIVER_VERSION``, plus ``container, namespace, pod`` on GPUs
allocated to a Kubernetes pod). Like the real exporter it refreshes its cache every
``collect_interval_s`` and serves the cached values in between: energy (mJ, the exact integral of
the profile up to the refresh) and power (W, the profile's value at the refresh). Failures are
injectable: :meth:`~FakeDCGMExporter.hang` keeps serving the last page forever,
:meth:`~FakeDCGMExporter.go_down`/:meth:`~FakeDCGMExporter.come_up` close and reopen the port,
:meth:`~FakeDCGMExporter.reset_counter` restarts a GPU's counter from zero (driver reload),
:attr:`~FakeDCGMExporter.status` answers with another HTTP status.

:class:`PrometheusProcess` starts the ``prometheus`` binary (the Debian package ``prometheus``)
on a loopback port with its own config and a temporary TSDB, scraping the given targets at a
short interval. :func:`prometheus_binary` says whether it is installed.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

_LABELS = (
    'gpu="{gpu}",UUID="{uuid}",pci_bus_id="00000000:{bus:02X}:00.0",device="nvidia{gpu}",'
    'modelName="NVIDIA H100 80GB HBM3",Hostname="{host}",DCGM_FI_DRIVER_VERSION="550.54.15"'
)


class _GPUModel:
    """Piecewise-constant power from ``t0``; energy is its exact integral."""

    def __init__(self, t0: float, power_w: float) -> None:
        self.ts = [t0]
        self.es = [0.0]
        self.ps = [power_w]
        self.reset_at_j = 0.0  # energy at the last counter reset (driver reload)

    def energy_at_j(self, t: float) -> float:
        i = max(0, bisect.bisect_right(self.ts, t) - 1)
        return self.es[i] + self.ps[i] * max(0.0, t - self.ts[i])

    def power_at_w(self, t: float) -> float:
        return self.ps[max(0, bisect.bisect_right(self.ts, t) - 1)]

    def set_power(self, t: float, power_w: float) -> None:
        e = self.energy_at_j(t)
        if t <= self.ts[-1]:
            self.es[-1], self.ps[-1] = e, power_w
        else:
            self.ts.append(t)
            self.es.append(e)
            self.ps.append(power_w)


class FakeDCGMExporter:
    """A dcgm-exporter on ``127.0.0.1:port`` whose GPUs draw a power the test sets.

    ``power_w``: each GPU's power from the start; change it with :meth:`set_power`.
    ``counter_start_mj``: the counter's value at start (real counters count since driver load).
    ``pods``: ``{gpu: (namespace, pod, container)}`` for GPUs allocated to Kubernetes pods.
    """

    def __init__(
        self,
        host: str = "node1",
        power_w: Sequence[float] = (300.0, 300.0),
        *,
        collect_interval_s: float = 1.0,
        counter_start_mj: float = 5.0e9,
        pods: Mapping[int, tuple[str, str, str]] | None = None,
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not collect_interval_s > 0:
            raise ValueError("collect_interval_s must be positive")
        self.host = host
        self.collect_interval_s = collect_interval_s
        self.clock = clock
        self.t0 = clock()
        self.gpus = [_GPUModel(self.t0, p) for p in power_w]
        self.counter_start_mj = counter_start_mj
        self.pods = dict(pods or {})
        self.status = 200
        self.scrapes = 0
        self._frozen_page: str | None = None
        self._reset: set[int] = set()  # GPUs whose counter restarted from zero
        self._last_page = ""
        self._lock = threading.Lock()
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.come_up()

    # ------------------------------------------------------------------ control
    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}/metrics"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self._port}"

    def set_power(self, gpu: int, power_w: float) -> None:
        """GPU ``gpu`` draws ``power_w`` from now on."""
        with self._lock:
            self.gpus[gpu].set_power(self.clock(), power_w)

    def true_energy_j(self, gpu: int, start_s: float, end_s: float) -> float:
        """The exact energy of ``gpu`` over ``[start_s, end_s]`` (this exporter's clock)."""
        g = self.gpus[gpu]
        return g.energy_at_j(end_s) - g.energy_at_j(start_s)

    def reset_counter(self, gpu: int) -> None:
        """The GPU's counter restarts from zero now (driver reload, GPU reset)."""
        with self._lock:
            g = self.gpus[gpu]
            g.reset_at_j = g.energy_at_j(self.clock())
            self._reset.add(gpu)

    def hang(self) -> None:
        """Keep serving the last page forever: the exporter lost DCGM but still answers."""
        with self._lock:
            self._frozen_page = self._last_page or self._render()

    def unhang(self) -> None:
        with self._lock:
            self._frozen_page = None

    def go_down(self) -> None:
        """Close the port: scrapes are refused until :meth:`come_up`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def come_up(self) -> None:
        """(Re)open the port (the same one after :meth:`go_down`)."""
        if self._server is not None:
            return
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = exporter._respond(self.path)
                data = body.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        srv = ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        srv.daemon_threads = True
        self._port = int(srv.server_address[1])
        self._server = srv
        self._thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.go_down()

    def __enter__(self) -> FakeDCGMExporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ serving
    def refresh_time(self, t: float | None = None) -> float:
        """When the cache served at ``t`` was refreshed (every ``collect_interval_s``)."""
        now = self.clock() if t is None else t
        k = math.floor((now - self.t0) / self.collect_interval_s + 1e-9)
        return self.t0 + k * self.collect_interval_s

    def _respond(self, path: str) -> tuple[int, str]:
        with self._lock:
            self.scrapes += 1
            if self.status != 200:
                return self.status, "exporter unavailable\n"
            if path.split("?", 1)[0] != "/metrics":
                return 404, "404 page not found\n"
            if self._frozen_page is not None:
                return 200, self._frozen_page
            self._last_page = self._render()
            return 200, self._last_page

    def _labels(self, i: int) -> str:
        uuid = f"GPU-{i:08x}-1111-2222-3333-{self.host.encode().hex()[:12]:0>12}"
        lab = _LABELS.format(gpu=i, uuid=uuid, bus=0x18 + i, host=self.host)
        if i in self.pods:
            ns, pod, container = self.pods[i]
            lab += f',container="{container}",namespace="{ns}",pod="{pod}"'
        return lab

    def _render(self) -> str:
        t = self.refresh_time()
        out = [
            "# HELP DCGM_FI_DEV_SM_CLOCK SM clock frequency (in MHz).",
            "# TYPE DCGM_FI_DEV_SM_CLOCK gauge",
        ]
        out += [f"DCGM_FI_DEV_SM_CLOCK{{{self._labels(i)}}} 1980" for i in range(len(self.gpus))]
        out += [
            "# HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W).",
            "# TYPE DCGM_FI_DEV_POWER_USAGE gauge",
        ]
        out += [
            f"DCGM_FI_DEV_POWER_USAGE{{{self._labels(i)}}} {g.power_at_w(t):f}"
            for i, g in enumerate(self.gpus)
        ]
        out += [
            "# HELP DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION Total energy consumption since boot "
            "(in mJ).",
            "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter",
        ]
        for i, g in enumerate(self.gpus):
            e = g.energy_at_j(t)
            raw = (
                max(0.0, e - g.reset_at_j) * 1e3
                if i in self._reset
                else self.counter_start_mj + e * 1e3
            )
            out.append(f"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{self._labels(i)}}} {int(raw)}")
        out += [
            "# HELP DCGM_FI_DEV_GPU_TEMP GPU temperature (in C).",
            "# TYPE DCGM_FI_DEV_GPU_TEMP gauge",
        ]
        out += [f"DCGM_FI_DEV_GPU_TEMP{{{self._labels(i)}}} 41" for i in range(len(self.gpus))]
        return "\n".join(out) + "\n"


# ====================================================================== a real Prometheus
def prometheus_binary() -> str | None:
    """Path of the ``prometheus`` binary, or None (Debian/Ubuntu: ``apt-get install prometheus``)."""
    return shutil.which("prometheus")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusProcess:
    """A throwaway Prometheus on ``127.0.0.1:port`` scraping ``targets`` every ``scrape_interval_s``.

    Each target is scraped as job ``dcgm-exporter``. :meth:`restart` stops and starts it on the
    same port and TSDB (samples survive, as after a real restart). Use as a context manager.
    """

    def __init__(
        self,
        targets: Sequence[str],
        *,
        scrape_interval_s: float = 1.0,
        binary: str | None = None,
        port: int | None = None,
        data_dir: str | Path | None = None,
    ) -> None:
        found = binary or prometheus_binary()
        if found is None:
            raise FileNotFoundError("prometheus binary not found (apt-get install prometheus)")
        self.binary = found
        self.targets = list(targets)
        self.scrape_interval_s = scrape_interval_s
        self.port = port or free_port()
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="perwatt-prom-")
        self.dir = Path(data_dir) if data_dir else Path(self._tmp.name)  # type: ignore[union-attr]
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        iv = f"{round(self.scrape_interval_s * 1000)}ms"
        targets = ", ".join(f'"{t}"' for t in self.targets)
        cfg = self.dir / "prometheus.yml"
        cfg.write_text(
            "global:\n"
            f"  scrape_interval: {iv}\n"
            f"  scrape_timeout: {iv}\n"
            "scrape_configs:\n"
            "  - job_name: dcgm-exporter\n"
            f"    static_configs:\n      - targets: [{targets}]\n"
        )
        return cfg

    def start(self, *, wait: bool = True, timeout_s: float = 30.0) -> PrometheusProcess:
        cfg = self._write_config()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={self.dir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        if wait:
            self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log_path.read_text()[-500:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/-/ready", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"prometheus at {self.url} not ready within {timeout_s} s")

    def wait_scraped(self, n_series: int, timeout_s: float = 20.0) -> None:
        """Until ``n_series`` energy series are queryable (the first scrapes happened)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                r = httpx.get(
                    self.url + "/api/v1/query",
                    params={"query": "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"},
                    timeout=2.0,
                )
                if len(r.json()["data"]["result"]) >= n_series:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"prometheus did not scrape {n_series} series in {timeout_s} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, *, wait: bool = True) -> None:
        self.stop()
        self.start(wait=wait)

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> PrometheusProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
