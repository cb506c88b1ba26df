"""The OpenAI-compatible server over the batcher, with a fake engine (no torch) on loopback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from perwatt.engine.batcher import Batcher
from perwatt.engine.server import IncrementalDetokenizer, OpenAIServer, bind

uvicorn = pytest.importorskip("uvicorn")

VOCAB = 256


class ByteTokenizer:
    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


class SlowFakeEngine:
    """Next token = last + 1 (mod 256); each decode step sleeps so batching is observable."""

    def __init__(self, step_s: float = 0.002) -> None:
        self.step_s = step_s
        self.decode_batches: list[int] = []
        self.busy: set[int] = set()

    @staticmethod
    def _row(nxt: int) -> list[float]:
        row = [0.0] * VOCAB
        row[nxt % VOCAB] = 4.0
        return row

    def prefill(
        self, slot_ids: Sequence[int], token_ids: Sequence[Sequence[int]]
    ) -> list[list[float]]:
        assert not self.busy & set(slot_ids)
        self.busy |= set(slot_ids)
        return [self._row(t[-1] + 1) for t in token_ids]

    def decode(self, slot_ids: Sequence[int], tokens: Sequence[int]) -> list[list[float]]:
        assert set(slot_ids) <= self.busy
        self.decode_batches.append(len(slot_ids))
        time.sleep(self.step_s)
        return [self._row(t + 1) for t in tokens]

    def free(self, slot_id: int) -> None:
        self.busy.discard(slot_id)


@contextmanager
def running_server(
    engine: Any, *, num_slots: int = 2, max_seq_len: int = 128
) -> Iterator[tuple[str, Batcher]]:
    batcher = Batcher(engine, num_slots=num_slots, max_seq_len=max_seq_len, eos_token_ids=[0])
    batcher.start()
    app = OpenAIServer(
        batcher, ByteTokenizer(), model_name="fake", max_seq_len=max_seq_len, vocab_size=VOCAB
    ).app()
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", batcher
    finally:
        server.should_exit = True
        thread.join(10)
        batcher.stop()
        sock.close()


@pytest.fixture
def srv() -> Iterator[tuple[str, Batcher, SlowFakeEngine]]:
    eng = SlowFakeEngine()
    with running_server(eng) as (url, batcher):
        yield url, batcher, eng


def sse(lines: Sequence[str]) -> list[Any]:
    """Parse an SSE body into JSON payloads, with "[DONE]" kept as a string."""
    out: list[Any] = []
    for line in lines:
        if not line:
            continue
        assert line.startswith("data: "), line
        payload = line[len("data: ") :]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def test_models_and_health(srv: tuple[str, Batcher, SlowFakeEngine]) -> None:
    url, batcher, _ = srv
    assert httpx.get(f"{url}/health").status_code == 200
    batcher.stop()
    assert httpx.get(f"{url}/health").status_code == 503
    r = httpx.get(f"{url}/v1/models")
    assert r.status_code == 200
    data = r.json()["data"]
    assert [m["id"] for m in data] == ["fake"] and data[0]["max_model_len"] == 128


def test_completion_non_streaming_with_usage_and_logprobs(
    srv: tuple[str, Batcher, SlowFakeEngine],
) -> None:
    url, _, _ = srv
    body = {"model": "fake", "prompt": "a", "max_tokens": 5, "temperature": 0, "logprobs": 1}
    r = httpx.post(f"{url}/v1/completions", json=body)
    assert r.status_code == 200, r.text
    doc = r.json()
    choice = doc["choices"][0]
    assert choice["text"] == "bcdef"  # byte after 'a', greedily
    assert choice["finish_reason"] == "length"
    assert doc["usage"] == {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6}
    lp = choice["logprobs"]
    assert lp["tokens"] == list("bcdef")
    assert all(x < 0 for x in lp["token_logprobs"])
    assert lp["text_offset"] == [0, 1, 2, 3, 4]
    assert list(lp["top_logprobs"][0]) == ["b"]


def test_completion_streaming_sse_like_vllm(srv: tuple[str, Batcher, SlowFakeEngine]) -> None:
    url, _, _ = srv
    body = {
        "model": "fake",
        "prompt": "a",
        "max_tokens": 4,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{url}/v1/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    assert raw.endswith("data: [DONE]\n\n")
    assert all(part.startswith("data: ") for part in raw.split("\n\n") if part)
    events = sse(raw.split("\n"))
    assert events[-1] == "[DONE]"
    tokens = events[:-2]
    assert len(tokens) == 4  # one chunk per generated token
    assert "".join(c["choices"][0]["text"] for c in tokens) == "bcde"
    assert [c["choices"][0]["finish_reason"] for c in tokens] == [None, None, None, "length"]
    assert all(c["object"] == "text_completion" for c in tokens)
    usage = events[-2]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 4
    assert usage["usage"]["prompt_tokens"] == 1


def test_chat_streaming_role_first_then_content(srv: tuple[str, Batcher, SlowFakeEngine]) -> None:
    url, _, _ = srv
    body = {
        "model": "fake",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 3,
        "stream": True,
        "temperature": 0,
        "logprobs": True,
    }
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        events = sse(list(r.iter_lines()))
    assert events[-1] == "[DONE]"
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = events[1:-1]
    assert len(content) == 3 and all(c["object"] == "chat.completion.chunk" for c in content)
    assert content[-1]["choices"][0]["finish_reason"] == "length"
    assert content[0]["choices"][0]["logprobs"]["content"][0]["logprob"] < 0
    # no usage chunk unless asked for
    assert all(c["choices"] for c in content)


def test_chat_non_streaming(srv: tuple[str, Batcher, SlowFakeEngine]) -> None:
    url, _, _ = srv
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}
    doc = httpx.post(f"{url}/v1/chat/completions", json=body).json()
    assert doc["object"] == "chat.completion"
    assert doc["choices"][0]["message"]["role"] == "assistant"
    assert len(doc["choices"][0]["message"]["content"]) == 2
    assert doc["usage"]["completion_tokens"] == 2


def test_ignore_eos_and_min_tokens(srv: tuple[str, Batcher, SlowFakeEngine]) -> None:
    url, _, _ = srv
    # token 255 -> next is 0 == EOS
    stop = httpx.post(
        f"{url}/v1/completions", json={"prompt": [254], "max_tokens": 5, "temperature": 0}
    ).json()
    assert stop["choices"][0]["finish_reason"] == "stop"
    assert stop["usage"]["completion_tokens"] == 2
    go = httpx.post(
        f"{url}/v1/completions",
        json={"prompt": [254], "max_tokens": 5, "temperature": 0, "ignore_eos": True},
    ).json()
    assert go["choices"][0]["finish_reason"] == "length"
    assert go["usage"]["completion_tokens"] == 5


@pytest.mark.parametrize(
    ("path", "content", "status", "needle"),
    [
        ("/v1/completions", b"{not json", 400, "not valid JSON"),
        ("/v1/completions", b'{"model": "gpt-4", "prompt": "x"}', 404, "does not exist"),
        ("/v1/completions", b'{"prompt": "' + b"x" * 200 + b'"}', 400, "maximum context length"),
        ("/v1/completions", b'{"prompt": "x", "max_tokens": 0}', 400, "max_tokens"),
        ("/v1/completions", b'{"prompt": "x", "temperature": "hot"}', 400, "temperature"),
        ("/v1/completions", b'{"prompt": 5}', 400, "prompt"),
        ("/v1/completions", b'{"prompt": [1, 256]}', 400, "vocabulary"),
        ("/v1/completions", b'{"prompt": "x", "n": 2}', 400, "n > 1"),
        ("/v1/chat/completions", b'{"messages": []}', 400, "messages"),
        ("/v1/completions", b'{"prompt": "x", "echo": true}', 400, "echo"),
        ("/v1/completions", b'{"prompt": "x", "presence_penalty": 0.5}', 400, "presence_penalty"),
        ("/v1/nope", b"{}", 404, "no route"),
    ],
)
def test_errors_are_openai_json(
    srv: tuple[str, Batcher, SlowFakeEngine], path: str, content: bytes, status: int, needle: str
) -> None:
    url, _, _ = srv
    r = httpx.post(f"{url}{path}", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"]
    assert err["code"] == status and isinstance(err["type"], str)


def test_streaming_error_is_4xx_before_stream(srv: tuple[str, Batcher, SlowFakeEngine]) -> None:
    url, _, _ = srv
    body = {"prompt": "x" * 500, "stream": True}
    r = httpx.post(f"{url}/v1/completions", json=body)
    assert r.status_code == 400 and "maximum context length" in r.json()["error"]["message"]


def test_more_requests_than_slots_are_batched_and_all_complete(
    srv: tuple[str, Batcher, SlowFakeEngine],
) -> None:
    url, batcher, eng = srv
    results: dict[int, str] = {}

    def one(i: int) -> None:
        body = {"prompt": chr(65 + i), "max_tokens": 6, "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as r:
            events = sse(list(r.iter_lines()))
        results[i] = "".join(e["choices"][0]["text"] for e in events[:-1])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {i: "".join(chr(66 + i + k) for k in range(6)) for i in range(6)}
    assert batcher.stats.max_active == 2  # the pool has 2 slots: the rest queued
    assert max(eng.decode_batches) == 2  # and decoded together
    assert batcher.stats.completed == 6
    assert batcher.free_slots == (0, 1)
    metrics = httpx.get(f"{url}/metrics").text
    assert "perwatt_requests_completed_total 6" in metrics
    assert "perwatt_num_requests_running 0" in metrics and "perwatt_num_slots 2" in metrics


def test_client_disconnect_cancels_and_frees_slot(srv: tuple[str, Batcher, SlowFakeEngine]) -> None:
    url, batcher, eng = srv
    body = {"prompt": "a", "max_tokens": 100, "ignore_eos": True, "stream": True}
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", f"{url}/v1/completions", json=body) as r,
    ):
        lines = r.iter_lines()
        got = [next(lines) for _ in range(3)]
        assert got[0].startswith("data: ")
    # leaving the block closed the connection mid-stream
    deadline = time.monotonic() + 10
    while (batcher.stats.aborted < 1 or batcher.num_active) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert batcher.stats.aborted == 1
    assert batcher.num_active == 0 and batcher.free_slots == (0, 1)
    assert not eng.busy
    # and the server still answers
    ok = httpx.post(f"{url}/v1/completions", json={"prompt": "a", "max_tokens": 2}).json()
    assert ok["usage"]["completion_tokens"] == 2


def test_non_streaming_disconnect_cancels() -> None:
    eng = SlowFakeEngine(step_s=0.02)
    with running_server(eng, num_slots=1, max_seq_len=4096) as (url, batcher):
        body = {"prompt": "a", "max_tokens": 2000, "ignore_eos": True}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/completions", json=body, timeout=0.3)
        deadline = time.monotonic() + 10
        while batcher.stats.aborted < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert batcher.stats.aborted == 1 and batcher.free_slots == (0,)


def test_incremental_detokenizer_holds_split_characters() -> None:
    d = IncrementalDetokenizer(ByteTokenizer())
    data = "é€".encode()  # 2 + 3 bytes
    deltas = [d.push(b) for b in data]
    assert deltas == ["", "é", "", "", "€"]
    d2 = IncrementalDetokenizer(ByteTokenizer())
    assert d2.push(0xC3) == ""
    assert d2.flush() == "\ufffd"  # an incomplete character at the end is flushed, not lost


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_benchmark_client_streams_from_server(
    srv: tuple[str, Batcher, SlowFakeEngine], endpoint: str
) -> None:
    import asyncio

    from perwatt.bench.client import OpenAIClient

    url, batcher, _ = srv

    async def run() -> list[Any]:
        client = OpenAIClient(f"{url}/v1", timeout_s=30)
        try:
            payload = client.build_payload(
                endpoint,  # type: ignore[arg-type]
                "fake",
                "abc",
                8,
                ignore_eos=True,
            )
            return list(
                await asyncio.gather(
                    *(client.request(endpoint, payload, index=i) for i in range(5))  # type: ignore[arg-type]
                )
            )
        finally:
            await client.aclose()

    records = asyncio.run(run())
    for rec in records:
        assert rec.ok, (rec.error_kind, rec.error_detail)
        assert rec.output_tokens == 8 and rec.token_count_source == "usage"
        assert rec.output_tokens_chunks == 8  # one text-bearing chunk per token
        assert rec.ttft_s is not None and rec.ttft_s > 0
        assert len(rec.itl_s) == 7
        assert rec.finish_reason == "length"
    assert batcher.stats.max_active == 2 and batcher.stats.completed == 5


def test_warm_up_runs_on_the_engine_thread() -> None:
    from perwatt.engine.server import warm_up
    from perwatt.errors import ConfigError

    class RecordingEngine(SlowFakeEngine):
        def __init__(self) -> None:
            super().__init__()
            self.threads: set[str] = set()

        def decode(self, slot_ids: Sequence[int], tokens: Sequence[int]) -> list[list[float]]:
            self.threads.add(threading.current_thread().name)
            return super().decode(slot_ids, tokens)

    eng = RecordingEngine()
    b = Batcher(eng, num_slots=1, max_seq_len=16)
    b.start()
    try:
        assert warm_up(b, steps=3) > 0
        assert b.stats.completed == 1 and eng.decode_batches == [1, 1]
        assert eng.threads == {"perwatt-engine"}
        eng.step_s = -1.0  # time.sleep(-1) raises: the engine fails the warm-up request
        with pytest.raises(ConfigError, match="warm-up"):
            warm_up(b, steps=3)
    finally:
        b.stop()


def test_out_of_memory_at_load_names_the_knobs(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import perwatt.engine.generate as G
    from perwatt.engine.server import serve
    from perwatt.errors import ConfigError

    def load(*_a: Any, **_k: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    monkeypatch.setattr(G, "load_engine", load)
    with pytest.raises(ConfigError, match=r"use a smaller --max-batch-size or --max-seq-len"):
        serve(model="tiny", precision="fp32", device="cpu", port=0, max_batch_size=4096)


def test_serving_quantized_weights_defaults_and_oom_advice(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import torch

    import perwatt.engine.generate as G
    from perwatt.engine.quantized_dir import QUANTIZED_WEIGHTS, quantize_model
    from perwatt.engine.server import serve
    from perwatt.errors import ConfigError

    seen: list[dict[str, Any]] = []

    def load(model: str, **kw: Any) -> Any:
        seen.append({"model": model, **kw})
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    monkeypatch.setattr(G, "load_engine", load)
    q8 = quantize_model("tiny", "int8", tmp_path / "q8", device="cpu").directory
    q4 = quantize_model("tiny", "int4", tmp_path / "q4", device="cpu").directory
    # --quantized-path FILE, no --precision: the file's precision, not bf16
    with pytest.raises(ConfigError) as ei:
        serve(model="tiny", quantized_path=str(q8 / QUANTIZED_WEIGHTS), device="cpu", port=0)
    assert seen[-1]["precision"] == "int8"
    msg = str(ei.value)
    assert "use a smaller --max-batch-size or --max-seq-len" in msg
    assert "--precision (int8" not in msg  # another --precision would be refused for these
    assert "quantize to int4" in msg
    with pytest.raises(ConfigError) as ei:
        serve(model=str(q4), device="cpu", port=0)
    assert seen[-1]["precision"] == "int4"
    assert str(ei.value).endswith("use a smaller --max-batch-size or --max-seq-len")


def test_bind_unresolvable_host_names_the_host_not_the_port() -> None:
    from perwatt.errors import ConfigError

    with pytest.raises(ConfigError, match=r"does not resolve.*use --host 127\.0\.0\.1"):
        bind("no-such-host.invalid", 0)  # .invalid never resolves (RFC 2606)


USER_HI = {"role": "user", "content": "hi"}


@pytest.mark.parametrize(
    ("path", "body", "status", "param", "needle"),
    [
        # chat messages: the field is named the way vLLM's validation names it
        # (null or missing content is "" as in vLLM: test_chat_null_or_missing_content_is_empty)
        ("chat", {"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content",
         "got int"),
        ("chat", {"messages": [{"role": "user", "content": {"text": "hi"}}]}, 400,
         "messages[0].content", "got dict"),
        ("chat", {"messages": [{"role": "user", "content": [{"type": "image_url",
         "image_url": {"url": "x"}}]}]}, 400, "messages[0].content[0]", "only text parts"),
        ("chat", {"messages": [{"role": "user", "content": ["hi"]}]}, 400,
         "messages[0].content[0]", "must be an object"),
        ("chat", {"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]}, 400,
         "messages[0].content[0].text", "must be a string"),
        ("chat", {"messages": [{"content": "hi"}]}, 400, "messages[0].role", "role is required"),
        ("chat", {"messages": ["hi"]}, 400, "messages[0]", "must be an object"),
        ("chat", {"messages": "hi"}, 400, "messages", "non-empty list"),
        # lengths and counts
        ("completions", {"prompt": "x", "max_tokens": -5}, 400, "max_tokens", "at least 1"),
        ("chat", {"messages": [USER_HI], "max_completion_tokens": -1}, 400,
         "max_completion_tokens", "at least 1"),
        ("chat", {"messages": [USER_HI], "max_tokens": 0}, 400, "max_tokens", "at least 1"),
        ("completions", {"prompt": "x", "n": 0}, 400, "n", "at least 1"),
        ("completions", {"prompt": "x", "n": 3}, 400, "n", "n > 1 is not supported"),
        ("chat", {"messages": [USER_HI], "n": 2}, 400, "n", "n > 1 is not supported"),
        ("completions", {"prompt": "x", "min_tokens": -1}, 400, "min_tokens", "min_tokens"),
        ("completions", {"prompt": ""}, 400, "prompt", "prompt is empty"),
        # models
        ("completions", {"model": "gpt-4", "prompt": "x"}, 404, "model", "does not exist"),
        ("chat", {"model": "gpt-4", "messages": [USER_HI]}, 404, "model", "does not exist"),
        ("completions", {"model": 5, "prompt": "x"}, 400, "model", "must be a string"),
        # sampling and options
        ("completions", {"prompt": "x", "top_p": 0}, 400, "top_p", "top_p"),
        ("completions", {"prompt": "x", "temperature": -1}, 400, "temperature", "temperature"),
        ("completions", {"prompt": "x", "logprobs": 50}, 400, "logprobs", "[0, 20]"),
        ("chat", {"messages": [USER_HI], "logprobs": True, "top_logprobs": 21}, 400,
         "top_logprobs", "'top_logprobs' must be in [0, 20], got 21"),
        ("chat", {"messages": [USER_HI], "top_logprobs": 2}, 400, "top_logprobs",
         "needs 'logprobs': true"),
        ("chat", {"messages": [USER_HI], "logprobs": True, "top_logprobs": -1}, 400,
         "top_logprobs", "'top_logprobs' must be in [0, 20], got -1"),
        # a prompt too long for the context, max_tokens not sent: the prompt is at fault
        ("chat", {"messages": [{"role": "user", "content": "x" * 200}]}, 400, "messages",
         "leaves no room to generate within the 128-token context"),
        ("completions", {"prompt": "x" * 200, "max_tokens": 4}, 400, "max_tokens", ""),
        ("completions", {"prompt": "x", "stream_options": {"include_usage": True}}, 400,
         "stream_options", "needs 'stream': true"),
        ("completions", {"prompt": "x", "stream": True, "stream_options": {"include_usage": 1}},
         400, "stream_options.include_usage", "true or false"),
    ],
)  # fmt: skip
def test_request_validation_names_the_field(
    srv: tuple[str, Batcher, SlowFakeEngine],
    path: str,
    body: dict[str, Any],
    status: int,
    param: str,
    needle: str,
) -> None:
    url, batcher, _ = srv
    endpoint = "chat/completions" if path == "chat" else "completions"
    for stream in (False, True):  # a streaming request is refused before any SSE is sent
        doc = dict(body)
        if stream and "stream" not in doc and "stream_options" not in doc:
            doc["stream"] = True
        r = httpx.post(f"{url}/v1/{endpoint}", json=doc)
        assert r.status_code == status, r.text
        assert r.headers["content-type"].startswith("application/json")
        err = r.json()["error"]
        assert err["param"] == param, err
        assert needle in err["message"], err
        assert err["code"] == status and err["type"] in ("BadRequestError", "NotFoundError")
    assert batcher.stats.completed == 0 and batcher.num_active == 0  # nothing reached the engine


def test_chat_top_logprobs_zero_without_logprobs_is_accepted(
    srv: tuple[str, Batcher, SlowFakeEngine],
) -> None:
    url, _, _ = srv  # as vLLM: only a positive top_logprobs needs logprobs
    body = {"messages": [USER_HI], "max_tokens": 1, "top_logprobs": 0}
    r = httpx.post(f"{url}/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["logprobs"] is None


def test_chat_text_parts_are_joined_with_newlines(srv: tuple[str, Batcher, SlowFakeEngine]) -> None:
    url, _, _ = srv  # as vLLM joins them ("\n"), so the prompt is the one vLLM would see
    parts = [{"type": "text", "text": "h"}, {"text": "i"}]  # "type" defaults to text
    body = {"messages": [{"role": "user", "content": parts}], "max_tokens": 2, "temperature": 0}
    as_parts = httpx.post(f"{url}/v1/chat/completions", json=body).json()
    plain = {**body, "messages": [{"role": "user", "content": "h\ni"}]}
    as_text = httpx.post(f"{url}/v1/chat/completions", json=plain).json()
    assert as_parts["usage"] == as_text["usage"]
    assert as_parts["choices"][0]["message"] == as_text["choices"][0]["message"]
    glued = {**body, "messages": [{"role": "user", "content": "hi"}]}
    as_glued = httpx.post(f"{url}/v1/chat/completions", json=glued).json()
    assert as_parts["usage"]["prompt_tokens"] == as_glued["usage"]["prompt_tokens"] + 1


def test_chat_null_or_missing_content_is_empty(srv: tuple[str, Batcher, SlowFakeEngine]) -> None:
    url, batcher, _ = srv
    call = {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    with_nulls = [
        USER_HI,
        {"role": "assistant", "content": None, "tool_calls": [call]},  # as OpenAI clients send
        {"role": "tool", "tool_call_id": "1"},
        {"role": "user", "content": None},  # vLLM reads None as "" for every role
    ]
    with_empty = [
        USER_HI,
        {"role": "assistant", "content": ""},
        {"role": "tool", "content": ""},
        {"role": "user", "content": ""},
    ]
    docs = []
    for messages in (with_nulls, with_empty):
        body = {"messages": messages, "max_tokens": 2, "temperature": 0}
        r = httpx.post(f"{url}/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        docs.append(r.json())
    assert docs[0]["usage"] == docs[1]["usage"]
    assert docs[0]["choices"][0]["message"] == docs[1]["choices"][0]["message"]
    assert batcher.stats.completed == 2


def test_stream_include_usage_null_is_the_default(
    srv: tuple[str, Batcher, SlowFakeEngine],
) -> None:
    url, _, _ = srv
    body = {
        "messages": [USER_HI],
        "max_tokens": 2,
        "stream": True,
        "stream_options": {"include_usage": None},
    }
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        assert r.status_code == 200, r.read()
        events = sse(r.read().decode().split("\n"))
    assert events[-1] == "[DONE]"
    assert all(e.get("usage") is None for e in events[:-1])  # false by default: no usage chunk


class ScriptedEngine:
    """Emits a fixed token sequence (as the argmax), the next two script tokens as runners-up."""

    def __init__(self, script: Sequence[int], vocab: int = 512) -> None:
        self.script, self.vocab = list(script), vocab
        self.n: dict[int, int] = {}

    def _row(self, slot: int) -> list[float]:
        i = self.n[slot]
        self.n[slot] += 1
        row = [0.0] * self.vocab
        for rank, tok in enumerate(self.script[i : i + 3]):
            row[tok] = max(row[tok], 6.0 - rank)
        return row

    def prefill(self, slot_ids: Sequence[int], token_ids: Sequence[Sequence[int]]) -> Any:
        for s in slot_ids:
            self.n[s] = 0
        return [self._row(s) for s in slot_ids]

    def decode(self, slot_ids: Sequence[int], tokens: Sequence[int]) -> Any:
        return [self._row(s) for s in slot_ids]

    def free(self, slot_id: int) -> None:
        self.n.pop(slot_id, None)


@contextmanager
def scripted_server(script: Sequence[int]) -> Iterator[str]:
    from perwatt.engine.server import serving_tokenizer
    from perwatt.engine.tokenizer import ByteTokenizer as EngineByteTokenizer

    tok = serving_tokenizer(EngineByteTokenizer(512, bos_id=256, eos_id=257))
    batcher = Batcher(ScriptedEngine(script), num_slots=1, max_seq_len=64, eos_token_ids=[257])
    batcher.start()
    app = OpenAIServer(batcher, tok, model_name="s", max_seq_len=64, vocab_size=512).app()
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(5)
        batcher.stop()
        sock.close()


def test_stream_never_sends_replacement_fragments() -> None:
    # é, then a lone 0xE2 cut off by a non-byte token, then € split over three tokens.
    script = [0xC3, 0xA9, 0xE2, 300, 0xE2, 0x82, 0xAC, 0x21, 0x21, 0x21, 0x21, 0x21]
    with scripted_server(script) as url:
        body = {"prompt": "x", "max_tokens": 8, "temperature": 0, "stream": True}
        pieces = []
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=10) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    pieces.append(json.loads(line[6:])["choices"][0]["text"])
        assert pieces == ["", "é", "", "<0xE2><t300>", "", "", "€", "!"]
        done = httpx.post(f"{url}/v1/completions", json={**body, "stream": False}, timeout=10)
        assert done.json()["choices"][0]["text"] == "é<0xE2><t300>€!"


def test_top_logprobs_keep_tokens_with_the_same_text_apart() -> None:
    # At the second step 0xE2 and 0xE3 rank first and second: alone, each is U+FFFD.
    script = [0x41, 0xE2, 0xE3, 0x42, 0x43]
    with scripted_server(script) as url:
        body = {"prompt": "x", "max_tokens": 2, "temperature": 0, "logprobs": 3}
        r = httpx.post(f"{url}/v1/completions", json=body, timeout=10).json()
        tops = r["choices"][0]["logprobs"]["top_logprobs"]
        assert list(tops[1]) == ["bytes:\\xe2", "bytes:\\xe3", "B"]
        assert r["choices"][0]["logprobs"]["tokens"][1] == "bytes:\\xe2"
        chat = {
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 2,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": 3,
        }
        r = httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=10).json()
        top = r["choices"][0]["logprobs"]["content"][1]["top_logprobs"]
        assert [(t["token"], t["bytes"]) for t in top] == [
            ("bytes:\\xe2", [0xE2]),
            ("bytes:\\xe3", [0xE3]),
            ("B", [0x42]),
        ]
