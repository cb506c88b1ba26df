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
    assert args.precision == "bf16" and args.device == "auto"
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


def test_serve_subprocess_answers_streaming_completion() -> None:
    # one intra-op thread: two OpenMP threads thrash on a busy shared 2-core runner
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "perwatt",
            "serve",
            "--model",
            "tiny",
            "--port",
            "0",
            "--device",
            "cpu",
            "--max-batch-size",
            "2",
            "--max-seq-len",
            "64",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    ) as proc:
        _drive(proc)
        assert proc.returncode in (0, 130)  # graceful: uvicorn drains, then Ctrl-C gives 130


def _drive(proc: subprocess.Popen[str]) -> None:
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once the engine is loaded and the port bound
        m = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
        assert m, f"no URL in {line!r}; stderr: {proc.stderr.read() if proc.stderr else ''}"
        assert "localhost only" in line
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
