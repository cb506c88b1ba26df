"""The streaming client against the real loopback server, including the awkward cases."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from perwatt.bench.client import OpenAIClient, RequestRecord, fetch_models, resolve_model
from perwatt.bench.testing import FakeOpenAIServer, Fault, ServerConfig, every
from perwatt.errors import ConfigError

MODEL = "perwatt-test-model"


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[FakeOpenAIServer]:
    cfg = getattr(request, "param", None) or ServerConfig()
    with FakeOpenAIServer(cfg) as s:
        yield s


def send(
    url: str,
    n: int = 1,
    *,
    endpoint: Any = "completions",
    max_tokens: int | None = 8,
    stream: bool = True,
    api_key: str | None = None,
    prompt: str = "one two three four",
    timeout_s: float = 10.0,
    concurrency: int = 1,
    expected: int | None = None,
) -> list[RequestRecord]:
    async def main() -> list[RequestRecord]:
        c = OpenAIClient(url, api_key=api_key, timeout_s=timeout_s)
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> RequestRecord:
            async with sem:
                body = c.build_payload(
                    endpoint, MODEL, prompt, max_tokens, stream=stream, ignore_eos=True
                )
                kw = {} if expected is None else {"expected_output_tokens": expected}
                return await c.request(
                    endpoint, body, index=i, prompt_tokens=3, stream=stream, **kw
                )

        try:
            return list(await asyncio.gather(*(one(i) for i in range(n))))
        finally:
            await c.aclose()

    return asyncio.run(main())


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_stream_counts_and_usage(server: FakeOpenAIServer, endpoint: str) -> None:
    (r,) = send(server.url, endpoint=endpoint, max_tokens=12)
    assert r.ok, r.error_detail
    assert r.output_tokens == 12
    assert r.output_tokens_usage == 12
    assert r.output_tokens_chunks == 12  # the chat role chunk and final empty chunk are not tokens
    assert r.token_count_source == "usage"
    assert r.prompt_tokens == 4 and r.prompt_tokens_source == "usage"
    assert len(r.itl_s) == 11
    assert r.ttft_s is not None and r.e2el_s is not None and r.e2el_s >= r.ttft_s
    assert r.finish_reason == "length"
    body = server.stats.bodies[-1]
    assert body["stream_options"] == {"include_usage": True}
    assert body["ignore_eos"] is True and body["min_tokens"] == 12 and body["max_tokens"] == 12


@pytest.mark.parametrize("server", [ServerConfig(usage="never")], indirect=True)
def test_no_usage_counts_chunks(server: FakeOpenAIServer) -> None:
    (r,) = send(server.url, max_tokens=9)
    assert r.ok
    assert r.output_tokens_usage is None
    assert r.token_count_source == "chunks"
    assert r.output_tokens == 9
    assert r.prompt_tokens == 3 and r.prompt_tokens_source == "workload"


@pytest.mark.parametrize(
    "server", [ServerConfig(tokens_per_chunk=3, empty_chunk_every=1)], indirect=True
)
def test_multi_token_and_empty_chunks_trust_usage(server: FakeOpenAIServer) -> None:
    (r,) = send(server.url, max_tokens=10)
    assert r.ok
    # 10 tokens in chunks of 3,3,3,1 with empty chunks in between: usage wins, both recorded.
    # An empty chunk without a finish_reason counts as a token chunk (a byte-fallback token on
    # servers that stream one chunk per token), so the chunk count is 4 + 3.
    assert r.output_tokens == 10
    assert r.output_tokens_chunks == 7
    assert r.token_count_source == "usage"
    assert len(r.itl_s) == 6
    assert r.tpot_s is not None


@pytest.mark.parametrize(
    "server",
    [ServerConfig(tokens_per_chunk=2, usage="never", final_empty_chunk=False)],
    indirect=True,
)
def test_multi_token_without_usage_undercounts_and_says_so(server: FakeOpenAIServer) -> None:
    (r,) = send(server.url, max_tokens=8)
    assert r.ok
    assert r.output_tokens == 4  # four chunks of two: the chunk count is all the client knows
    assert r.token_count_source == "chunks"
    assert r.finish_reason == "length"  # finish_reason on the last text chunk


@pytest.mark.parametrize("server", [ServerConfig(chat_role_chunk=True, ttft_s=0.05)], indirect=True)
def test_role_chunk_does_not_count_as_first_token(server: FakeOpenAIServer) -> None:
    (r,) = send(server.url, endpoint="chat", max_tokens=3)
    assert r.ok
    assert r.ttft_s is not None and r.ttft_s >= 0.045


@pytest.mark.parametrize("server", [ServerConfig(ttft_s=0.03, itl_s=0.01)], indirect=True)
def test_latencies_follow_server(server: FakeOpenAIServer) -> None:
    (r,) = send(server.url, max_tokens=6)
    assert r.ok and r.ttft_s is not None and r.tpot_s is not None
    assert 0.03 <= r.ttft_s < 0.2
    assert 0.009 <= r.tpot_s < 0.1
    assert all(0.005 < x < 0.1 for x in r.itl_s)


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_non_streaming(server: FakeOpenAIServer, endpoint: str) -> None:
    (r,) = send(server.url, endpoint=endpoint, stream=False, max_tokens=7)
    assert r.ok
    assert r.output_tokens == 7 and r.token_count_source == "usage"
    assert r.ttft_s is None and r.tpot_s is None and r.e2el_s is not None
    assert "stream_options" not in server.stats.bodies[-1]


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        (Fault(status=500), "http_500"),
        (Fault(status=429), "http_429"),
        (Fault(drop_after=2), "connection_dropped"),
        (Fault(malformed_after=1), "malformed_sse"),
        (Fault(error_event_after=1), "server_error_event"),
    ],
)
def test_faults_are_per_request_errors(fault: Fault, kind: str) -> None:
    cfg = ServerConfig(faults=every(3, fault, offset=1))
    with FakeOpenAIServer(cfg) as s:
        recs = send(s.url, n=9, max_tokens=5, concurrency=3)
    bad = [r for r in recs if not r.ok]
    assert len(bad) == 3
    assert {r.error_kind for r in bad} == {kind}
    assert all(r.output_tokens == 5 for r in recs if r.ok)
    if kind.startswith("http_"):
        assert "injected fault" in bad[0].error_detail


def test_timeout_is_a_per_request_error() -> None:
    cfg = ServerConfig(faults=every(2, Fault(delay_s=2.0)))
    with FakeOpenAIServer(cfg) as s:
        recs = send(s.url, n=2, timeout_s=0.3, concurrency=2)
    kinds = sorted(str(r.error_kind) for r in recs)
    assert kinds == ["None", "timeout"]


def test_api_key(server: FakeOpenAIServer) -> None:
    cfg = ServerConfig(api_key="sekrit")
    with FakeOpenAIServer(cfg) as s:
        (bad,) = send(s.url)
        (good,) = send(s.url, api_key="sekrit")
        assert bad.error_kind == "http_401"
        assert good.ok
        assert s.stats.headers[-1]["authorization"] == "Bearer sekrit"
        with pytest.raises(ConfigError, match="api-key"):
            fetch_models(s.url)
        assert fetch_models(s.url, api_key="sekrit") == [MODEL]


def test_keep_alive_reuses_connections(server: FakeOpenAIServer) -> None:
    recs = send(server.url, n=20, concurrency=2)
    assert all(r.ok for r in recs)
    assert server.stats.generation_requests == 20


def test_connect_error_when_nothing_listens() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (r,) = send(f"http://127.0.0.1:{port}/v1")
    assert r.error_kind == "connect_error"


def test_resolve_model(server: FakeOpenAIServer) -> None:
    assert resolve_model(server.url, None) == MODEL
    assert resolve_model(server.url, MODEL) == MODEL
    with pytest.raises(ConfigError, match=r"not served .* available: perwatt-test-model"):
        resolve_model(server.url, "llama")
    with pytest.raises(ConfigError, match="does --url"):
        fetch_models(server.url.removesuffix("/v1"))


def test_unreachable_server_is_one_line_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConfigError, match="cannot reach the server"):
        resolve_model(f"http://127.0.0.1:{port}/v1", None)


def test_bad_url() -> None:
    with pytest.raises(ConfigError, match="not an http"):
        OpenAIClient("ftp://x/v1")


def _raw_server(responses: list[bytes]) -> tuple[socket.socket, threading.Thread]:
    """A one-connection server that answers each request with the next canned bytes."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            for resp in responses:
                buf = b""
                while b"\r\n\r\n" not in buf:
                    buf += conn.recv(65536)
                head, _, rest = buf.partition(b"\r\n\r\n")
                length = int(
                    next(
                        ln.split(b":")[1]
                        for ln in head.split(b"\r\n")
                        if ln.lower().startswith(b"content-length")
                    )
                )
                while len(rest) < length:
                    rest += conn.recv(65536)
                conn.sendall(resp)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv, t


