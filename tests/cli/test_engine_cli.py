"""``perwatt serve`` as a user runs it: a subprocess on a free loopback port."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from perwatt.cli import build_parser, main

pytest.importorskip("torch")
pytest.importorskip("uvicorn")

REPO = Path(__file__).resolve().parents[2]


def test_serve_parser_defaults_to_localhost() -> None:
    args = build_parser().parse_args(["serve", "--model", "tiny"])
    assert args.host == "127.0.0.1" and args.port == 8000
    # no --precision: bf16, or the precision of a `perwatt quantize` directory (see serve())
    assert args.precision is None and args.device == "auto"
    assert args.max_batch_size == 8


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--model", "tiny", "--port", "70000"],
        ["serve", "--model", "tiny", "--max-batch-size", "0"],
        ["serve"],
    ],
)
def test_serve_rejects_bad_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2


def test_serve_unknown_model_is_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["serve", "--model", "no-such-shape", "--port", "0", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "no-such-shape" in err


def _serve_argv(*extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "perwatt",
        "serve",
        "--port",
        "0",
        "--device",
        "cpu",
        "--max-batch-size",
        "2",
        "--max-seq-len",
        "64",
        *extra,
    ]


def test_serve_subprocess_answers_streaming_completion() -> None:
    # one intra-op thread: two OpenMP threads thrash on a busy shared 2-core runner
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(
        _serve_argv("--model", "tiny"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    ) as proc:
        _drive(proc)
        assert proc.returncode in (0, 130)  # graceful: uvicorn drains, then Ctrl-C gives 130


def _drive(proc: subprocess.Popen[str], first_line: str = "") -> None:
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once the engine is loaded and the port bound
        m = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
        assert m, f"no URL in {line!r}; stderr: {proc.stderr.read() if proc.stderr else ''}"
        assert "localhost only" in line and first_line in line
        base = f"http://127.0.0.1:{m.group(1)}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        body = {
            "model": "tiny",
            "prompt": "hello",
            "max_tokens": 4,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=60) as r:
            assert r.status_code == 200
            lines = [ln for ln in r.iter_lines() if ln]
        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(ln[len("data: ") :]) for ln in lines[:-1]]
        token_chunks = [c for c in chunks if c["choices"]]
        assert len(token_chunks) == 4
        assert token_chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert chunks[-1]["usage"]["completion_tokens"] == 4
        # the random-weight byte vocabulary still gives the tokens visible text
        assert "".join(c["choices"][0]["text"] for c in token_chunks)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise


# ---------------------------------------------------------------------- perwatt quantize
def test_quantize_writes_a_dir_and_prints_how_to_use_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tiny-int8"
    argv = ["quantize", "--model", "tiny", "--precision", "int8", "--out", str(out)]
    assert main([*argv, "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert f"perwatt quantize: tiny -> {out} (int8, " in text
    assert f"perwatt serve --model {out}" in text
    assert f"perwatt bench --engine builtin --model {out} --precision int8" in text
    manifest = json.loads((out / "perwatt-quantized.json").read_text())
    assert manifest["precision"] == "int8" and manifest["source"] == "tiny"
    # again: refused, one line, exit 2; --force replaces it
    assert main([*argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists; pass --force" in err
    assert main([*argv, "--device", "cpu", "--force", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["precision"] == "int8" and doc["directory"] == str(out)
    # --json prints the written directory's summary and duration_s, not the manifest file
    assert set(doc) == {
        "directory", "weights_file", "precision", "group_size", "source", "source_kind",
        "seed", "weights_device", "size_bytes", "duration_s",
    }  # fmt: skip
    with pytest.raises(SystemExit):
        main(["quantize", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "print the manifest as JSON" not in help_text
    assert "one JSON object" in help_text and "plus duration_s" in help_text


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--precision", "fp7"], "unknown precision 'fp7'"),
        (["--precision", "bf16"], "bf16 is not quantized"),
        (["--precision", "int8", "--model", "no-such-shape"], "no-such-shape"),
    ],
)
def test_quantize_bad_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], needle: str
) -> None:
    argv = ["quantize", "--model", "tiny", "--out", str(tmp_path / "q"), "--device", "cpu"]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err
    assert list(tmp_path.iterdir()) == []


def test_quantize_unwritable_out_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "f").write_text("x")
    argv = ["quantize", "--model", "tiny", "--precision", "int4", "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "f" / "q")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write --out" in err


def test_bench_builtin_runs_a_quantized_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "q"
    q = ["quantize", "--model", "tiny", "--precision", "int4", "--out", str(out)]
    assert main([*q, "--device", "cpu"]) == 0
    bench = ["bench", "--engine", "builtin", "--model", str(out), "--batch", "1",
             "--input-len", "4", "--output-len", "3", "--result-dir", str(tmp_path / "r"),
             "--energy-source", "simulated", "--device", "cpu", "--quiet", "--json",
             "--min-window-s", "0"]  # fmt: skip
    capsys.readouterr()
    # without --precision, bench takes the directory's; another precision is refused
    assert main([*bench, "--precision", "bf16"]) == 2
    assert "bench it with --precision int4" in capsys.readouterr().err
    for extra in ([], ["--precision", "int4"]):
        assert main([*bench, *extra]) == 0
        (path,) = json.loads(capsys.readouterr().out)
        doc = json.loads(Path(path).read_text())
        assert doc["status"] == "complete" and doc["builtin"]["quantized"]["precision"] == "int4"


def test_serve_subprocess_serves_a_quantized_dir(tmp_path: Path) -> None:
    out = tmp_path / "q"
    q = ["quantize", "--model", "tiny", "--precision", "int8", "--out", str(out)]
    assert main([*q, "--device", "cpu"]) == 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    # no --precision: the directory's; the name clients send is set as for any model
    argv = _serve_argv("--model", str(out), "--served-model-name", "tiny")
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env
    ) as proc:
        _drive(proc, first_line="perwatt serve: tiny (int8, 2 slots x 64 tokens)")
        assert proc.returncode in (0, 130)
    rc = main(["serve", "--model", str(out), "--precision", "int4", "--port", "0"])
    assert rc == 2  # the directory holds int8


def test_serve_sigterm_shuts_down_like_ctrl_c() -> None:
    """systemd and Kubernetes stop a server with SIGTERM: drain, say why, exit 143 (it died
    of the signal instead)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(
        _serve_argv("--model", "tiny"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
    ) as proc:  # fmt: skip
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # printed once the engine is loaded and the port bound
            assert "http://127.0.0.1:" in line, proc.stderr.read() if proc.stderr else ""
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 143, err
    assert "Traceback" not in err and err.rstrip().endswith("perwatt: interrupted by SIGTERM")


_SLOW_QUANTIZE = """
import sys, time
from pathlib import Path
import perwatt.engine.quantized_dir as q
from perwatt.cli import main

save = q.save_quantized
def slow_save(path, *args, **kwargs):
    save(path, *args, **kwargs)
    Path(sys.argv[1]).write_text("saved")  # the weights are in the temporary directory now
    time.sleep(120)
q.save_quantized = slow_save
sys.exit(main(sys.argv[2:]))
"""


def test_quantize_sigterm_leaves_no_half_written_directory(tmp_path: Path) -> None:
    """SIGTERM while quantize writes: the temporary directory is removed and nothing appears
    at --out, as on Ctrl-C (it used to die at once and leave `.OUT.*.tmp` behind)."""
    marker, out = tmp_path / "saved", tmp_path / "models" / "tiny-int8"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_QUANTIZE, str(marker), "quantize", "--model", "tiny",
         "--precision", "int8", "--device", "cpu", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert marker.exists(), proc.communicate()[1]
        assert list(out.parent.glob(".tiny-int8.*.tmp"))  # mid-write
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "perwatt: interrupted by SIGTERM" in err
    assert not out.parent.exists()  # the parent it created is gone too
