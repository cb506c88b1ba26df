"""End to end: run_server_bench against the loopback server, energy from simulated/replay
sources so every figure can be checked exactly."""

from __future__ import annotations

import csv
import math
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from perwatt.bench.result import load_result
from perwatt.bench.runner import (
    ServerBenchConfig,
    exit_code,
    parse_int_list,
    parse_rate_list,
    run_server_bench,
    summary_notes,
    summary_table,
)
from perwatt.bench.testing import FakeOpenAIServer, Fault, ServerConfig, every
from perwatt.errors import ConfigError
from perwatt.meter import ReplaySource, SimulatedSource
from perwatt.meter.replay import load_trace

EDGE_S = 5e-3


def cfg(url: str, tmp: Path, **kw: Any) -> ServerBenchConfig:
    base: dict[str, Any] = {
        "url": url,
        "num_prompts": 24,
        "max_concurrencies": (4,),
        "input_len": 32,
        "output_len": 16,
        "result_dir": tmp,
        "sources": (SimulatedSource(power_w=200.0),),
        "checkpoint_s": 0.1,
        "log": lambda msg: None,
    }
    base.update(kw)
    return ServerBenchConfig(**base)


def test_done_means_exact_tokens_and_energy(tmp_path: Path) -> None:
    with FakeOpenAIServer(ServerConfig(itl_s=0.002)) as s:
        (path,) = run_server_bench(cfg(s.url, tmp_path))
    d = load_result(path)
    assert path.name == "perwatt-test-model_c4.json"
    assert d["status"] == "complete" and d["partial_reason"] is None
    m = d["metrics"]
    assert m["completed"] == 24 and m["failed"] == 0
    assert m["total_output_tokens"] == 24 * 16
    assert m["token_count_source"] == "usage"
    assert m["total_input_tokens"] == 24 * 32
    assert m["ttft_ms"]["p99"] is not None and m["itl_ms"]["p50"] is not None
    assert d["load"] == {"kind": "concurrency", "value": 4.0}
    e = d["energy"]
    assert e is not None
    whole = e["whole_run"]
    # A constant 200 W simulated source: energy is power x window length, up to the time between
    # the meter stamping a window edge and reading the counter (microseconds; EDGE_S bounds it
    # on a loaded CI machine).
    assert whole["total_energy_j"] == pytest.approx(200.0 * whole["duration_s"], abs=200 * EDGE_S)
    assert e["source"] == "simulated" and e["measured"] is False
    assert e["basis"] == "whole_run"  # a 24-request run is too short for a steady state
    assert e["j_per_output_token"] == pytest.approx(whole["total_energy_j"] / 384, rel=1e-12)
    assert e["output_tokens_per_j"] == pytest.approx(384 / whole["total_energy_j"], rel=1e-12)
    assert e["j_per_request"] == pytest.approx(whole["total_energy_j"] / 24, rel=1e-12)
    econ = d["economics"]
    assert econ is not None and econ["pue"] == 1.0
    assert d["conditions"]["energy_source"] == "simulated"
    assert d["config"]["model"] == "perwatt-test-model"
    assert d["requests_csv"] == "perwatt-test-model_c4.requests.csv"
    rows = list(csv.DictReader((tmp_path / d["requests_csv"]).read_text().splitlines()))
    assert len(rows) == 24
    assert {r["output_tokens"] for r in rows} == {"16"}
    assert sum(int(r["output_tokens"]) for r in rows) == m["total_output_tokens"]
    itls = [float(x) for r in rows for x in r["itl_ms"].split()]
    assert len(itls) == 24 * 15
    assert sum(itls) / len(itls) == pytest.approx(m["itl_ms"]["mean"], rel=1e-3)
    assert len(d["timeline"]["t_s"]) == len(d["timeline"]["power_w"]) >= 1


