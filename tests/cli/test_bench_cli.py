"""``perwatt bench`` invoked as a user would, against the loopback server."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
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
