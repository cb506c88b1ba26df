"""``perwatt serve``: the built-in engine behind an OpenAI-compatible HTTP API.

Endpoints (the subset benchmark clients and most SDKs use, shaped like vLLM's)::

    GET  /v1/models              the one served model
    POST /v1/completions         prompt (text or token ids) -> text, streaming or not
    POST /v1/chat/completions    messages -> assistant message, streaming or not
    GET  /health                 200 while the engine thread is up, else 503
    GET  /metrics                Prometheus text: running/waiting requests, slots, counters

Streaming is Server-Sent Events exactly as vLLM sends them: one ``data: {json}\\n\\n`` chunk per
generated token (text may be empty while a multi-byte character is incomplete), the finish reason
on the chunk of the last token, then — when ``stream_options.include_usage`` is set — one chunk
with ``"choices": []`` and ``usage``, and finally ``data: [DONE]``. Benchmark clients time
inter-token latency from these chunks, so one chunk per token is a contract, not a detail.

Threads, and why::

    event loop (uvicorn)                          engine thread (only one touching torch)
    ─ parse JSON, tokenize ── Request ──▶ Batcher queue ──▶ admit, prefill, decode, sample
    ◀── asyncio.Queue ◀── loop.call_soon_threadsafe(event) ◀── per-token callback
    ─ detokenize, write SSE

A decode step holds the GIL only between kernel launches, so HTTP keeps flowing while the GPU
works; nothing in the event loop ever waits on the device. A client that disconnects cancels its
request; the batcher frees the slot at the next step boundary.

Errors are OpenAI-style JSON ``{"error": {"message", "type", "param", "code"}}``: 400 for bad
JSON, bad parameters or a prompt that does not fit ``max_seq_len``; 404 for an unknown model.
``param`` names the offending field as vLLM does (``max_completion_tokens``,
``messages[1].content``), and every check runs before a streaming response starts, so a bad
request is one JSON error, never an SSE stream that fails midway.

The server binds 127.0.0.1 unless told otherwise: it has no authentication.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from perwatt.engine.batcher import Batcher, Event, Request, SamplingParams
from perwatt.engine.detokenize import (
    IncrementalDetokenizer,
    Tokenizer,
    VisibleByteTokenizer,
    serving_tokenizer,
)
from perwatt.engine.oom import is_oom
from perwatt.engine.openai_bridge import BatcherBridge
from perwatt.engine.openai_request import APIError, RequestParser, render_chat
from perwatt.errors import ConfigError

if TYPE_CHECKING:
    from starlette.applications import Starlette

__all__ = [
    "LOOPBACK_HOSTS",
    "SERVER_EXTRA_HINT",
    "APIError",
    "IncrementalDetokenizer",
    "OpenAIServer",
    "VisibleByteTokenizer",
    "bind",
    "render_chat",
    "require_server_deps",
    "serve",
    "serving_tokenizer",
    "warm_up",
]

SERVER_EXTRA_HINT = "pip install perwatt[server]"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def require_server_deps() -> None:
    """Raise a one-line :class:`ConfigError` naming the extra when starlette/uvicorn are absent."""
    missing = []
    for mod in ("starlette", "uvicorn"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ConfigError(f"perwatt serve needs {' and '.join(missing)}: {SERVER_EXTRA_HINT}")


class OpenAIServer:
    """The OpenAI API over a running :class:`Batcher`: request validation
    (:class:`~perwatt.engine.openai_request.RequestParser`), the bridge to the engine thread
    (:class:`~perwatt.engine.openai_bridge.BatcherBridge`) and, from :meth:`app`, the HTTP
    surface (:func:`perwatt.engine.asgi.build_app`)."""

    def __init__(
        self,
        batcher: Batcher,
        tokenizer: Tokenizer,
        *,
        model_name: str,
        max_seq_len: int,
        vocab_size: int | None = None,
        aliases: Sequence[str] = (),
    ) -> None:
        self.batcher = batcher
        self.model_name = model_name
        self.parser = RequestParser(
            tokenizer,
            model_name=model_name,
            max_seq_len=max_seq_len,
            check_fit=batcher.check,
            vocab_size=vocab_size,
            aliases=aliases,
        )
        self.bridge = BatcherBridge(
            batcher, tokenizer, model_name=model_name, max_seq_len=max_seq_len
        )

    def app(self) -> Starlette:
        """The ASGI app serving this model."""
        require_server_deps()
        # starlette (the optional server extra) loads only here, once it is known to be there.
        from perwatt.engine.asgi import build_app

        return build_app(self.parser, self.bridge)


# ---------------------------------------------------------------------- serve
def bind(host: str, port: int) -> socket.socket:
    """Bind a listening TCP socket; a busy port is a one-line error naming the fix."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except socket.gaierror as e:
        # A name that does not resolve is not a busy port: the fix is the host, not the port.
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: the host does not resolve ({e.strerror or e}); "
            "use --host 127.0.0.1 (this machine) or 0.0.0.0 (every interface)"
        ) from None
    except OSError as e:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port "
            "(0 = any free port) or stop the process using it"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(
    *,
    model: str,
    precision: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch_size: int = 8,
    max_seq_len: int = 2048,
    device: str = "auto",
    seed: int = 0,
    quantized_path: str | None = None,
    served_model_name: str | None = None,
    log_level: str = "warning",
    out: Callable[[str], None] = print,
) -> int:
    """Load the engine, start the engine thread, and serve the API until Ctrl-C.

    ``model`` may be a directory written by ``perwatt quantize``; ``precision`` None is that
    directory's precision, else bf16."""
    require_server_deps()
    # Lazy: uvicorn is the optional server extra, and resolve and generate load torch.
    import uvicorn

    from perwatt.engine.resolve import resolve_model

    resolved = resolve_model(model, precision, quantized_path)
    precision = resolved.precision
    quantized = resolved.quantized_path is not None
    if max_batch_size < 1:
        raise ConfigError(f"--max-batch-size must be at least 1, got {max_batch_size}")
    if max_seq_len < 2:
        raise ConfigError(f"--max-seq-len must be at least 2, got {max_seq_len}")
    sock = bind(host, port)  # before loading: a busy port should fail in a second, not a minute
    try:
        from perwatt.engine.generate import load_engine

        try:
            engine = load_engine(
                resolved,
                precision=precision,
                device=device,
                max_batch_size=max_batch_size,
                max_seq_len=max_seq_len,
                seed=seed,
            )
        except Exception as e:
            if not is_oom(e):
                raise
            # The KV cache is max_batch_size x max_seq_len: those are the knobs that fit it.
            # Saved quantized weights are loaded at the precision they hold, so another
            # --precision is no way out for them (it is an error); re-quantizing lower is.
            if not quantized:
                lower = ", or a lower-memory --precision (int8, int4)"
            elif precision in ("int4", "nvfp4"):
                lower = ""  # already the smallest weights there are
            else:
                lower = ", or quantize to int4 (perwatt quantize --precision int4)"
            raise ConfigError(
                f"out of memory loading {model} at {precision} with {max_batch_size} slots x "
                f"{max_seq_len} tokens: use a smaller --max-batch-size or --max-seq-len{lower}"
            ) from e
        tokenizer = serving_tokenizer(engine.tokenizer)
        batcher = Batcher(
            engine,
            num_slots=max_batch_size,
            max_seq_len=max_seq_len,
            eos_token_ids=_eos_ids(engine, tokenizer),
        )
        name = served_model_name or model
        server = OpenAIServer(
            batcher,
            tokenizer,
            model_name=name,
            max_seq_len=max_seq_len,
            vocab_size=int(engine.cfg.vocab_size),
        )
        app = server.app()
        batcher.start()
        try:
            warm_s = warm_up(batcher)
            bound_host, bound_port = sock.getsockname()[:2]
            shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
            scope = (
                "localhost only; pass --host 0.0.0.0 to accept other machines"
                if host in LOOPBACK_HOSTS
                else "reachable from other machines: the API has no authentication"
            )
            out(
                f"perwatt serve: {name} ({precision}, {max_batch_size} slots x {max_seq_len} "
                f"tokens) on http://{shown}:{bound_port}/v1 ({scope}); warm-up {warm_s:.1f} s"
            )
            if getattr(engine, "emulated", False):
                out(f"perwatt serve: {precision} is emulated on this device: {engine.note}")
            sys.stdout.flush()
            config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off")
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            batcher.stop()
    finally:
        sock.close()
    return 0


