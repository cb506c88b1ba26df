"""A perwatt test server's power model read over HTTP: labelled simulated, follows the server."""

from __future__ import annotations

import time

import pytest

from perwatt.bench.testing import PROFILES, FakeOpenAIServer, ServerConfig
from perwatt.errors import ConfigError, RemoteSourceError
from perwatt.meter import Meter, SimulatedSource, is_measured
from perwatt.meter.detect import open_sources
from perwatt.meter.served import ServedSimulatedSource, power_url, probe_served_power


def test_power_url_forms() -> None:
    assert power_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/perwatt/power"
    assert power_url("127.0.0.1:8000") == "http://127.0.0.1:8000/perwatt/power"
    assert power_url("http://h:1/perwatt/power") == "http://h:1/perwatt/power"
    with pytest.raises(ConfigError):
        power_url("ftp://h/x")


def test_reads_the_servers_model_and_is_never_measured() -> None:
    prof = PROFILES["fp8"]
    power = SimulatedSource(idle_w=prof.idle_w, busy_w=prof.busy_w)
    with FakeOpenAIServer(ServerConfig(profile=prof, power=power)) as s:
        (src,) = open_sources(f"simulated:{s.url}")
        try:
            assert isinstance(src, ServedSimulatedSource)
            assert src.device_label("sim0", counter=True) == "simulated"
            assert not is_measured(src.energy_label)
            assert "fp8 deployment" in src.describe() and "not a measurement" in src.describe()
            assert src.read_power_w() == {"sim0": pytest.approx(prof.idle_w)}
            power.set_load(1.0)  # what the server does while it serves
            assert src.read_power_w() == {"sim0": pytest.approx(prof.busy_w)}
            with Meter(src, sync_cuda=False) as meter, meter.window("w") as w:
                time.sleep(0.2)
            assert w.result.source == "simulated"
            assert w.result.total_energy_j == pytest.approx(prof.busy_w * 0.2, rel=0.3)
        finally:
            src.close()


def test_a_server_without_a_model_is_a_one_line_error_or_none() -> None:
    with FakeOpenAIServer(ServerConfig()) as s:
        with pytest.raises(RemoteSourceError, match="not a perwatt test server's power model"):
            ServedSimulatedSource(s.url)
        assert probe_served_power(s.url) is None
    assert probe_served_power("http://127.0.0.1:9/v1", timeout_s=0.5) is None
