"""``perwatt compare``, ``perwatt report`` and ``perwatt quality`` invoked as a user would."""

from __future__ import annotations

import json
import re
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from perwatt.bench.result import load_result
from perwatt.cli import main

DATA = Path(__file__).parents[1] / "bench" / "data"


def test_compare_text_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(DATA / f) for f in ("bf16_c1.json", "bf16_c4.json", "fp8_c1.json", "fp8_c4.json")]
    assert main(["compare", *files, "--resamples", "300"]) == 0
    out = capsys.readouterr().out
    assert "J / output token" in out and "(simulated)" in out
    assert "fp8 / bf16" in out and "better" in out
    assert main(["compare", *files, "--resamples", "300", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["baseline"] == "bf16" and doc["series"] == ["bf16", "fp8"]
    assert [lv["load"]["value"] for lv in doc["levels"]] == [1.0, 4.0]
    jpt = doc["levels"][0]["metrics"][0]
    assert jpt["key"] == "j_per_output_token"
    assert jpt["ratios_vs_baseline"][0]["verdict"] == "better"


def test_report_writes_html(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.html"
    rc = main(["report", str(DATA / "bf16_c4.json"), str(DATA / "fp8_c4.json"), "--out", str(out)])
    assert rc == 0
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert f"wrote {out}" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["compare", "report"])
@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{oops", "not valid JSON"),
        ('{"schema": "perwatt.bench.result/2"}', "not supported"),
        ('{"schema": "perwatt.bench.result/1"}', "missing key"),
    ],
)
def test_malformed_result_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, content: str, message: str
) -> None:
    bad = tmp_path / "broken.json"
    bad.write_text(content)
    args = [command, str(DATA / "bf16_c4.json"), str(bad)]
    if command == "report":
        args += ["--out", str(tmp_path / "r.html")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "broken.json" in err and message in err
    assert "Traceback" not in err


class _Echo(BaseHTTPRequestHandler):
    """Greedy 'model': answers the prompt reversed; the candidate changes the last word."""

    candidate = False

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._send({"data": [{"id": "echo"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        words = body["prompt"].split()[::-1]
        if self.candidate and len(words) > 2:
            words[-1] = "CHANGED"
        toks = [w + " " for w in words]
        lps = [-0.1] * len(toks)
        if self.candidate:
            lps = [-0.15] * len(toks)
        self._send(
            {
                "choices": [
                    {
                        "text": "".join(toks),
                        "finish_reason": "length",
                        "logprobs": {"tokens": toks, "token_logprobs": lps, "top_logprobs": None},
                    }
                ]
            }
        )

    def _send(self, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Candidate(_Echo):
    candidate = True


@pytest.fixture
def echo_servers() -> Iterator[tuple[str, str]]:
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), h) for h in (_Echo, _Candidate)]
    for s in servers:
        threading.Thread(
            target=s.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()
    yield tuple(f"http://127.0.0.1:{s.server_address[1]}/v1" for s in servers)  # type: ignore[misc]
    for s in servers:
        s.shutdown()
        s.server_close()


def test_quality_cli_attach(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], echo_servers: tuple[str, str]
) -> None:
    ref, cand = echo_servers
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "one two three"}\n{"prompt": "short"}\n')
    run = tmp_path / "fp8_c4.json"
    shutil.copy(DATA / "fp8_c4.json", run)
    q = tmp_path / "q.json"
    rc = main(
        [
            "quality", "--quality", str(prompts), "--url", ref, "--url", cand,
            "--max-tokens", "8", "--out", str(q), "--attach", str(run), "--control",
        ]
    )  # fmt: skip
    # Top-1 agreement 0.75 is below the guard's 0.9: the run is written and attached, and the
    # exit code says the candidate fails (issue 9: a guard must judge).
    assert rc == 3
    out = capsys.readouterr().out
    assert "exact match        0.5000" in out
    assert "control A vs A     exact 1.0000" in out
    assert "verdict            FAIL (top-1 0.75 < 0.9)" in out
    acc = load_result(run)["accuracy"]
    assert acc is not None and acc["exact_match"] == 0.5
    assert acc["logprob_agreement"] == pytest.approx(0.951229, rel=1e-5)  # exp(-0.05)
    assert json.loads(q.read_text())["summary"]["top1_agreement"] == pytest.approx(3 / 4)


def test_quality_cli_verdict_and_thresholds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], echo_servers: tuple[str, str]
) -> None:
    ref, cand = echo_servers
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "one two three"}\n{"prompt": "short"}\n')
    base = ["quality", "--prompts", str(prompts), "--url", ref, "--url", cand, "--max-tokens", "8"]
    assert main([*base, "--min-top1", "0.7"]) == 0
    assert "verdict            PASS (guard: top-1 >= 0.7" in capsys.readouterr().out
    assert main([*base, "--min-top1", "off", "--min-logprob-agreement", "0.99", "--json"]) == 3
    doc = json.loads(capsys.readouterr().out)
    assert doc["guard"]["status"] == "fail"
    assert doc["guard"]["failures"] == ["logprob agreement 0.951 < 0.99"]
    assert doc["guard"]["thresholds"]["min_top1_agreement"] is None
    assert main([*base, "--max-kl", "-1"]) == 2
    assert "max_kl_mean must be a number >= 0" in capsys.readouterr().err