def test_steady_state_window_used_when_long_enough(tmp_path: Path) -> None:
    src = SimulatedSource(power_w=100.0)
    server = ServerConfig(itl_s=0.02, ttft_s=0.02)
    with FakeOpenAIServer(server) as s:
        (path,) = run_server_bench(
            cfg(
                s.url,
                tmp_path,
                num_prompts=8,
                max_concurrencies=(2,),
                output_len=30,
                sources=(src,),
            )
        )
    d = load_result(path)
    e = d["energy"]
    assert e is not None
    assert e["basis"] == "steady_state"
    win = e["steady_state_window_s"]
    assert win is not None and 0 < win[0] < win[1] < d["metrics"]["duration_s"]
    steady = e["steady_state"]
    assert steady is not None
    assert steady["duration_s"] == pytest.approx(win[1] - win[0], rel=1e-9)
    assert steady["total_energy_j"] == pytest.approx(
        100.0 * steady["duration_s"], abs=100.0 * EDGE_S
    )
    tokens = e["basis_output_tokens"]  # type: ignore[typeddict-item]
    assert 0 < tokens < d["metrics"]["total_output_tokens"]
    assert e["j_per_output_token"] == pytest.approx(steady["total_energy_j"] / tokens)
    # Two requests decode at a time at <= 50 tok/s each (20 ms ITL; slower on a loaded machine).
    assert 40.0 < e["output_tokens_per_s_per_gpu"] <= 105.0