def _sse(*events: dict[str, Any] | str) -> bytes:
    return b"".join(
        b"data: " + (e.encode() if isinstance(e, str) else json.dumps(e).encode()) + b"\n\n"
        for e in events
    )


def test_content_length_sse_crlf_and_comments() -> None:
    """A server that frames SSE with Content-Length, CRLF line ends and keep-alive comments."""
    body = (
        b": ping\r\n\r\n"
        + _sse({"choices": [{"text": "a"}]}).replace(b"\n", b"\r\n")
        + _sse({"choices": [{"text": "b"}]}, {"choices": [{"text": "", "finish_reason": "stop"}]})
        + _sse("[DONE]")
    )
    resp = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n"
        % len(body)
        + body
    )
    srv, t = _raw_server([resp])
    with srv:
        (r,) = send(f"http://127.0.0.1:{srv.getsockname()[1]}/v1")
    t.join(5)
    assert r.ok, r.error_detail
    assert r.output_tokens == 2 and r.token_count_source == "chunks"
    assert r.finish_reason == "stop"


def test_read_until_close_body_and_truncated_stream() -> None:
    ok_body = _sse({"choices": [{"text": "x"}]}, "[DONE]")
    resp = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
    srv, t = _raw_server([resp + ok_body])
    with srv:
        (r,) = send(f"http://127.0.0.1:{srv.getsockname()[1]}/v1")
    t.join(5)
    assert r.ok and r.output_tokens == 1
    # Chunked framing cut off mid-stream, no [DONE]: a dropped connection, not a short answer.
    part = _sse({"choices": [{"text": "x"}]})
    resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(part), part)
    srv, t = _raw_server([resp])
    with srv:
        (r,) = send(f"http://127.0.0.1:{srv.getsockname()[1]}/v1")
    t.join(5)
    assert r.error_kind == "connection_dropped"


