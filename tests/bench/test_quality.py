from __future__ import annotations

import hashlib
import json
import math
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from perwatt.bench import quality as q
from perwatt.bench.result import load_result
from perwatt.errors import ConfigError, DataFormatError, RemoteSourceError
from tests.conftest import Loopback

DATA = Path(__file__).parent / "data"
VOCAB = ["the", " cat", " sat", " on", " a", " mat", ".", " It", " was", " warm"]


class ToyLM:
    """A deterministic 'model': token i of a prompt's answer is a hash of (prompt, i)."""

    def __init__(
        self,
        *,
        diverge_at: dict[str, int] | None = None,
        logprob_shift: float = 0.0,
        logprobs: bool = True,
        flaky: bool = False,
    ) -> None:
        self.diverge_at = diverge_at or {}
        self.logprob_shift = logprob_shift
        self.logprobs = logprobs
        self.flaky = flaky
        self.calls = 0
        self.requests: list[dict[str, Any]] = []

    def tokens(self, prompt: str, n: int) -> list[str]:
        out = []
        for i in range(n):
            h = int(hashlib.sha256(f"{prompt}|{i}".encode()).hexdigest(), 16)
            tok = VOCAB[h % len(VOCAB)]
            d = self.diverge_at.get(prompt)
            if d is not None and i >= d:
                tok = VOCAB[(h + 1) % len(VOCAB)]  # a different answer from position d on
            if self.flaky and self.calls % 2 == 0 and i == n - 1:
                tok = VOCAB[(h + 3) % len(VOCAB)]  # nondeterministic last token
            out.append(tok)
        return out

    def answer(self, body: dict[str, Any], chat: bool) -> dict[str, Any]:
        self.calls += 1
        self.requests.append(body)
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        toks = self.tokens(prompt, int(body["max_tokens"]))
        lps = [-0.05 - 0.01 * i + self.logprob_shift for i in range(len(toks))]
        tops = [
            {t: lp, "<alt1>": lp - 2.0 - self.logprob_shift, "<alt2>": lp - 3.0}
            for t, lp in zip(toks, lps, strict=True)
        ]
        text = "".join(toks)
        want_lp = body.get("logprobs") not in (None, False, 0)
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "length",
                "logprobs": None,
            }
            if want_lp:
                choice["logprobs"] = {
                    "content": [
                        {
                            "token": t,
                            "logprob": lp,
                            "top_logprobs": [{"token": k, "logprob": v} for k, v in top.items()],
                        }
                        for t, lp, top in zip(toks, lps, tops, strict=True)
                    ]
                }
        else:
            choice = {"index": 0, "text": text, "finish_reason": "length", "logprobs": None}
            if want_lp:
                choice["logprobs"] = {"tokens": toks, "token_logprobs": lps, "top_logprobs": tops}
        return {"id": "x", "object": "text_completion", "model": "toy", "choices": [choice]}


def _serve(loopback: Loopback, lm: ToyLM) -> str:
    """Mount ``lm`` as an OpenAI-compatible server on the session's loopback; its /v1 URL."""

    def app(method: str, path: str, raw: bytes) -> tuple[int, Any]:
        if method == "GET":
            if path == "/v1/models":
                return 200, {"object": "list", "data": [{"id": "toy-model"}]}
            return 404, {"error": "not found"}
        body = json.loads(raw)
        if path not in ("/v1/completions", "/v1/chat/completions"):
            return 404, {"error": "not found"}
        if not lm.logprobs and body.get("logprobs") not in (None, False):
            return 400, {"error": {"message": "logprobs not supported"}}
        return 200, lm.answer(body, path.endswith("chat/completions"))

    return loopback.mount(app) + "/v1"