def test_quality_cli_needs_two_urls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "x"}\n')
    assert main(["quality", "--prompts", str(prompts), "--url", "http://127.0.0.1:1/v1"]) == 2
    assert "give --url twice" in capsys.readouterr().err


def test_done_means_bench_then_compare_and_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's acceptance path: two `perwatt bench` runs, then compare and report on them."""
    from perwatt.bench.testing import FakeOpenAIServer, ServerConfig

    for label, itl_s in (("slow", 0.004), ("fast", 0.002)):
        with FakeOpenAIServer(ServerConfig(itl_s=itl_s)) as s:
            rc = main(
                [
                    "bench", "--url", s.url, "--num-prompts", "24", "--max-concurrency", "4",
                    "--input-len", "32", "--output-len", "16", "--result-dir",
                    str(tmp_path / label), "--energy-source", "simulated", "--label", label,
                    "--quiet",
                ]
            )  # fmt: skip
            assert rc == 0
    capsys.readouterr()
    a = next((tmp_path / "slow").glob("*.json"))
    b = next((tmp_path / "fast").glob("*.json"))
    assert main(["compare", str(a), str(b), "--json", "--resamples", "300"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (level,) = doc["levels"]
    assert level["load"] == {"kind": "concurrency", "value": 4.0}
    tpot = next(m for m in level["metrics"] if m["key"] == "tpot_ms.p50")
    r = tpot["ratios_vs_baseline"][0]
    assert r["ratio"] < 1.0 and r["ci_low"] is not None  # per-request rows from the real CSV
    assert any("simulated" in w for w in doc["warnings"])
    out = tmp_path / "report.html"
    assert main(["report", str(a), str(b), "--out", str(out)]) == 0
    html = out.read_text()
    assert "are NOT measurements" in html and "steady state" in html


def test_quality_cli_unreachable_server_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], echo_servers: tuple[str, str]
) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    down = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    s.close()
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "x"}\n')
    ref, _ = echo_servers
    assert main(["quality", "--prompts", str(prompts), "--url", ref, "--url", down]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"perwatt: error: cannot reach the candidate server at {down}")
    assert "is the server running" in err and "--url" in err


class _SlowAfterTwo(_Echo):
    """Answers two requests at once, then holds each one until ``release`` (time for a Ctrl-C)."""

    answered = 0
    lock = threading.Lock()
    release = threading.Event()

    def do_POST(self) -> None:
        with self.lock:
            type(self).answered += 1
            n = type(self).answered
        if n > 2:
            self.release.wait(30)
            return  # the client is gone by now: answer nothing
        super().do_POST()


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGINT"), reason="needs SIGINT")
def test_quality_cli_ctrl_c_writes_partial_and_exits_130(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    _SlowAfterTwo.answered = 0
    _SlowAfterTwo.release.clear()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _SlowAfterTwo)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(f'{{"prompt": "w{i} x y"}}\n' for i in range(5)))
    out = tmp_path / "q.json"
    try:
        p = subprocess.Popen(
            [sys.executable, "-m", "perwatt", "quality", "--prompts", str(prompts),
             "--url", url, "--url", url, "--out", str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=Path(__file__).parents[2], env={**os.environ},
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while _SlowAfterTwo.answered < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _SlowAfterTwo.answered >= 3, "perwatt never reached the third request"
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=30)
    finally:
        _SlowAfterTwo.release.set()
        srv.shutdown()
        srv.server_close()
    assert p.returncode == 130, stderr
    assert "Traceback" not in stderr
    doc = json.loads(out.read_text())
    assert doc["status"] == "partial" and "interrupted" in doc["partial_reason"]
    assert len(doc["prompts"]) == 1 and doc["prompts_total"] == 5  # ref + cand per prompt
    assert "PARTIAL" in stdout and "1 of 5 prompts" in stdout
    assert f"wrote {out}" in stdout


def test_quality_cli_checks_attach_targets_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    class _Counting(_Echo):
        posts = 0

        def do_POST(self) -> None:
            type(self).posts += 1
            super().do_POST()

    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "one two three"}\n')
    missing = tmp_path / "no-such-run.json"
    try:
        rc = main(
            ["quality", "--prompts", str(prompts), "--url", url, "--url", url,
             "--attach", str(missing)]
        )  # fmt: skip
    finally:
        srv.shutdown()
        srv.server_close()
    assert rc == 2
    assert str(missing) in capsys.readouterr().err
    assert _Counting.posts == 0  # failed before spending a single request


