"""How fast can each load generator drive a server that costs nothing?

A client that limits the load it generates makes every energy-per-token figure wrong, so perwatt's
client is measured against a loopback server with zero latency (perwatt.bench.testing, one token
per SSE chunk, in its own process) next to other tools on the same server in the same run:

* ``perwatt``   — ``perwatt bench`` end to end (CLI, meter with a simulated source, CSV rows);
* ``httpx``     — a minimal asyncio + httpx streaming loop (the design perwatt did not pick);
* ``guidellm``  — ``guidellm benchmark`` (concurrent profile), if installed in a separate venv;
* ``aiperf``    — ``aiperf profile``, if installed in a separate venv.

Every tool is measured the same way, by what the *server* saw: the script polls the server's
counters (``GET /perwatt/stats``) 10 times a second and takes the sustained rates between 10% and
90% of the requests (so start-up and drain do not count). The client's CPU use is its process
tree's user+system time (``wait4`` rusage) over its wall time: 1.0 = one core busy.

Placement: the server is pinned to CPU 1 and each client to CPU 0 (``taskset``) so clients get
the same single core and never steal the server's; ``--no-pin`` lets everything float.

    python benchmarks/loadgen_client.py --guidellm /tmp/peers/bin/guidellm \\
        --aiperf /tmp/peers2/bin/aiperf --out results.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

MODEL = "perwatt-test-model"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stats(base: str) -> dict[str, int]:
    with urllib.request.urlopen(base + "/perwatt/stats", timeout=5) as r:
        return dict(json.loads(r.read()))


def pin(cpu: int | None) -> list[str]:
    if cpu is None or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", str(cpu)]


class Poller(threading.Thread):
    """Samples the server counters every 0.1 s while a client runs."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.stop_flag = threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            with contextlib.suppress(OSError):
                self.samples.append((time.perf_counter(), stats(self.base)))
            self.stop_flag.wait(0.1)


def sustained(
    samples: list[tuple[float, dict[str, int]]], n: int, before: dict[str, int]
) -> dict[str, Any]:
    """Rates between 10% and 90% of the run's completed requests."""
    pts = [(t, {k: v - before.get(k, 0) for k, v in s.items()}) for t, s in samples]
    lo = next((p for p in pts if p[1]["completed"] >= 0.1 * n), None)
    hi = next((p for p in pts if p[1]["completed"] >= 0.9 * n), None)
    if lo is None or hi is None or hi[0] <= lo[0]:
        return {"ok": False, "why": "the run did not reach 90% of its requests"}
    dt = hi[0] - lo[0]
    d = {k: hi[1][k] - lo[1][k] for k in ("completed", "tokens_sent", "chunks_sent")}
    return {
        "ok": True,
        "window_s": dt,
        "requests_per_s": d["completed"] / dt,
        "text_chunks_per_s": d["tokens_sent"] / dt,
        "all_chunks_per_s": d["chunks_sent"] / dt,
    }