def _own_server(lm: ToyLM) -> tuple[ThreadingHTTPServer, str]:
    """A server of its own, for the one test that makes it die mid-run."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, obj: Any) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": "toy-model"}]})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path not in ("/v1/completions", "/v1/chat/completions"):
                self._send(404, {"error": "not found"})
                return
            if not lm.logprobs and body.get("logprobs") not in (None, False):
                self._send(400, {"error": {"message": "logprobs not supported"}})
                return
            self._send(200, lm.answer(body, self.path.endswith("chat/completions")))

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}/v1"


@pytest.fixture
def servers(loopback: Loopback) -> tuple[ToyLM, str, ToyLM, str]:
    ref = ToyLM()
    cand = ToyLM(diverge_at={"Name a colour.": 3}, logprob_shift=-0.02)
    return ref, _serve(loopback, ref), cand, _serve(loopback, cand)


def _prompts(tmp: Path) -> Path:
    p = tmp / "prompts.jsonl"
    lines = [
        json.dumps({"id": "a", "prompt": "Say hello."}),
        "# a comment",
        "",
        json.dumps({"id": "b", "prompt": "Name a colour."}),
        json.dumps({"id": "c", "messages": [{"role": "user", "content": "Count to three."}]}),
        json.dumps("Plain string prompt."),
    ]
    p.write_text("\n".join(lines) + "\n")
    return p


def test_agreement_between_two_servers(
    servers: tuple[ToyLM, str, ToyLM, str], tmp_path: Path
) -> None:
    ref, u1, cand, u2 = servers
    rep = q.run_quality(_prompts(tmp_path), u1, u2, max_tokens=8, seed=3, control=True)
    s = rep.summary
    assert s.n_prompts == 4
    assert s.exact_match == pytest.approx(3 / 4)
    # Prompt b diverges at token 3: 3 common + 1 differing position; the others agree on all 8.
    by_id = {p.id: p for p in rep.prompts}
    assert by_id["b"].common_prefix == 3 and by_id["b"].compared == 4 and not by_id["b"].exact
    assert s.top1_agreement == pytest.approx((8 * 3 + 3) / (8 * 3 + 4))
    assert s.unit == "token"
    assert s.mean_abs_dlogprob == pytest.approx(0.02)
    assert s.logprob_agreement == pytest.approx(math.exp(-0.02))
    assert s.kl_topk_mean is not None and s.kl_topk_mean > 0
    assert rep.control is not None and rep.control.exact_match == 1.0
    assert rep.control.mean_abs_dlogprob == 0.0
    # Greedy, seeded, fixed length, logprobs asked; chat used for the messages prompt.
    for body in ref.requests + cand.requests:
        assert body["temperature"] == 0.0 and body["max_tokens"] == 8 and body["seed"] == 3
        assert body["model"] == "toy-model"
        assert body["logprobs"] in (True, 5)
    assert sum("messages" in b for b in cand.requests) == 1
    block = rep.accuracy_block()
    assert block["exact_match"] == 0.75 and block["max_rel_err"] is None
    assert "greedy" in block["note"] and "control" in block["note"]
    json.dumps(rep.to_dict(), allow_nan=False)


def test_server_without_logprobs_falls_back_to_words(tmp_path: Path, loopback: Loopback) -> None:
    ref = ToyLM()
    cand = ToyLM(logprobs=False, diverge_at={"Say hello.": 0})
    u1, u2 = _serve(loopback, ref), _serve(loopback, cand)
    rep = q.run_quality(_prompts(tmp_path), u1, u2, max_tokens=6)
    assert rep.summary.unit == "word"
    assert rep.summary.mean_abs_dlogprob is None and rep.summary.logprob_agreement is None
    assert any("logprobs rejected" in n for n in rep.notes)
    assert rep.summary.exact_match == pytest.approx(3 / 4)
    assert {p.id: p.exact for p in rep.prompts}["a"] is False


def test_control_reveals_a_nondeterministic_reference(tmp_path: Path, loopback: Loopback) -> None:
    ref = ToyLM(flaky=True)  # its last token changes from one call to the next
    u1, u2 = _serve(loopback, ref), _serve(loopback, ToyLM())
    rep = q.run_quality(_prompts(tmp_path), u1, u2, max_tokens=4, control=True)
    assert rep.control is not None and rep.control.exact_match == 0.0
    assert rep.control.top1_agreement == pytest.approx(3 / 4)


def test_attach_accuracy_and_write(servers: tuple[ToyLM, str, ToyLM, str], tmp_path: Path) -> None:
    _, u1, _, u2 = servers
    rep = q.run_quality(_prompts(tmp_path), u1, u2, max_tokens=4)
    out = q.write_quality_report(rep, tmp_path / "q.json")
    assert json.loads(out.read_text())["schema"] == q.QUALITY_SCHEMA
    run = tmp_path / "fp8_c4.json"
    shutil.copy(DATA / "fp8_c4.json", run)
    q.attach_accuracy(run, rep.accuracy_block())
    acc = load_result(run)["accuracy"]
    assert acc is not None and acc["exact_match"] == rep.summary.exact_match
    assert acc["reference"].startswith(u1)


def test_unwritable_out_is_one_line_error(
    servers: tuple[ToyLM, str, ToyLM, str], tmp_path: Path
) -> None:
    _, u1, _, u2 = servers
    rep = q.run_quality(_prompts(tmp_path), u1, u2, max_tokens=4)
    d = tmp_path / "outdir"
    d.mkdir()
    with pytest.raises(ConfigError, match="is a directory; give a file name"):
        q.write_quality_report(rep, d)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot write the quality report"):
        q.write_quality_report(rep, blocker / "q.json")
    assert not list(tmp_path.glob("*.tmp"))


def test_unreachable_server_is_a_one_line_user_error(tmp_path: Path) -> None:
    down = _closed_url()
    with pytest.raises(ConfigError) as ei:
        q.run_quality(_prompts(tmp_path), down, down)
    msg = str(ei.value)
    assert f"cannot reach the reference server at {down}" in msg and "\n" not in msg
    assert "is the server running" in msg and "--url" in msg


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{bad json\n", r"prompts.jsonl:1: not valid JSON"),
        ('{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n', "duplicate id"),
        ('{"prompt": 3}\n', "'prompt' must be a string"),
        ('{"messages": [{"content": "x"}]}\n', "'messages' must be"),
        ('{"prompt": "a", "messages": [{"role": "user", "content": "x"}]}\n', "exactly one"),
        ("# only a comment\n", "no prompts"),
        ("[1, 2]\n", "expected an object"),
    ],
)
def test_bad_prompt_files(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "prompts.jsonl"
    p.write_text(text)
    with pytest.raises(DataFormatError, match=match):
        q.load_prompts(p)


def test_non_utf8_prompt_file_is_one_line_error(tmp_path: Path) -> None:
    p = tmp_path / "prompts.jsonl"
    p.write_bytes(b"\xff\xfe garbage\n")
    with pytest.raises(DataFormatError, match=r"prompts\.jsonl: not a JSONL prompt file"):
        q.load_prompts(p)


def test_utf8_bom_prompt_file_is_accepted(tmp_path: Path) -> None:
    p = tmp_path / "prompts.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"prompt": "hello"}\n')
    assert [x.prompt for x in q.load_prompts(p)] == ["hello"]


def test_agreement_unit_logic() -> None:
    a = q.Generation(text="a b c", tokens=("a", " b", " c"), logprobs=(-0.1, -0.2, -0.3))
    b = q.Generation(text="a b", tokens=("a", " b"), logprobs=(-0.1, -0.4))
    r = q.agreement("x", a, b)
    assert r.common_prefix == 2 and r.compared == 3 and not r.exact
    assert r.mean_abs_dlogprob == pytest.approx(0.1)
    same = q.agreement("y", a, a)
    assert same.exact and same.compared == 3 and same.common_prefix == 3


def test_against_the_bench_fake_server(tmp_path: Path) -> None:
    """perwatt's own loopback server returns no logprobs: text agreement only, said so."""
    from perwatt.bench.testing import FakeOpenAIServer, ServerConfig

    with FakeOpenAIServer(ServerConfig()) as a, FakeOpenAIServer(ServerConfig()) as b:
        rep = q.run_quality(_prompts(tmp_path), a.url, b.url, max_tokens=8)
    assert rep.summary.exact_match == 1.0
    assert rep.summary.unit == "word" and rep.summary.logprob_agreement is None
    assert all(p.len_a == 8 for p in rep.prompts)
    assert "candidate: answers carry no logprobs; compared on whitespace-separated words" in (
        rep.notes
    )