def test_close_delimited_stream_without_done_or_finish_reason_is_dropped() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
    cut = _sse({"choices": [{"text": "x"}]}, {"choices": [{"text": "y"}]})
    srv, t = _raw_server([head + cut])
    with srv:
        (r,) = send(f"http://127.0.0.1:{srv.getsockname()[1]}/v1")
    t.join(5)
    assert r.error_kind == "connection_dropped" and "finish_reason" in r.error_detail
    # A server that ends with a finish_reason but sends no [DONE] is still a complete answer.
    ended = cut + _sse({"choices": [{"text": "", "finish_reason": "length"}]})
    srv, t = _raw_server([head + ended])
    with srv:
        (r,) = send(f"http://127.0.0.1:{srv.getsockname()[1]}/v1")
    t.join(5)
    assert r.ok and r.output_tokens == 2


def test_empty_stream_is_an_error() -> None:
    body = _sse({"choices": [{"text": "", "finish_reason": "stop"}]}, "[DONE]")
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    srv, t = _raw_server([resp])
    with srv:
        (r,) = send(f"http://127.0.0.1:{srv.getsockname()[1]}/v1")
    t.join(5)
    assert r.error_kind == "empty_response"


def test_health_and_stats_endpoints(server: FakeOpenAIServer) -> None:
    import httpx

    send(server.url, n=3, max_tokens=4)
    base = server.url.removesuffix("/v1")
    assert httpx.get(base + "/health").status_code == 200
    st = httpx.get(base + "/perwatt/stats").json()
    assert st["generation_requests"] == 3 and st["completed"] == 3
    assert st["tokens_sent"] == 12
    assert httpx.get(base + "/nope").status_code == 404


