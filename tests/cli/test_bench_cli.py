"""``perwatt bench`` invoked as a user would, against the loopback server."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from perwatt.bench.result import load_result
from perwatt.bench.testing import FakeOpenAIServer, Fault, ServerConfig, every
from perwatt.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_done_means(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "DIR"
    with FakeOpenAIServer(ServerConfig(itl_s=0.001)) as s:
        rc = main(
            [
                "bench",
                "--url",
                s.url,
                "--num-prompts",
                "24",
                "--max-concurrency",
                "4",
                "--input-len",
                "32",
                "--output-len",
                "16",
                "--result-dir",
                str(out),
                "--energy-source",
                "simulated",
            ]
        )
    assert rc == 0
    (path,) = out.glob("*.json")
    d = load_result(path)
    assert d["metrics"]["total_output_tokens"] == 384
    assert d["metrics"]["ttft_ms"]["p50"] is not None
    assert d["energy"] is not None and d["energy"]["source"] == "simulated"
    assert (out / str(d["requests_csv"])).exists()
    text = capsys.readouterr().out
    assert "J / output token" in text
    assert "simulated, whole run" in text
    assert "384 (usage)" in text


def test_sweep_chat_goodput_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with FakeOpenAIServer() as s:
        rc = main(
            [
                "bench", "--url", s.url, "--endpoint", "/v1/chat/completions",
                "--num-prompts", "6", "--request-rate", "100,200", "--input-len", "8",
                "--output-len", "4", "--goodput", "ttft:1000", "tpot:1000",
                "--result-dir", str(tmp_path), "--energy-source", "simulated", "--json",
                "--quiet", "--seed", "7",
            ]
        )  # fmt: skip
        body = s.stats.bodies[-1]
    assert rc == 0
    paths = [Path(p) for p in json.loads(capsys.readouterr().out)]
    assert [p.name for p in paths] == [
        "perwatt-test-model_r100.json",
        "perwatt-test-model_r200.json",
    ]
    d = load_result(paths[0])
    assert d["config"]["endpoint"] == "chat" and d["config"]["seed"] == 7
    assert d["metrics"]["goodput_rps"] is not None
    assert "messages" in body


def test_all_failed_exits_nonzero(tmp_path: Path) -> None:
    with FakeOpenAIServer(ServerConfig(faults=every(1, Fault(status=500)))) as s:
        rc = main(
            ["bench", "--url", s.url, "--num-prompts", "3", "--input-len", "4", "--output-len",
             "2", "--result-dir", str(tmp_path), "--energy-source", "simulated", "--quiet"]
        )  # fmt: skip
    assert rc == 1
    (path,) = tmp_path.glob("*.json")
    assert load_result(path)["status"] == "failed"


def test_unreachable_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "r"
    rc = main(["bench", "--url", f"http://127.0.0.1:{port}/v1", "--result-dir", str(out)])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("perwatt: error: cannot reach the server")
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--goodput", "ttft"], "--goodput"),
        (["--request-rate", "fast"], "--request-rate"),
        (["--max-concurrency", "0"], "--max-concurrency"),
        (["--endpoint", "embeddings"], "--endpoint"),
        (["--extra-body", "{"], "--extra-body"),
        (["--pue", "0.9"], "pue"),
        (["--input-dist", "weird"], "length distribution"),
    ],
)
def test_bad_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    with FakeOpenAIServer() as s:
        rc = main(["bench", "--url", s.url, "--result-dir", str(tmp_path / "x"), *args])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_missing_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench"]) == 2
    assert "--url is required" in capsys.readouterr().err


def test_builtin_dispatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import perwatt.engine.bench as eb

    seen: dict[str, Any] = {}
    result = tmp_path / "b.json"

    def fake(**kw: Any) -> list[Path]:
        seen.update(kw)
        from perwatt.bench.result import example_result, write_result

        write_result(result, example_result())
        return [result]

    monkeypatch.setattr(eb, "run_builtin_bench", fake)
    rc = main(
        ["bench", "--engine", "builtin", "--model", "tiny", "--precision", "bf16,int8",
         "--batch", "1,8", "--input-len", "16", "--output-len", "8", "--result-dir",
         str(tmp_path), "--energy-source", "simulated", "--device", "cpu", "--quiet"]
    )  # fmt: skip
    assert rc == 0
    assert seen["model"] == "tiny"
    assert seen["precisions"] == ["bf16", "int8"]
    assert seen["batches"] == [1, 8]
    assert seen["input_len"] == 16 and seen["output_len"] == 8
    assert seen["device"] == "cpu" and seen["energy_source"] == "simulated"
    assert main(["bench", "--engine", "builtin"]) == 2


def test_builtin_without_torch_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    assert main(["bench", "--engine", "builtin", "--model", "tiny"]) == 2
    assert "pip install 'perwatt[engine]'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("sig", "times", "code", "words"),
    [
        (signal.SIGTERM, 1, 143, "interrupted by SIGTERM"),
        (signal.SIGINT, 1, 130, "interrupted by Ctrl-C"),
        (signal.SIGTERM, 2, 143, "interrupted by SIGTERM"),  # the second during clean-up
    ],
)
def test_signal_keeps_the_partial_result_with_its_energy(
    tmp_path: Path, sig: signal.Signals, times: int, code: int, words: str
) -> None:
    """`timeout`, Slurm, systemd and Kubernetes stop a bench with SIGTERM: it must end as Ctrl-C
    does (it used to die at once: the result stayed `running`, its energy lost, nothing printed).
    A second signal while the result is finished must not cut it short."""
    with FakeOpenAIServer(ServerConfig(itl_s=0.01)) as s:
        p = subprocess.Popen(
            [sys.executable, "-m", "perwatt", "bench", "--url", s.url, "--num-prompts", "400",
             "--max-concurrency", "2", "--input-len", "8", "--output-len", "20",
             "--result-dir", str(tmp_path), "--energy-source", "simulated"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while s.stats.completed < 4 and time.monotonic() < deadline and p.poll() is None:
                time.sleep(0.02)
            assert s.stats.completed >= 4, "the bench never got going"
            for _ in range(times):
                p.send_signal(sig)
                time.sleep(0.01)
            out, err = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
    assert p.returncode == code, err
    assert "Traceback" not in err
    assert f"perwatt: {words}" in err
    (path,) = tmp_path.glob("*.json")
    d = load_result(path)
    assert d["status"] == "partial" and d["partial_reason"].startswith(words)
    assert d["metrics"]["completed"] >= 4
    assert d["energy"] is not None and d["energy"]["whole_run"]["total_energy_j"] > 0
    assert "perwatt bench" in out and "J / output token" in out  # the summary was printed
    assert not list(tmp_path.glob("*.tmp"))


def test_builtin_sigterm_marks_the_point_and_prints_the_summary(tmp_path: Path) -> None:
    """The built-in engine's sweep on SIGTERM: the point it was measuring is written with the
    reason (not left `running`), the summary printed, exit 143."""
    pytest.importorskip("torch")
    p = subprocess.Popen(
        [sys.executable, "-m", "perwatt", "bench", "--engine", "builtin", "--model", "tiny",
         "--device", "cpu", "--batch", "1", "--input-len", "8", "--output-len", "8",
         "--min-window-s", "300", "--result-dir", str(tmp_path), "--energy-source", "simulated"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and p.poll() is None:
            docs = list(tmp_path.glob("*.json"))
            if docs and load_result(docs[0])["status"] == "running":  # measuring now
                break
            time.sleep(0.1)
        assert p.poll() is None, p.communicate()[1]
        time.sleep(0.5)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143, err
    assert "Traceback" not in err and "perwatt: interrupted by SIGTERM" in err
    (path,) = tmp_path.glob("*.json")
    d = load_result(path)
    assert d["status"] != "running"
    assert d["partial_reason"] == "interrupted by SIGTERM before this point finished"
    assert "perwatt bench" in out  # the summary table


@contextlib.contextmanager
def _test_server(*flags: str) -> Iterator[str]:
    """``python -m perwatt.bench.testing FLAGS`` in a subprocess, as a user starts it; its URL."""
    with subprocess.Popen(
        [sys.executable, "-m", "perwatt.bench.testing", "--port", "0", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("serving "), line + proc.stdout.read()
            yield line.split(" at ", 1)[1].split()[0]
        finally:
            proc.terminate()
            proc.wait(10)


def _bench(url: str, out: Path, *flags: str) -> int:
    return main(
        ["bench", "--url", url, "--num-prompts", "8", "--input-len", "4", "--output-len", "12",
         "--result-dir", str(out), "--energy-source", "simulated", *flags]
    )  # fmt: skip


def test_failed_requests_fail_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 9 §4: a server that fails every second request with HTTP 500 is no complete run."""
    with _test_server("--fail-every", "2") as url:
        rc = _bench(url, tmp_path / "strict", "--max-concurrency", "2")
        text = " ".join(capsys.readouterr().out.split())  # unwrapped
        (path,) = (tmp_path / "strict").glob("*.json")
        d = load_result(path)
        assert rc == 1
        assert d["status"] == "complete-with-failures"
        assert d["partial_reason"] is not None and "4 of 8 requests failed" in d["partial_reason"]
        assert d["metrics"]["completed"] == 4 and d["metrics"]["errors"] == {"http_500": 4}
        assert "complete-with-failures" in text
        assert "4 of 8 requests failed (50.0%), more than --max-failed-fraction 0" in text
        # A threshold the user sets: the status still says so, the exit code follows the flag.
        rc = _bench(url, tmp_path / "loose", "--max-failed-fraction", "0.5", "--quiet")
        text = " ".join(capsys.readouterr().out.split())  # unwrapped
        (path,) = (tmp_path / "loose").glob("*.json")
        assert rc == 0
        assert load_result(path)["status"] == "complete-with-failures"
        assert "within --max-failed-fraction 0.5" in text