def test_quality_cli_url_without_v1_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from perwatt.bench.testing import FakeOpenAIServer, ServerConfig

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "x"}\n')
    with FakeOpenAIServer(ServerConfig()) as s:
        bare = s.url.removesuffix("/v1")
        rc = main(["quality", "--prompts", str(prompts), "--url", s.url, "--url", bare])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "candidate server answered HTTP 404" in err
    assert "does its --url end with /v1" in err


def test_quality_cli_refuses_out_that_is_an_attach_target_or_the_prompts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], echo_servers: tuple[str, str]
) -> None:
    ref, cand = echo_servers
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "one two three"}\n')
    run = tmp_path / "run.json"
    shutil.copy(DATA / "fp8_c4.json", run)
    before = run.read_bytes()
    base = ["quality", "--prompts", str(prompts), "--url", ref, "--url", cand]
    assert main([*base, "--out", str(run), "--attach", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is also an --attach target" in err
    assert run.read_bytes() == before  # the bench result was not overwritten
    assert main([*base, "--out", str(prompts)]) == 2
    assert "is the prompt file" in capsys.readouterr().err
    assert prompts.read_text() == '{"prompt": "one two three"}\n'


def test_quality_cli_url_without_host_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "x"}\n')
    assert main(["quality", "--prompts", str(prompts), "--url", "http://", "--url", "http://"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the reference --url 'http://' has no host" in err


def test_quality_cli_sigterm_writes_partial_prints_and_exits_143(tmp_path: Path) -> None:
    """SIGTERM (`timeout`, a scheduler) ends quality as Ctrl-C does; it used to die at once,
    printing nothing and leaving --out `running`."""
    import os
    import signal
    import subprocess
    import sys
    import time

    _SlowAfterTwo.answered = 0
    _SlowAfterTwo.release.clear()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _SlowAfterTwo)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(f'{{"prompt": "w{i} x y"}}\n' for i in range(5)))
    out = tmp_path / "q.json"
    try:
        p = subprocess.Popen(
            [sys.executable, "-m", "perwatt", "quality", "--prompts", str(prompts),
             "--url", url, "--url", url, "--out", str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=Path(__file__).parents[2], env={**os.environ},
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while _SlowAfterTwo.answered < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _SlowAfterTwo.answered >= 3, "perwatt never reached the third request"
        p.send_signal(signal.SIGTERM)
        stdout, stderr = p.communicate(timeout=30)
    finally:
        _SlowAfterTwo.release.set()
        srv.shutdown()
        srv.server_close()
    assert p.returncode == 143, stderr
    assert "Traceback" not in stderr
    doc = json.loads(out.read_text())
    assert doc["status"] == "partial"
    assert doc["partial_reason"].startswith("interrupted by SIGTERM")
    assert len(doc["prompts"]) == 1 and doc["prompts_total"] == 5
    assert "PARTIAL" in stdout and "1 of 5 prompts" in stdout
    assert f"wrote {out}" in stdout


def _perwatt_sh(command: str, cwd: Path) -> Any:
    """Run a `perwatt ...` command line through a shell (globs expand as a user's would)."""
    import os
    import shlex
    import subprocess
    import sys

    root = Path(__file__).parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        ["sh", "-c", f"{shlex.quote(sys.executable)} -m perwatt {command}"],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize(
    "out",
    [
        "runs/bf16_c4.json",  # one of the files the shell glob runs/*.json gave
        '"$PWD/runs/fp8_c4.json"',  # the same file, absolute
        "./runs/../runs/fp8_c4.json",  # a relative path to an input
        "link.json",  # a symlink to an input
    ],
)
def test_report_refuses_to_overwrite_an_input(tmp_path: Path, out: str) -> None:
    """`perwatt report RUN.json … --out RUN.json` used to replace a result file with HTML."""
    runs = tmp_path / "runs"
    runs.mkdir()
    for name in ("bf16_c4.json", "fp8_c4.json"):
        shutil.copy(DATA / name, runs / name)
    (tmp_path / "link.json").symlink_to(runs / "bf16_c4.json")
    before = {p.name: p.read_bytes() for p in runs.iterdir()}
    r = _perwatt_sh(f"report runs/*.json --out {out}", tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("perwatt: error: --out ") and "is one of the input files" in r.stderr
    assert {p.name: p.read_bytes() for p in runs.iterdir()} == before
    assert (tmp_path / "link.json").is_symlink()


def test_report_replaces_only_its_own_html_unless_forced(tmp_path: Path) -> None:
    shutil.copy(DATA / "bf16_c4.json", tmp_path / "run.json")
    notes = tmp_path / "notes.html"
    notes.write_text("<!DOCTYPE html><html><body>my notes</body></html>\n")
    r = _perwatt_sh("report run.json --out notes.html", tmp_path)
    assert r.returncode == 2 and "exists and is not a report perwatt wrote" in r.stderr
    assert "--force" in r.stderr and r.stderr.count("\n") == 1
    assert "my notes" in notes.read_text()
    # a report perwatt wrote is replaced without --force (the usual re-run) ...
    assert _perwatt_sh("report run.json --out r.html", tmp_path).returncode == 0
    first = (tmp_path / "r.html").read_text()
    assert '<meta name="generator" content="perwatt ' in first
    r = _perwatt_sh("report run.json --out r.html --title again", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "<title>again</title>" in (tmp_path / "r.html").read_text()
    # ... and so is one written before reports carried the generator tag
    old = re.sub(r'<meta name="generator"[^>]*>', "", first)
    (tmp_path / "r.html").write_text(old)
    assert _perwatt_sh("report run.json --out r.html", tmp_path).returncode == 0
    # --force replaces anything, and what it writes is whole (no .tmp left)
    r = _perwatt_sh("report run.json --out notes.html --force", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "my notes" not in notes.read_text() and notes.read_text().rstrip().endswith("</html>")
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--resamples", "1000000000"], "--resamples must be an integer in 100..1,000,000"),
        (["--confidence", "nan"], "--confidence must be a finite number, got 'nan'"),
        (["--confidence", "inf"], "--confidence must be a finite number, got 'inf'"),
        (["--confidence", "1"], "--confidence must be in (0, 1)"),
    ],
)
def test_compare_refuses_unbounded_or_non_finite_flags(
    capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    """Issue 9 §4: --resamples 1000000000 ran for hours without a word."""
    files = [str(DATA / "bf16_c4.json"), str(DATA / "fp8_c4.json")]
    assert main(["compare", *files, *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("perwatt: error: ") and message in err[0], err


def test_compare_shows_bootstrap_progress_when_large(capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(DATA / "bf16_c4.json"), str(DATA / "fp8_c4.json")]
    assert main(["compare", *files, "--resamples", "20000", "--json"]) == 0
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert lines and lines[-1].startswith("perwatt compare: bootstrap ")
    done, total = lines[-1].split()[3].split("/")
    assert done == total and int(total) > 1
    assert json.loads(captured.out)["n_resamples"] == 20000
    # The default is quick: no progress lines.
    assert main(["compare", *files, "--json"]) == 0
    assert capsys.readouterr().err == ""


def test_compare_refuses_negative_j_per_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 9 §3: `perwatt compare` printed ratios from a result with negative J/token."""
    doc = json.loads((DATA / "fp8_c4.json").read_text())
    doc["energy"]["j_per_output_token"] = -abs(doc["energy"]["j_per_output_token"])
    bad = tmp_path / "fp8_c4.json"
    bad.write_text(json.dumps(doc))
    assert main(["compare", str(DATA / "bf16_c4.json"), str(bad), "--resamples", "300"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"perwatt: error: {bad}: energy.j_per_output_token is -")


def test_report_warns_about_a_file_given_twice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = DATA / "bf16_c4.json"
    out = tmp_path / "r.html"
    assert main(["report", str(a), str(a), str(DATA / "fp8_c4.json"), "--out", str(out)]) == 0
    assert f"warning: {a} is given more than once; reported once" in capsys.readouterr().err
    summary = out.read_text().split("<h2>Summary</h2>")[1].split("</table>")[0]
    assert summary.count("bf16_c4.json") == 1