def run_client(
    name: str,
    cmd: list[str],
    base: str,
    n: int,
    timeout_s: float,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    before = stats(base)
    poll = Poller(base)
    poll.start()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    out_lines: list[bytes] = []
    reader = threading.Thread(target=lambda: out_lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    timed_out = True
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # WNOWAIT: see that it exited without reaping it, so wait4 below still gets its rusage.
        if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            timed_out = False
            break
        time.sleep(0.05)
    if timed_out:
        os.killpg(proc.pid, signal.SIGKILL)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    poll.stop_flag.set()
    poll.join()
    reader.join(5)
    rc = os.waitstatus_to_exitcode(status)
    proc.returncode = rc
    res = sustained(poll.samples, n, before)
    after = stats(base)
    tail = b"".join(out_lines)[-3000:].decode("utf-8", "replace")
    return {
        "name": name,
        "cmd": " ".join(cmd),
        "rc": rc,
        "timed_out": timed_out,
        "wall_s": wall,
        "cpu_s": ru.ru_utime + ru.ru_stime,
        "cpu_util": (ru.ru_utime + ru.ru_stime) / wall,
        "requests_completed": after["completed"] - before["completed"],
        # Efficiency, independent of whether the server or the client was the bottleneck.
        "text_chunks_per_client_cpu_s": (after["tokens_sent"] - before["tokens_sent"])
        / max(1e-9, ru.ru_utime + ru.ru_stime),
        **res,
        "output_tail": tail,
    }


HTTPX_CHILD = r"""
import asyncio, json, sys, httpx
url, n, conc, out_len = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
async def main():
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=600) as c:
        sem = asyncio.Semaphore(conc)
        async def one(i):
            body = {"model": "perwatt-test-model", "prompt": "one two three " * 10,
                    "max_tokens": out_len, "stream": True, "stream_options": {"include_usage": True}}
            async with sem:
                async with c.stream("POST", "/completions", json=body) as r:
                    async for line in r.aiter_lines():
                        if line.startswith("data: ") and line != "data: [DONE]":
                            json.loads(line[6:])
        await asyncio.gather(*(one(i) for i in range(n)))
asyncio.run(main())
"""


def make_tokenizer(peers_bin: Path, where: Path) -> Path | None:
    """A local word-level HF tokenizer (the peers need one; nothing can be downloaded)."""
    code = r"""
import sys
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from perwatt_words import WORDS
vocab = {"[UNK]": 0, "[BOS]": 1, "[EOS]": 2}
for w in list(WORDS) + ["one", "two", "three", "four"]:
    vocab.setdefault(w, len(vocab))
tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]")
fast.save_pretrained(sys.argv[1])
"""
    from perwatt.bench.workload import WORDS

    where.mkdir(parents=True, exist_ok=True)
    (where / "perwatt_words.py").write_text(f"WORDS = {list(WORDS)!r}\n")
    tok_dir = where / "tokenizer"
    r = subprocess.run(
        [str(peers_bin / "python"), "-c", code, str(tok_dir)],
        cwd=where,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(where), "HF_HUB_OFFLINE": "1"},
    )
    if r.returncode != 0:
        print("tokenizer build failed:", r.stderr[-2000:], file=sys.stderr)
        return None
    return tok_dir


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--input-len", type=int, default=32)
    ap.add_argument("--guidellm", type=Path, default=None, help="guidellm executable (own venv)")
    ap.add_argument("--aiperf", type=Path, default=None, help="aiperf executable (own venv)")
    ap.add_argument("--only", default="perwatt,httpx,guidellm,aiperf")
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    only = set(args.only.split(","))
    server_cpu = None if args.no_pin else 1
    client_cpu = None if args.no_pin else 0
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    url = base + "/v1"
    py = sys.executable
    server = subprocess.Popen(
        [*pin(server_cpu), py, "-m", "perwatt.bench.testing", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            stats(base)
            break
        except OSError:
            time.sleep(0.1)
    results: list[dict[str, Any]] = []
    n, c, out_len, in_len = args.requests, args.concurrency, args.output_len, args.input_len
    tmp = Path(tempfile.mkdtemp(prefix="perwatt-loadgen-"))
    try:
        if "perwatt" in only:
            perwatt = str(Path(py).parent / "perwatt")
            cmd = [*pin(client_cpu), perwatt, "bench", "--url", url, "--num-prompts", str(n),
                   "--max-concurrency", str(c), "--input-len", str(in_len), "--output-len",
                   str(out_len), "--result-dir", str(tmp / "perwatt"), "--energy-source",
                   "simulated", "--quiet", "--json"]  # fmt: skip
            results.append(run_client("perwatt", cmd, base, n, args.timeout))
        if "httpx" in only:
            cmd = [*pin(client_cpu), py, "-c", HTTPX_CHILD, url, str(n), str(c), str(out_len)]
            results.append(run_client("httpx (minimal loop)", cmd, base, n, args.timeout))
        tok = None
        for exe in (args.guidellm, args.aiperf):
            if tok is None and exe is not None and exe.exists():
                tok = make_tokenizer(exe.parent, tmp / "tok")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        if "guidellm" in only:
            exe = args.guidellm
            if exe is None or not exe.exists():
                results.append({"name": "guidellm", "skipped": f"not installed at {exe}"})
            else:
                data = f"kind=synthetic_text,prompt_tokens={in_len},output_tokens={out_len}"
                cmd = [*pin(client_cpu), str(exe), "run",
                       "--backend", f"kind=openai_http,target={base},model={MODEL}",
                       "--profile", f"kind=concurrent,streams={c}",
                       "--constraint", f"kind=max_requests,count={n}",
                       "--data", data,
                       "--output", f"kind=json,path={tmp / 'guidellm.json'}",
                       "--disable-console-interactive"]  # fmt: skip
                if tok is not None:
                    cmd += ["--tokenizer", f"kind=huggingface_auto,model={tok}"]
                results.append(run_client("guidellm", cmd, base, n, args.timeout, env))
        if "aiperf" in only:
            exe = args.aiperf
            if exe is None or not exe.exists():
                results.append({"name": "aiperf", "skipped": f"not installed at {exe}"})
            else:
                cmd = [*pin(client_cpu), str(exe), "profile", "--model", MODEL, "--url", base,
                       "--endpoint-type", "completions", "--streaming", "--concurrency", str(c),
                       "--request-count", str(n), "--prompt-input-tokens-mean", str(in_len),
                       "--prompt-output-tokens-mean", str(out_len), "--output-artifact-dir",
                       str(tmp / "aiperf"), "--ui-type", "none", "--no-auto-plot"]  # fmt: skip
                if tok is not None:
                    cmd += ["--tokenizer", str(tok)]
                # Not offline: AIPerf's offline mode only loads tokenizers from the HF cache, not
                # from a local directory; nothing is downloaded for a local path either way.
                results.append(run_client("aiperf", cmd, base, n, args.timeout))
    finally:
        server.terminate()
        server.wait(10)
    doc = {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "params": {
            "requests": n,
            "concurrency": c,
            "input_len": in_len,
            "output_len": out_len,
            "pinned": not args.no_pin,
        },
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "results": results,
    }
    text = json.dumps(doc, indent=2)
    if args.out:
        args.out.write_text(text)
    for r in results:
        if "skipped" in r:
            print(f"{r['name']:>22}: skipped: {r['skipped']}")
        elif r.get("ok"):
            print(
                f"{r['name']:>22}: {r['requests_per_s']:8.1f} req/s  {r['text_chunks_per_s']:9.0f} "
                f"chunks/s  client CPU {r['cpu_util']:.2f} cores  "
                f"{r['text_chunks_per_client_cpu_s']:8.0f} chunks/CPU-s  rc={r['rc']}"
            )
        else:
            print(
                f"{r['name']:>22}: FAILED rc={r['rc']}: {r.get('why')}\n{r['output_tail'][-1500:]}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
