"""``perwatt serve``: the built-in engine behind an OpenAI-compatible API.

Parses arguments and calls :func:`perwatt.engine.server.serve`; nothing else lives here. torch,
starlette and uvicorn are imported only when the command runs, so ``perwatt --help`` stays fast
and works without the ``engine``/``server`` extras.
"""

from __future__ import annotations

import argparse
from typing import Any


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _port(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535 (0 = any free port), got {v}")
    return v


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve the built-in engine behind an OpenAI-compatible API (localhost by default)",
        description=(
            "Serve the built-in engine over HTTP: GET /v1/models, POST /v1/completions and "
            "/v1/chat/completions (streaming SSE as vLLM sends it), with continuous batching over "
            "--max-batch-size KV-cache slots. Binds 127.0.0.1 unless --host says otherwise; the "
            "API has no authentication. Drive it with `perwatt bench --url http://HOST:PORT/v1`."
        ),
    )
    p.add_argument(
        "--model",
        required=True,
        help="a shape name (tiny, llama-3.2-1b, llama-3.1-8b, ... : random weights) or a local "
        "Hugging Face directory (config.json + *.safetensors)",
    )
    p.add_argument("--precision", default="bf16", help="fp32, fp16, bf16, fp8, int8, int4, nvfp4")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0: every interface)",
    )
    p.add_argument("--port", type=_port, default=8000, help="TCP port (default 8000; 0 = any free)")
    p.add_argument(
        "--max-batch-size",
        type=_positive_int,
        default=8,
        help="KV-cache slots = requests decoded together (default 8); more requests queue",
    )
    p.add_argument(
        "--max-seq-len",
        type=_positive_int,
        default=2048,
        help="prompt + completion tokens per request (default 2048)",
    )
    p.add_argument("--device", default="auto", help="auto (first GPU, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights (default 0)")
    p.add_argument("--quantized-path", help="weights saved by the quantizer, swapped in at load")
    p.add_argument("--served-model-name", help="model id the API reports (default: --model)")
    p.add_argument(
        "--log-level",
        default="warning",
        choices=("critical", "error", "warning", "info", "debug"),
        help="uvicorn log level (default warning)",
    )
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from perwatt.engine.server import serve

    return serve(
        model=args.model,
        precision=args.precision,
        host=args.host,
        port=args.port,
        max_batch_size=args.max_batch_size,
        max_seq_len=args.max_seq_len,
        device=args.device,
        seed=args.seed,
        quantized_path=args.quantized_path,
        served_model_name=args.served_model_name,
        log_level=args.log_level,
    )