def test_replay_source(tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text("time_s,device,power_w\n0,gpu0,150\n1000,gpu0,150\n")
    src = ReplaySource(load_trace(trace))
    with FakeOpenAIServer() as s:
        (path,) = run_server_bench(cfg(s.url, tmp_path, sources=(src,), num_prompts=6))
    e = load_result(path)["energy"]
    assert e is not None and e["source"] == "replay" and e["measured"] is False
    assert e["whole_run"]["total_energy_j"] == pytest.approx(
        150.0 * e["whole_run"]["duration_s"], abs=150.0 * EDGE_S
    )


def test_simulated_load_follows_requests(tmp_path: Path) -> None:
    src = SimulatedSource(idle_w=50.0, busy_w=250.0)
    with FakeOpenAIServer(ServerConfig(itl_s=0.002)) as s:
        (path,) = run_server_bench(cfg(s.url, tmp_path, sources=(src,), num_prompts=12))
    e = load_result(path)["energy"]
    assert e is not None
    assert 50.0 < e["avg_power_w"] <= 250.0
    assert src.read_power_w() == {"sim0": 50.0}  # idle again after the run


def test_errors_counted_by_kind(tmp_path: Path) -> None:
    faults = {0: Fault(status=500), 5: Fault(drop_after=2), 9: Fault(malformed_after=1)}
    with FakeOpenAIServer(ServerConfig(faults=faults.get)) as s:
        (path,) = run_server_bench(cfg(s.url, tmp_path, num_prompts=12))
    d = load_result(path)
    m = d["metrics"]
    # Three failed requests: the run finished, but it is not "complete" (issue 9 §4).
    assert d["status"] == "complete-with-failures"
    assert d["partial_reason"] is not None and "3 of 12 requests failed" in d["partial_reason"]
    assert m["completed"] == 9 and m["failed"] == 3
    assert m["errors"] == {"connection_dropped": 1, "http_500": 1, "malformed_sse": 1}
    assert m["total_output_tokens"] == 9 * 16
    rows = list(csv.DictReader((tmp_path / str(d["requests_csv"])).read_text().splitlines()))
    assert sorted(r["error_kind"] for r in rows if r["error_kind"]) == [
        "connection_dropped",
        "http_500",
        "malformed_sse",
    ]
    notes = summary_notes([path])
    assert any("http_500 x1" in n for n in notes)
    assert any("3 of 12 requests failed (25.0%), more than" in n for n in notes)
    assert exit_code([path]) == 1


def test_every_request_failed_is_failed(tmp_path: Path) -> None:
    with FakeOpenAIServer(ServerConfig(faults=every(1, Fault(status=503)))) as s:
        (path,) = run_server_bench(cfg(s.url, tmp_path, num_prompts=4))
    d = load_result(path)
    assert d["status"] == "failed"
    assert d["partial_reason"] == "every request failed (http_503: 4)"
    assert d["energy"] is not None and d["energy"]["j_per_output_token"] is None


def test_sweep_writes_one_file_per_level(tmp_path: Path) -> None:
    with FakeOpenAIServer() as s:
        paths = run_server_bench(
            cfg(s.url, tmp_path, num_prompts=6, max_concurrencies=(1, 3), label="my run")
        )
        again = run_server_bench(
            cfg(s.url, tmp_path, num_prompts=2, max_concurrencies=(1,), label="my run")
        )
    assert [p.name for p in paths] == ["my-run_c1.json", "my-run_c3.json"]
    assert again[0].name == "my-run_c1-2.json"  # never overwrites
    assert [load_result(p)["load"]["value"] for p in paths] == [1.0, 3.0]
    with FakeOpenAIServer() as s:
        (rp,) = run_server_bench(
            cfg(s.url, tmp_path, num_prompts=5, request_rates=(50.0,), max_concurrencies=(None,))
        )
    d = load_result(rp)
    assert d["load"] == {"kind": "rate", "value": 50.0}
    assert d["config"]["request_rate"] == 50.0 and d["config"]["max_concurrency"] is None
    assert summary_table(paths).row_count > 5


def test_ctrl_c_keeps_partial(tmp_path: Path) -> None:
    with FakeOpenAIServer(ServerConfig(itl_s=0.01)) as s:
        timer = threading.Timer(0.6, signal.raise_signal, (signal.SIGINT,))
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            run_server_bench(cfg(s.url, tmp_path, num_prompts=200, max_concurrencies=(2,)))
        timer.join()
    (path,) = tmp_path.glob("*.json")
    d = load_result(path)
    assert d["status"] == "partial"
    assert d["partial_reason"] is not None and "interrupted" in d["partial_reason"]
    assert 0 < d["metrics"]["completed"] < 200
    assert d["energy"] is not None
    rows = list(csv.DictReader((tmp_path / str(d["requests_csv"])).read_text().splitlines()))
    assert len(rows) == d["metrics"]["completed"] + d["metrics"]["failed"]


def test_server_gone_is_partial(tmp_path: Path) -> None:
    s = FakeOpenAIServer(ServerConfig(itl_s=0.01)).start()
    timer = threading.Timer(0.5, s.stop)
    timer.start()
    try:
        (path,) = run_server_bench(cfg(s.url, tmp_path, num_prompts=100, max_concurrencies=(2,)))
    finally:
        timer.join()
        s.stop()
    d = load_result(path)
    assert d["status"] == "partial"
    assert "stopped accepting connections" in str(d["partial_reason"])
    assert d["metrics"]["errors"].get("connect_error", 0) > 0


def test_running_document_is_written_first(tmp_path: Path) -> None:
    seen: list[str] = []
    with FakeOpenAIServer(ServerConfig(itl_s=0.01)) as s:
        config = cfg(s.url, tmp_path, num_prompts=16, max_concurrencies=(2,))
        timer = threading.Timer(
            0.5, lambda: seen.append(load_result(tmp_path / "perwatt-test-model_c2.json")["status"])
        )
        timer.start()
        run_server_bench(config)
        timer.join()
    assert seen == ["running"]


def test_nothing_written_on_bad_setup(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with FakeOpenAIServer() as s:
        with pytest.raises(ConfigError, match="available: perwatt-test-model"):
            run_server_bench(cfg(s.url, out, model="gpt-9"))
        bad = tmp_path / "bad.jsonl"
        bad.write_text("{nope\n")
        with pytest.raises(Exception, match=r"bad\.jsonl:1"):
            run_server_bench(cfg(s.url, out, dataset=bad))
    assert not out.exists()


def test_skipped_workload_rows_are_in_the_summary(tmp_path: Path) -> None:
    data = tmp_path / "w.jsonl"
    good = '{"prompt": "one two three four five", "output_len": 4}'
    data.write_text(f'{good}\n{{"prompt": 5}}\n{good}\n[1]\n')
    with FakeOpenAIServer() as s:
        (path,) = run_server_bench(cfg(s.url, tmp_path, num_prompts=2, dataset=data))
    assert load_result(path)["config"]["workload"]["skipped_rows"] == 2
    assert any("2 of 4 workload rows skipped" in n for n in summary_notes([path]))


def test_non_streaming_without_usage_says_words_not_chunks(tmp_path: Path) -> None:
    with FakeOpenAIServer(ServerConfig(usage="never")) as s:
        (path,) = run_server_bench(cfg(s.url, tmp_path, num_prompts=2, stream=False))
    notes = summary_notes([path])
    assert any("approximate: whitespace words" in n for n in notes)
    assert not any("stream chunks" in n for n in notes)


def test_unusable_result_dir_is_one_line_error(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    with FakeOpenAIServer() as s:
        with pytest.raises(ConfigError, match="is a file; give a directory"):
            run_server_bench(cfg(s.url, afile, num_prompts=2))
        with pytest.raises(ConfigError, match="cannot create --result-dir"):
            run_server_bench(cfg(s.url, afile / "sub", num_prompts=2))
        assert s.stats.generation_requests == 0
    assert afile.read_text() == "x"


def test_config_validation(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sweep one"):
        cfg("http://x/v1", tmp_path, request_rates=(1.0, 2.0), max_concurrencies=(1, 2))
    with pytest.raises(ConfigError, match="pue"):
        cfg("http://x/v1", tmp_path, pue=0.5)
    with pytest.raises(ConfigError, match="idle"):
        cfg("http://x/v1", tmp_path, subtract_idle=True)
    for bad in (math.nan, math.inf, -1.0):
        with pytest.raises(ConfigError, match="idle_seconds must be a finite number"):
            cfg("http://x/v1", tmp_path, idle_seconds=bad, subtract_idle=True)
    with pytest.raises(ConfigError, match="endpoint"):
        cfg("http://x/v1", tmp_path, endpoint="embeddings")
    assert parse_rate_list("1, 2.5,inf") == (1.0, 2.5, None)
    assert parse_int_list("1,4,16", "--max-concurrency") == (1, 4, 16)
    with pytest.raises(ConfigError):
        parse_rate_list("fast")
    with pytest.raises(ConfigError):
        parse_rate_list("-1")
    with pytest.raises(ConfigError):
        parse_int_list("0", "--batch")


def test_idle_baseline_share(tmp_path: Path) -> None:
    src = SimulatedSource(idle_w=40.0, busy_w=240.0)
    with FakeOpenAIServer(ServerConfig(itl_s=0.002)) as s:
        (path,) = run_server_bench(
            cfg(s.url, tmp_path, sources=(src,), num_prompts=8, idle_seconds=0.3)
        )
    e = load_result(path)["energy"]
    assert e is not None
    assert e["idle_power_w"] == pytest.approx(40.0, rel=1e-4)
    assert e["idle_share"] is not None and 0.1 < e["idle_share"] <= 1.0
    assert e["idle_subtracted"] is False


def test_auto_energy_source_refuses_a_remote_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from perwatt.bench.runner import _is_local_host, _open_sources

    monkeypatch.delenv("PERWATT_DCGM_URL", raising=False)
    remote = cfg("http://10.1.2.3:8000/v1", tmp_path, sources=None, energy_source="auto")
    with pytest.raises(ConfigError, match="dcgm:URL"):
        _open_sources(remote)
    assert _is_local_host("127.0.0.1") and _is_local_host("localhost") and _is_local_host("[::1]")
    assert not _is_local_host("10.1.2.3") and not _is_local_host("gpu-node-7")
    # A named source is the user's choice and is honoured.
    named = cfg("http://10.1.2.3:8000/v1", tmp_path, sources=None, energy_source="simulated")
    sources, opened = _open_sources(named)
    assert opened and [s.name for s in sources] == ["simulated"]


def test_energy_select_reaches_the_remote_source(tmp_path: Path) -> None:
    from perwatt.bench.runner import _open_sources
    from perwatt.meter.detect import close_sources
    from perwatt.meter.fake_dcgm import FakeDCGMExporter

    with FakeDCGMExporter("node1", (100.0, 200.0)) as exp:
        c = cfg("http://10.1.2.3:8000/v1", tmp_path, sources=None,
                energy_source=f"dcgm:{exp.url}", energy_select="1")  # fmt: skip
        sources, opened = _open_sources(c)
        try:
            assert opened and sources[0].devices == ("node1/gpu1",)
        finally:
            close_sources(sources)
    local = cfg("http://127.0.0.1:8000/v1", tmp_path, sources=None,
                energy_source="simulated", energy_select="0")  # fmt: skip
    with pytest.raises(ConfigError, match="--select chooses GPUs of dcgm"):
        _open_sources(local)


def test_large_synthetic_workload_is_announced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import perwatt.bench.runner as R

    monkeypatch.setattr(R, "_SAY_BUILDING_FROM", 100)  # instead of millions of words
    lines: list[str] = []
    with FakeOpenAIServer() as s:
        run_server_bench(cfg(s.url, tmp_path, num_prompts=4, input_len=25, log=lines.append))
    assert any(line.startswith("building 4 synthetic prompts of ~25 tokens") for line in lines)
