"""The engine against Hugging Face ``transformers`` on checkpoints transformers itself wrote.

For every architecture the engine supports (and Llama's bias and RoPE-scaling variants), a tiny
random checkpoint is saved with the installed transformers' ``save_pretrained`` — the
``rope_parameters`` layout of transformers >= 5 — and again with the older top-level
``rope_theta``/``rope_scaling`` keys. In fp32 the engine's logits must match transformers' to
1e-4 relative (they agree to ~1e-6; a wrong RoPE or a mis-mapped tensor is off by 10-100%) on
prefill, on cached decode and under continuous batching with staggered requests, greedy tokens
must be identical, and generation must stop on every EOS id of config.json and
generation_config.json as ``generate`` does.

Then the whole path: a checkpoint directory with a tokenizer, a chat template and a list of EOS
ids, served by the real HTTP server on loopback, returns the text transformers generates.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from perwatt.engine.batcher import Batcher
from perwatt.engine.generate import Engine, load_engine
from perwatt.engine.server import OpenAIServer, _eos_ids, bind, serving_tokenizer
from perwatt.engine.weights import read_hf_config
from tests.engine import hf_checkpoints as H

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

RTOL = 1e-4
VOCAB = 300


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("hf")
    out: dict[tuple[str, str], Path] = {}
    for i, (name, arch) in enumerate(H.ARCHS.items()):
        new = H.save_checkpoint(arch, root / f"{name}-new", vocab_size=VOCAB, seed=i)
        old = root / f"{name}-old"
        shutil.copytree(new, old)
        H.to_old_rope_layout(old)
        out[name, "new"], out[name, "old"] = new, old
    return out


CASES = [(a, layout) for a in H.ARCHS for layout in ("new", "old")]


def _hf_model(directory: Path) -> Any:
    model = transformers.AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32)
    return model.eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@torch.no_grad()
def _hf_last(model: Any, ids: list[int]) -> torch.Tensor:
    return model(torch.tensor([ids])).logits[0, -1].float()


def _engine(directory: Path, batch: int = 3, seq_len: int = 48) -> Engine:
    return load_engine(
        str(directory), precision="fp32", device="cpu", max_batch_size=batch, max_seq_len=seq_len
    )


@pytest.mark.parametrize(("arch", "layout"), CASES)
def test_logits_match_transformers(
    checkpoints: dict[tuple[str, str], Path], arch: str, layout: str
) -> None:
    directory = checkpoints[arch, layout]
    hf = _hf_model(checkpoints[arch, "new"])  # transformers reads its own layout
    engine = _engine(directory)
    gen = torch.Generator().manual_seed(1)
    a = torch.randint(3, VOCAB, (9,), generator=gen).tolist()
    b = torch.randint(3, VOCAB, (5,), generator=gen).tolist()

    # prefill: the whole sequence at once
    with torch.no_grad():
        full = engine.model.forward(torch.tensor([a]))[0]
        ref = hf(torch.tensor([a])).logits[0]
    assert _rel(full, ref) < RTOL

    # cached decode with continuous batching: slot 0 runs alone, slot 2 joins (slot 1 stays
    # free inside the span), slot 0 leaves, slot 2 goes on alone. Each step's tokens are the
    # engine's greedy choice and must be transformers' too.
    seqs = {0: list(a), 2: list(b)}
    logits = engine.prefill([0], [a])[0]
    assert _rel(logits, _hf_last(hf, a)) < RTOL
    nxt = {0: int(logits.argmax())}
    schedule = [[0], [0], [0, 2], [0, 2], [2], [2]]
    for step, active in enumerate(schedule):
        if step == 2:
            first = engine.prefill([2], [b])[0]
            assert _rel(first, _hf_last(hf, b)) < RTOL
            nxt[2] = int(first.argmax())
        for s in active:
            seqs[s].append(nxt[s])
        out = engine.decode(active, [nxt[s] for s in active])
        for row, s in enumerate(active):
            want = _hf_last(hf, seqs[s])
            assert _rel(out[row], want) < RTOL, (arch, layout, step, s)
            assert int(out[row].argmax()) == int(want.argmax())
            nxt[s] = int(out[row].argmax())
        if step == 3:
            engine.free(0)


@pytest.mark.parametrize("arch", list(H.ARCHS))
def test_layouts_give_the_same_config(checkpoints: dict[tuple[str, str], Path], arch: str) -> None:
    new = read_hf_config(checkpoints[arch, "new"])
    old = read_hf_config(checkpoints[arch, "old"])
    assert new.replace(name="x") == old.replace(name="x")
    params = json.loads((checkpoints[arch, "new"] / "config.json").read_text())["rope_parameters"]
    assert new.rope_theta == params["rope_theta"]
    assert (new.rope_scaling.kind if new.rope_scaling else "default") == params["rope_type"]


@pytest.mark.parametrize("arch", ["llama-3.2-tied", "qwen2-moe", "mistral-nemo"])
def test_greedy_generation_stops_on_every_eos(
    checkpoints: dict[tuple[str, str], Path], arch: str, tmp_path: Path
) -> None:
    directory = tmp_path / arch
    shutil.copytree(checkpoints[arch, "new"], directory)
    hf = _hf_model(directory)
    engine = _engine(directory, batch=1)
    k: int | None = None
    for seed in range(8):  # a prompt whose greedy run reaches a new token after a few steps
        prompt = [1, *torch.randint(3, VOCAB, (6,), generator=torch.Generator().manual_seed(seed))]
        prompt = [int(t) for t in prompt]
        with torch.no_grad():
            free = hf.generate(
                torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None
            )[0, len(prompt) :].tolist()
        res = engine.generate([prompt], 12, ignore_eos=True, warmup=False)
        assert list(res.tokens[0]) == free  # identical greedy tokens
        k = next((i for i in range(3, 12) if free[i] not in free[:i]), None)
        if k is not None:
            break
    assert k is not None, "no prompt with a later stop token"
    # An EOS list from generation_config.json (config.json keeps eos 2): a token greedy
    # reaches after a few steps, and not before, ends it there.
    stop = free[k]
    H.set_eos(directory, [2, stop])
    hf = _hf_model(directory)
    with torch.no_grad():
        want = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[
            0, len(prompt) :
        ].tolist()
    assert want == free[: k + 1]
    engine = _engine(directory, batch=1)
    assert engine.cfg.eos_token_ids == (2, stop)
    res = engine.generate([prompt], 12, ignore_eos=False, warmup=False)
    assert list(res.tokens[0]) == want


def test_tied_checkpoint_that_also_stores_the_head(
    checkpoints: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    directory = tmp_path / "tied"
    shutil.copytree(checkpoints["llama-3.2-tied", "new"], directory)
    tensors = load_file(str(directory / "model.safetensors"))
    assert "lm_head.weight" not in tensors
    ids = [5, 6, 7, 8]
    # The same values as the embedding (the usual case), then different ones: transformers
    # unties the head then and uses the stored one, and so must the engine.
    for head in (tensors["model.embed_tokens.weight"].clone(), torch.randn(VOCAB, 64) / 8):
        tensors["lm_head.weight"] = head
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
        hf = _hf_model(directory)
        engine = _engine(directory, batch=1)
        with torch.no_grad():
            got = engine.model.forward(torch.tensor([ids]))[0, -1]
        assert _rel(got, _hf_last(hf, ids)) < RTOL


# ---------------------------------------------------------------------- served text


@contextmanager
def _serve(directory: Path, *, slots: int = 4) -> Iterator[str]:
    """``perwatt serve``'s wiring (engine, serving tokenizer, EOS ids, batcher, app) on a free
    loopback port, in this process."""
    import uvicorn

    engine = _engine(directory, batch=slots, seq_len=128)
    tokenizer = serving_tokenizer(engine.tokenizer)
    batcher = Batcher(
        engine, num_slots=slots, max_seq_len=128, eos_token_ids=_eos_ids(engine, tokenizer)
    )
    batcher.start()
    app = OpenAIServer(
        batcher,
        tokenizer,
        model_name="ck",
        max_seq_len=128,
        vocab_size=engine.cfg.vocab_size,
    ).app()
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        batcher.stop()
        sock.close()


def _stream_text(url: str, path: str, body: dict[str, Any]) -> tuple[str, list[str], str | None]:
    pieces: list[str] = []
    finish = None
    with httpx.stream("POST", f"{url}{path}", json={**body, "stream": True}, timeout=60) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choice = json.loads(line[6:])["choices"][0]
            piece = choice["delta"].get("content") if "delta" in choice else choice["text"]
            pieces.append(piece or "")
            finish = choice["finish_reason"] or finish
    return "".join(pieces), pieces, finish


def _checkpoint_with_tokenizer(
    root: Path, arch: str, build: Any, *, seed: int = 3, mute: range | None = None
) -> tuple[Path, Any, Any]:
    """A checkpoint whose vocabulary is the tokenizer's (tokenizer files copied in). Ids in
    ``mute`` get a zero LM-head row, so random weights (almost) never pick them."""
    from safetensors.torch import load_file, save_file

    tok_dir = build(root / "tok")
    ref_tok = transformers.AutoTokenizer.from_pretrained(str(tok_dir))
    directory = H.save_checkpoint(
        H.ARCHS[arch],
        root / "ck",
        vocab_size=len(ref_tok),
        bos_token_id=ref_tok.bos_token_id,
        eos_token_id=ref_tok.eos_token_id,
        seed=seed,
    )
    if mute is not None:
        path = directory / "model.safetensors"
        tensors = load_file(str(path))
        tensors["lm_head.weight"][mute.start : mute.stop] = 0.0
        save_file(tensors, str(path), metadata={"format": "pt"})
    for f in tok_dir.iterdir():
        shutil.copy(f, directory / f.name)
    return directory, ref_tok, _hf_model(directory)


def test_served_chat_is_transformers_greedy_text(tmp_path: Path) -> None:
    directory, ref_tok, hf = _checkpoint_with_tokenizer(tmp_path, "llama-3.1", H.byte_level_bpe)
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "How many joules in a watt-hour? €"},
    ]
    prompt = ref_tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    prompt = list(prompt["input_ids"])
    with torch.no_grad():
        free = hf.generate(
            torch.tensor([prompt]), max_new_tokens=16, do_sample=False, eos_token_id=None
        )[0, len(prompt) :].tolist()
    # EOS list: the tokenizer's <|eot_id|>, config's, and a token greedy reaches later on.
    stop = next(t for i, t in enumerate(free) if i >= 3 and t not in free[:i])
    H.set_eos(directory, [ref_tok.convert_tokens_to_ids("<|end_of_text|>"), stop])
    hf = _hf_model(directory)
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False)
    gen = out[0, len(prompt) :].tolist()
    assert gen[-1] == stop and len(gen) < 16  # transformers stopped on the listed EOS
    want = ref_tok.decode(gen, skip_special_tokens=True)
    body = {"model": "ck", "messages": messages, "max_tokens": 16, "temperature": 0}
    with _serve(directory) as url:
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["choices"][0]["message"]["content"] == want
        assert doc["choices"][0]["finish_reason"] == "stop"
        assert doc["usage"] == {
            "prompt_tokens": len(prompt),
            "completion_tokens": len(gen),
            "total_tokens": len(prompt) + len(gen),
        }
        text, pieces, finish = _stream_text(url, "/v1/chat/completions", body)
        assert text == want and finish == "stop"
        if "\ufffd" not in want:
            assert not any("\ufffd" in p for p in pieces)
        bad = {**body, "messages": [messages[1], messages[1]]}
        r = httpx.post(f"{url}/v1/chat/completions", json=bad, timeout=60)
        assert r.status_code == 400 and "alternate" in r.json()["error"]["message"]


def test_served_completion_keeps_sentencepiece_leading_space(tmp_path: Path) -> None:
    directory, ref_tok, hf = _checkpoint_with_tokenizer(
        tmp_path, "mistral", H.sentencepiece_bpe, seed=5, mute=range(3, 259)
    )  # byte pieces muted: random bytes are invalid UTF-8, which decoders render differently
    prompt_text = "The quick brown fox jumps over the"
    prompt = ref_tok(prompt_text).input_ids
    with torch.no_grad():
        gen = hf.generate(
            torch.tensor([prompt]), max_new_tokens=10, do_sample=False, eos_token_id=None
        )[0, len(prompt) :].tolist()
    whole = ref_tok.decode(prompt + gen, skip_special_tokens=True)
    head = ref_tok.decode(prompt, skip_special_tokens=True)
    body = {"model": "ck", "prompt": prompt_text, "max_tokens": 10, "temperature": 0}
    body["ignore_eos"] = True
    with _serve(directory) as url:
        r = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        got = r.json()["choices"][0]["text"]
        assert r.json()["usage"]["prompt_tokens"] == len(prompt)  # BOS from the post-processor
        text, _, _ = _stream_text(url, "/v1/completions", body)
    assert got == text
    if "\ufffd" in whole or not whole.startswith(head):
        pytest.skip("random weights produced invalid UTF-8 byte pieces (see test_tokenizer)")
    assert got == whole[len(head) :]
    if gen and ref_tok.convert_ids_to_tokens(gen[0]).startswith("\u2581"):
        assert got.startswith(" ")  # the first word's space survives


def test_checkpoint_without_tokenizer_uses_config_ids(
    checkpoints: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    # No tokenizer file: the byte fallback takes BOS and every EOS from the checkpoint, and
    # the server stops on exactly those (not on a made-up 257, and BOS is not 256).
    directory = tmp_path / "ck"
    shutil.copytree(checkpoints["llama-2", "new"], directory)
    H.set_eos(directory, [2, 9])
    engine = _engine(directory, batch=1)
    tokenizer = serving_tokenizer(engine.tokenizer)
    assert engine.tokenizer.kind == "byte"
    assert _eos_ids(engine, tokenizer) == [2, 9]
    assert tokenizer.encode("A") == [1, 65]