def test_byte_fallback_server_counts_every_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 10 item 10: empty-text chunks are tokens; exact counts with and without usage."""
    for usage in ("never", "requested"):
        with _test_server("--empty-text-every", "3", "--usage", usage) as url:
            for endpoint in ("completions", "chat"):
                out = tmp_path / f"{usage}-{endpoint}"
                assert _bench(url, out, "--endpoint", endpoint, "--quiet") == 0
                (path,) = out.glob("*.json")
                m = load_result(path)["metrics"]
                assert m["total_output_tokens"] == 8 * 12, (usage, endpoint)
                assert m["token_count_source"] == ("chunks" if usage == "never" else "usage")
    capsys.readouterr()


def test_single_slot_server_truncation_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 10 item 11: a single-slot server cuts streams at concurrency 4."""
    with _test_server("--single-slot", "--itl-ms", "5", "--usage", "never") as url:
        rc = _bench(url, tmp_path / "c4", "--max-concurrency", "4")
        text = " ".join(capsys.readouterr().out.split())  # unwrapped
        (path,) = (tmp_path / "c4").glob("*.json")
        d = load_result(path)
        assert rc == 1
        assert d["status"] == "complete-with-failures"
        assert d["metrics"]["errors"].get("truncated", 0) >= 4
        reason = d["partial_reason"] or ""
        assert "without parallel slots at concurrency > 1" in reason
        assert "truncated x" in text and "without parallel slots" in text
        # One request at a time: nothing arrives while a stream is in flight.
        rc = _bench(url, tmp_path / "c1", "--max-concurrency", "1", "--quiet")
        (path,) = (tmp_path / "c1").glob("*.json")
        assert rc == 0
        d = load_result(path)
        assert d["status"] == "complete" and d["metrics"]["total_output_tokens"] == 8 * 12
    capsys.readouterr()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input-len", "100000000"], "--input-len must be in 1..1,048,576 tokens"),
        (["--output-len", "100000000"], "--output-len must be in 1..1,048,576 tokens"),
        (["--num-prompts", "10000000"], "--num-prompts must be in 1..1,000,000"),
        (["--num-prompts", "1000", "--input-len", "100000"], "use fewer or shorter prompts"),
        (["--timeout", "nan"], "--timeout must be a finite number of seconds"),
        (["--timeout", "1e9"], "--timeout must be > 0 and at most 86400"),
        (["--burstiness", "inf"], "--burstiness must be a finite number"),
        (["--idle-seconds", "nan"], "--idle-seconds must be a finite number"),
        (["--idle-seconds", "1e6"], "at most 3600"),
        (["--price-per-kwh", "nan"], "--price-per-kwh must be a finite number"),
        (["--pue", "inf"], "--pue must be a finite number"),
        (["--max-failed-fraction", "1.5"], "--max-failed-fraction must be a finite number"),
        (["--max-failed-fraction", "nan"], "--max-failed-fraction"),
        (["--output-dist", "normal:inf"], "normal:X needs 0 <= X <= 10"),
        (["--request-rate", "nan"], "--request-rate"),
    ],
)
def test_unbounded_or_non_finite_flags_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    """Issue 9 §4: NaN, infinity and absurd sizes are refused before anything is sent."""
    with FakeOpenAIServer() as s:
        rc = main(["bench", "--url", s.url, "--result-dir", str(tmp_path / "x"), *args])
        assert s.stats.generation_requests == 0
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("perwatt: error: ") and message in err[0], err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--min-window-s", "nan"], "--min-window-s must be a finite number of seconds"),
        (["--min-window-s", "1e9"], "--min-window-s must be a number of seconds in [0, 3600]"),
        (["--precision", "bogus"], "--precision 'bogus' is unknown"),
        (["--input-len", "100000000"], "exceed the model's 2048 positions"),
    ],
)
def test_builtin_options_fail_before_any_load(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    message: str,
) -> None:
    """Issue 9 §4: the builtin bench ran forever on --min-window-s nan, and an invalid precision
    was caught only after a model load."""
    pytest.importorskip("torch")
    import perwatt.engine.bench as eb

    def no_load(*a: Any, **k: Any) -> Any:
        raise AssertionError("loaded before the options were checked")

    monkeypatch.setattr(eb, "_load", no_load)
    monkeypatch.setattr(eb, "reference_run", no_load)
    rc = main(
        ["bench", "--engine", "builtin", "--model", "tiny", "--device", "cpu", "--energy-source",
         "simulated", "--result-dir", str(tmp_path / "x"), *args]
    )  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "x").exists()