def test_reasoning_deltas_count_as_tokens() -> None:
    events = [
        {"choices": [{"delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"delta": {"reasoning_content": "think"}}]},
        {"choices": [{"delta": {"reasoning": "more"}}]},
        {"choices": [{"delta": {"content": "answer"}, "finish_reason": "stop"}]},
        "[DONE]",
    ]
    body = _sse(*events)
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    srv, t = _raw_server([resp])
    with srv:
        (r,) = send(f"http://127.0.0.1:{srv.getsockname()[1]}/v1", endpoint="chat")
    t.join(5)
    assert r.ok and r.output_tokens == 3 and len(r.itl_s) == 2


def test_json_answer_to_a_stream_request() -> None:
    """A server that ignores "stream": true and answers one JSON document."""
    body = json.dumps(
        {"choices": [{"text": " a b c"}], "usage": {"prompt_tokens": 4, "completion_tokens": 3}}
    ).encode()
    resp = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        % len(body)
        + body
    )
    srv, t = _raw_server([resp])
    with srv:
        (r,) = send(f"http://127.0.0.1:{srv.getsockname()[1]}/v1")
    t.join(5)
    assert r.ok and r.output_tokens == 3 and r.token_count_source == "usage"
    assert r.ttft_s is None


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
@pytest.mark.parametrize("usage", ["never", "requested"])
def test_byte_fallback_tokens_with_empty_text_are_counted(endpoint: str, usage: Any) -> None:
    """Issue 10 item 10: one chunk per token, every third with empty text, a final text-less
    chunk with only the finish_reason, and (usage="never") include_usage ignored."""
    plain = ServerConfig(usage=usage)
    fallback = ServerConfig(usage=usage, empty_text_every=3, final_empty_chunk=True)
    records = []
    for cfg in (plain, fallback):
        with FakeOpenAIServer(cfg) as s:
            (r,) = send(s.url, endpoint=endpoint, max_tokens=12)
        assert r.ok, r.error_detail
        records.append(r)
    ref, r = records
    assert r.output_tokens == 12
    assert r.output_tokens_chunks == 12  # tokens 3, 6 and 9 had empty text
    assert r.token_count_source == ("chunks" if usage == "never" else "usage")
    assert r.generated_chars == ref.generated_chars  # no text lost, only delayed
    assert len(r.itl_s) == 11
    assert r.finish_reason == "length"


def test_empty_text_chunk_rule_on_raw_events() -> None:
    """A choice without finish_reason is a token even with empty text; a text-less chunk that
    carries only the finish_reason, the chat role chunk and the usage chunk are not."""
    events = [
        {"choices": [{"text": ""}]},
        {"choices": [{"text": "a", "finish_reason": None}]},
        {"choices": [{"text": "", "finish_reason": None}]},
        {"choices": [{"text": "bc", "finish_reason": None}]},
        {"choices": [{"text": "", "finish_reason": "length"}]},
        {"choices": [], "usage": None},
        "[DONE]",
    ]
    body = _sse(*events)
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    srv, t = _raw_server([resp])
    with srv:
        (r,) = send(f"http://127.0.0.1:{srv.getsockname()[1]}/v1", expected=4)
    t.join(5)
    assert r.ok, r.error_detail
    assert r.output_tokens == 4 and r.token_count_source == "chunks"
    chat = [
        {"choices": [{"delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {"choices": [{"delta": {"content": ""}, "finish_reason": None}]},
        {"choices": [{"delta": {"content": "x"}, "finish_reason": None}]},
        {"choices": [{"delta": {}, "finish_reason": "stop"}]},
        "[DONE]",
    ]
    body = _sse(*chat)
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    srv, t = _raw_server([resp])
    with srv:
        (r,) = send(f"http://127.0.0.1:{srv.getsockname()[1]}/v1", endpoint="chat")
    t.join(5)
    assert r.ok and r.output_tokens == 2 and r.finish_reason == "stop"


@pytest.mark.parametrize(
    "server", [ServerConfig(faults=every(1, Fault(done_after=1)), usage="never")], indirect=True
)
def test_done_without_finish_reason_before_the_length_is_truncated(
    server: FakeOpenAIServer,
) -> None:
    """Issue 10 item 11: [DONE] with no finish_reason after 1 of 8 tokens asked for."""
    (r,) = send(server.url, max_tokens=8, expected=8)
    assert r.error_kind == "truncated" and not r.ok
    assert "1 of 8 tokens" in r.error_detail
    assert r.output_tokens == 1
    # Without a fixed length asked for, the client cannot tell a short answer from a cut one.
    (r,) = send(server.url, max_tokens=8)
    assert r.ok and r.output_tokens == 1


def test_full_length_without_finish_reason_is_not_truncated() -> None:
    body = _sse({"choices": [{"text": "a"}]}, {"choices": [{"text": "b"}]}, "[DONE]")
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    srv, t = _raw_server([resp])
    with srv:
        (r,) = send(f"http://127.0.0.1:{srv.getsockname()[1]}/v1", expected=2)
    t.join(5)
    assert r.ok and r.output_tokens == 2 and r.finish_reason is None


@pytest.mark.parametrize(
    "server", [ServerConfig(preempt_on_arrival=True, itl_s=0.005, usage="never")], indirect=True
)
def test_single_slot_server_cuts_streams_at_concurrency_2(server: FakeOpenAIServer) -> None:
    records = send(server.url, n=6, max_tokens=16, concurrency=2, expected=16)
    truncated = [r for r in records if r.error_kind == "truncated"]
    # Each new arrival cuts the stream in flight; only the last request can run to its end.
    assert len(truncated) >= 3
    assert server.stats.cut == len(truncated)
    assert all(1 <= r.output_tokens < 16 for r in truncated)


def test_error_message_is_the_servers_text_on_one_line() -> None:
    from perwatt.bench.client import error_message

    assert error_message(b'{"error": {"message": "model\\n  not found"}}') == "model not found"
    assert error_message(b'{"error": "overloaded"}') == "overloaded"
    assert error_message(b'{"detail": "x"}') == '{"detail": "x"}'
    assert error_message(b"<html>\n502 Bad Gateway</html>") == "<html> 502 Bad Gateway</html>"
    assert len(error_message(b"x" * 1000, limit=200)) == 200