def warm_up(batcher: Batcher, steps: int = 4, timeout_s: float = 900.0) -> float:
    """Run short requests through the batcher before accepting traffic, so compilation and
    CUDA-graph capture (tens of seconds on a GPU) do not land on the first clients' TTFT.

    They go through the engine thread on purpose: torch.compile's CUDA-graph trees are kept per
    thread, so a warm-up on any other thread would be recorded again on the first request. A
    compiled engine decodes in a few batch sizes (``Engine.decode_sizes``: one graph each), so
    each size gets a wave of that many concurrent requests. Returns the seconds it took.
    """
    engine = batcher.engine
    sizes: tuple[int, ...] = (1,)
    if getattr(engine, "compiled", False):
        sizes = tuple(getattr(engine, "decode_sizes", (1,)))
    done = threading.Semaphore(0)  # one release per finished request
    failure: list[str] = []

    def on_event(ev: Event) -> None:
        if ev.finish_reason is not None:
            if ev.finish_reason in ("error", "abort"):
                failure.append(ev.error or ev.finish_reason)
            done.release()

    t0 = time.perf_counter()
    for n in sizes:
        n = min(n, batcher.num_slots)
        # Requests admitted a step apart still overlap for `steps` steps at full occupancy.
        max_tokens = max(1, min(steps + n - 1, batcher.max_seq_len - 4))
        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
        for _ in range(n):
            batcher.submit(Request(prompt_ids=(1, 2, 3, 4), params=params, on_event=on_event))
        deadline = time.monotonic() + timeout_s
        for _ in range(n):
            if not done.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise ConfigError(
                    f"the engine did not finish a {max_tokens}-token warm-up in {timeout_s:g} s"
                )
        if failure:
            raise ConfigError(f"the engine failed its warm-up request: {failure[0]}")
    return time.perf_counter() - t0


def _eos_ids(engine: Any, tokenizer: Any) -> list[int]:
    """The ids that end a request: every EOS of the checkpoint (config.json and
    generation_config.json, see :func:`perwatt.engine.config.config_from_hf`) and the
    tokenizer's own EOS, as vLLM stops on both."""
    ids: list[int] = []
    cfg = getattr(engine, "cfg", None)
    ids.extend(getattr(cfg, "eos_token_ids", ()) or ())
    ids.extend(getattr(tokenizer, "eos_ids", ()) or ())
    return sorted({int(i) for i in ids})