# ------------------------------------------------------------------ unreachable, partial runs
def _closed_url() -> str:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()  # nothing listens there now: connection refused
    return f"http://127.0.0.1:{port}/v1"


def test_unreachable_candidate_is_a_user_error_naming_it(
    servers: tuple[ToyLM, str, ToyLM, str], tmp_path: Path
) -> None:
    """Checked before any prompt is sent, even when --model makes /models unnecessary."""
    ref, u1, _, _ = servers
    down = _closed_url()
    out = tmp_path / "q.json"
    with pytest.raises(ConfigError) as ei:
        q.run_quality(
            _prompts(tmp_path), u1, down, reference_model="m", candidate_model="m", out=out
        )
    msg = str(ei.value)
    assert "\n" not in msg
    assert f"candidate server at {down}" in msg
    assert "is the server running" in msg and "--url" in msg
    assert not ref.requests  # no prompt was spent on the reference
    assert not out.exists()


class _Interrupting(ToyLM):
    """Answers ``after`` requests, then simulates Ctrl-C in the main thread (the client's)."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after

    def answer(self, body: dict[str, Any], chat: bool) -> dict[str, Any]:
        if self.calls == self.after:
            import _thread

            _thread.interrupt_main()  # raised in the client once this reply arrives
        return super().answer(body, chat)


def test_ctrl_c_writes_the_prompts_finished_marked_partial(
    tmp_path: Path, loopback: Loopback
) -> None:
    u1 = _serve(loopback, ToyLM())
    u2 = _serve(loopback, _Interrupting(after=2))  # the 3rd candidate answer is interrupted
    out = tmp_path / "q.json"
    with pytest.raises(q.QualityInterrupted) as ei:
        q.run_quality(_prompts(tmp_path), u1, u2, max_tokens=4, out=out)
    rep = ei.value.report
    assert rep.status == "partial" and rep.partial_reason is not None
    assert "interrupted" in rep.partial_reason and "2 of 4 prompts" in rep.partial_reason
    doc = json.loads(out.read_text())
    assert doc["status"] == "partial" and doc["partial_reason"] == rep.partial_reason
    assert doc["prompts_total"] == 4 and len(doc["prompts"]) == 2
    assert doc["summary"]["n_prompts"] == 2
    assert doc["accuracy"] is None  # partial figures are never offered as an accuracy block
    with pytest.raises(ConfigError, match="partial"):
        rep.accuracy_block()
    assert not list(tmp_path.glob("*.tmp"))


def test_server_dying_mid_run_keeps_what_was_compared(tmp_path: Path, loopback: Loopback) -> None:
    class _Dying(ToyLM):
        """Stops listening (as a crashed server would) after its first answer."""

        server: ThreadingHTTPServer | None = None

        def answer(self, body: dict[str, Any], chat: bool) -> dict[str, Any]:
            if self.calls == 0 and self.server is not None:
                self.server.shutdown()
                self.server.server_close()
            return super().answer(body, chat)

    u1 = _serve(loopback, ToyLM())
    dying = _Dying()
    s2, u2 = _own_server(dying)
    dying.server = s2
    out = tmp_path / "q.json"
    with pytest.raises(RemoteSourceError) as ei:
        q.run_quality(_prompts(tmp_path), u1, u2, max_tokens=4, out=out)
    assert str(out) in str(ei.value) and "partial" in str(ei.value)
    doc = json.loads(out.read_text())
    assert doc["status"] == "partial" and "1 of 4 prompts" in doc["partial_reason"]
    assert [p["id"] for p in doc["prompts"]] == ["a"]


def test_complete_run_file_says_complete(
    servers: tuple[ToyLM, str, ToyLM, str], tmp_path: Path
) -> None:
    _, u1, _, u2 = servers
    out = tmp_path / "q.json"
    rep = q.run_quality(_prompts(tmp_path), u1, u2, max_tokens=4, out=out)
    doc = json.loads(out.read_text())
    assert rep.status == "complete" and doc["status"] == "complete"
    assert doc["partial_reason"] is None and doc["prompts_total"] == 4
    assert doc["accuracy"]["exact_match"] == rep.summary.exact_match


def test_report_is_checkpointed_while_running(tmp_path: Path, loopback: Loopback) -> None:
    """A kill -9 mid-run still leaves the prompts done so far on disk, marked running."""
    out = tmp_path / "q.json"
    seen: list[dict[str, Any]] = []

    class _Peeking(ToyLM):
        def answer(self, body: dict[str, Any], chat: bool) -> dict[str, Any]:
            seen.append(json.loads(out.read_text()))  # what a crash now would leave behind
            return super().answer(body, chat)

    u1, u2 = _serve(loopback, ToyLM()), _serve(loopback, _Peeking())
    q.run_quality(_prompts(tmp_path), u1, u2, max_tokens=4, out=out, checkpoint_interval_s=0)
    assert [d["status"] for d in seen] == ["running"] * 4
    assert [len(d["prompts"]) for d in seen] == [0, 1, 2, 3]
    assert seen[0]["summary"] is None and seen[1]["summary"]["n_prompts"] == 1
    assert json.loads(out.read_text())["status"] == "complete"


def test_out_may_not_be_the_prompt_file_or_an_attach_target(
    servers: tuple[ToyLM, str, ToyLM, str], tmp_path: Path
) -> None:
    import os

    ref, u1, _, u2 = servers
    prompts = _prompts(tmp_path)
    text = prompts.read_text()
    run = tmp_path / "run.json"
    shutil.copy(DATA / "fp8_c4.json", run)
    before = run.read_bytes()
    (tmp_path / "sub").mkdir()
    os.link(run, tmp_path / "hard.json")
    for out, attach, match in [
        (prompts, (), "is the prompt file"),
        (tmp_path / "sub" / ".." / "prompts.jsonl", (), "is the prompt file"),
        (run, (run,), "is also an --attach target"),
        (tmp_path / "sub" / ".." / "run.json", (str(run),), "is also an --attach target"),
        (tmp_path / "hard.json", (run,), "is also an --attach target"),  # same inode
    ]:
        with pytest.raises(ConfigError, match=match):
            q.run_quality(prompts, u1, u2, max_tokens=4, out=out, attach=attach)
    assert prompts.read_text() == text and run.read_bytes() == before
    assert ref.calls == 0  # refused before any prompt was sent
    # a different file is fine
    q.run_quality(prompts, u1, u2, max_tokens=4, out=tmp_path / "q.json", attach=(run,))


@pytest.mark.parametrize("url", ["http://", "https:///v1", "http://:8000/v1"])
def test_url_without_host_is_one_line_error(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError, match=r"the candidate --url '.*' has no host; e\.g\. http://"):
        q.run_quality(_prompts(tmp_path), "http://127.0.0.1:1/v1", url)


def _serve_models(listed: list[str] | None, known: set[str]) -> tuple[ThreadingHTTPServer, str]:
    """A server that lists ``listed`` at /v1/models (None: answers 404 there) and, as vLLM does,
    answers a completion for a model outside ``known`` with HTTP 404 and a message."""
    lm = ToyLM()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, obj: Any) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if listed is None:
                self._send(404, {"error": "not found"})
            else:
                self._send(200, {"object": "list", "data": [{"id": m} for m in listed]})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if body.get("model") not in known:
                msg = f"The model `{body.get('model')}` does not exist."
                self._send(404, {"error": {"message": msg, "type": "NotFoundError"}})
                return
            self._send(200, lm.answer(body, chat=self.path.endswith("chat/completions")))

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}/v1"


def test_unknown_model_is_named_not_blamed_on_the_url(tmp_path: Path) -> None:
    prompts = _prompts(tmp_path)
    listed, u1 = _serve_models(["real"], {"real"})
    unlisted, u2 = _serve_models(None, {"real"})  # /models unavailable: found on first prompt
    try:
        with pytest.raises(
            ConfigError,
            match=r"candidate server answered HTTP 404 .*\(The model `typo` does not exist\.\): "
            r"it does not list --model 'typo' \(it lists real\): fix the second --model",
        ):
            q.run_quality(prompts, u1, u1, reference_model="real", candidate_model="typo")
        with pytest.raises(ConfigError) as ei:
            q.run_quality(prompts, u1, u2, reference_model="real", candidate_model="typo")
        msg = str(ei.value)
        assert "HTTP 404" in msg and "The model `typo` does not exist." in msg
        assert "is --model 'typo' served there" in msg and "check its --url" not in msg
        rep = q.run_quality(prompts, u1, u2, reference_model="real", candidate_model="real")
        assert rep.complete
    finally:
        for s in (listed, unlisted):
            s.shutdown()
            s.server_close()


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), OSError(28, "No space left on device")])
def test_failing_final_write_marks_the_file_partial(
    servers: tuple[ToyLM, str, ToyLM, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    exc: BaseException,
) -> None:
    _, u1, _, u2 = servers
    out = tmp_path / "q.json"
    real_write = q.write_quality_report
    failed: list[bool] = []

    def write(report: q.QualityReport, path: str | Path) -> Path:
        if report.status == "complete" and not failed:
            failed.append(True)
            if isinstance(exc, OSError):  # as write_quality_report reports a failed write
                raise ConfigError(f"cannot write the quality report to {path} ({exc.strerror})")
            raise exc  # Ctrl-C during the final write
        return real_write(report, path)

    monkeypatch.setattr(q, "write_quality_report", write)
    if isinstance(exc, KeyboardInterrupt):
        with pytest.raises(q.QualityInterrupted) as ei:
            q.run_quality(_prompts(tmp_path), u1, u2, max_tokens=4, out=out)
        assert ei.value.report.status == "partial" and len(ei.value.report.prompts) == 4
    else:
        with pytest.raises(ConfigError, match=r"No space left .*is marked partial: 4 of 4"):
            q.run_quality(_prompts(tmp_path), u1, u2, max_tokens=4, out=out)
    doc = json.loads(out.read_text())
    assert doc["status"] == "partial" and len(doc["prompts"]) == 4
