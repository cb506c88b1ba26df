"""``perwatt serve`` (the built-in engine behind an OpenAI-compatible API) and ``perwatt quantize``
(quantize a model once, save it for serve and bench).

Parses arguments and calls :func:`perwatt.engine.server.serve` or
:func:`perwatt.engine.quantized_dir.quantize_model`; nothing else lives here. torch, starlette and
uvicorn are imported only when a command runs, so ``perwatt --help`` stays fast and works without
the ``engine``/``server`` extras.
"""

from __future__ import annotations

import argparse
from typing import Any

from perwatt.cli.options import port, positive_int


def register(subparsers: Any) -> None:
    """Add ``serve`` and ``quantize`` to the ``perwatt`` parser."""
    _register_serve(subparsers)
    _register_quantize(subparsers)


def _register_serve(subparsers: Any) -> None:
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
        help="a shape name (tiny, llama-3.2-1b, llama-3.1-8b, ... : random weights), a local "
        "Hugging Face directory (config.json + *.safetensors), or a directory written by "
        "`perwatt quantize`",
    )
    p.add_argument(
        "--precision",
        default=None,
        help="fp32, fp16, bf16, fp8, int8, int4, nvfp4 (default bf16, or the precision a "
        "`perwatt quantize` directory or a --quantized-path file holds)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0: every interface)",
    )
    p.add_argument("--port", type=port, default=8000, help="TCP port (default 8000; 0 = any free)")
    p.add_argument(
        "--max-batch-size",
        type=positive_int,
        default=8,
        help="KV-cache slots = requests decoded together (default 8); more requests queue",
    )
    p.add_argument(
        "--max-seq-len",
        type=positive_int,
        default=2048,
        help="prompt + completion tokens per request (default 2048)",
    )
    p.add_argument("--device", default="auto", help="auto (first GPU, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights (default 0)")
    p.add_argument(
        "--quantized-path",
        help="weights saved by the quantizer (a `perwatt quantize` directory or its "
        ".safetensors file) for the shape or checkpoint given by --model",
    )
    p.add_argument("--served-model-name", help="model id the API reports (default: --model)")
    p.add_argument(
        "--log-level",
        default="warning",
        choices=("critical", "error", "warning", "info", "debug"),
        help="uvicorn log level (default warning)",
    )
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    # lazy: keeps `perwatt --help` fast (this pulls NumPy/httpx/torch; see ARCHITECTURE.md)
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


def _register_quantize(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "quantize",
        help="quantize a model once to fp8/int8/int4/nvfp4 and save it for serve and bench",
        description=(
            "Quantize a model's linear layers once and write a directory that loads without "
            "quantizing again: `perwatt serve --model OUT` and `perwatt bench --engine builtin "
            "--model OUT --precision P`. A shape name is quantized from its seeded random "
            "weights (--seed); a Hugging Face directory from its weights, with its config and "
            "tokenizer copied. OUT is written under a temporary name and renamed into place."
        ),
    )
    p.add_argument(
        "--model",
        required=True,
        help="a shape name (tiny, llama-3.1-8b, ...: random weights) or a local Hugging Face "
        "directory (config.json + *.safetensors)",
    )
    p.add_argument("--precision", required=True, help="fp8, int8, int4 or nvfp4")
    p.add_argument("--out", required=True, help="directory to write (must not exist)")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace --out if it holds only what `perwatt quantize` writes (manifest, "
        "weights, copied config/tokenizer files)",
    )
    p.add_argument(
        "--group-size",
        type=positive_int,
        default=None,
        help="int4 group size: 32, 64 or 128 (default: the largest that divides every layer)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for random weights (default 0)")
    p.add_argument(
        "--device",
        default="auto",
        help="where to quantize: auto (first GPU, else CPU), cpu, cuda, cuda:N; random weights "
        "depend on the device type, so quantize where you will bench for a matching accuracy "
        "reference",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print what was written as one JSON object (the manifest's directory, weights "
        "file, precision, group size, source, seed, device and size, plus duration_s)",
    )
    p.set_defaults(func=_quantize)


def _quantize(args: argparse.Namespace) -> int:
    import json

    # lazy: keeps `perwatt --help` fast (this pulls NumPy/httpx/torch; see ARCHITECTURE.md)
    from perwatt.engine.quantized_dir import quantize_model

    qm = quantize_model(
        args.model,
        args.precision,
        args.out,
        group_size=args.group_size,
        seed=args.seed,
        device=args.device,
        force=args.force,
    )
    if args.json:
        print(json.dumps({**qm.to_dict(), "duration_s": round(qm.duration_s, 3)}))
        return 0
    group = f", group {qm.group_size}" if qm.group_size else ""
    print(
        f"perwatt quantize: {args.model} -> {qm.directory} ({qm.precision}{group}, "
        f"{qm.size_bytes / 2**20:.1f} MiB, {qm.duration_s:.1f} s on {qm.weights_device})"
    )
    print(f"  serve: perwatt serve --model {qm.directory}")
    print(
        f"  bench: perwatt bench --engine builtin --model {qm.directory} --precision {qm.precision}"
    )
    return 0
