"""Tokenizers against transformers' own: encoding, special tokens, chat templates, and the
server's incremental detokenizer on byte-level and SentencePiece-style vocabularies."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from perwatt.engine.server import IncrementalDetokenizer, VisibleByteTokenizer, render_chat
from perwatt.engine.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer
from tests.engine import hf_checkpoints as H

pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

TEXTS = [
    "Hello world",
    " Hello  world ",
    "naïve café, ümlaut ß",
    "€ 🙂 日本語",
    "The quick brown fox.\nNew line\ttab",
    "",
]

BUILDERS: dict[str, Callable[[Path], Path]] = {
    "byte-level": H.byte_level_bpe,
    "qwen-style": H.qwen_style_bpe,
    "sentencepiece": H.sentencepiece_bpe,
}


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokenizers")
    dirs = {name: build(root / name) for name, build in BUILDERS.items()}
    dirs["sentencepiece-config-template"] = H.sentencepiece_bpe(
        root / "sp-config", template_in_config=True
    )
    return dirs


def _hf(directory: Path) -> Any:
    return transformers.AutoTokenizer.from_pretrained(str(directory))


@pytest.mark.parametrize("name", [*BUILDERS, "sentencepiece-config-template"])
def test_encode_decode_match_transformers(tokenizer_dirs: dict[str, Path], name: str) -> None:
    ours = load_tokenizer(tokenizer_dirs[name], vocab_size=1000)
    ref = _hf(tokenizer_dirs[name])
    assert ours.kind == "hf-tokenizers"
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == ref(text).input_ids, text  # BOS exactly as the post-processor adds it
        assert ours.encode(text, add_bos=False) == ref(text, add_special_tokens=False).input_ids
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)


def test_bos_follows_the_tokenizer_not_config(tokenizer_dirs: dict[str, Path]) -> None:
    # Qwen-style tokenizers add no BOS: a config.json bos_token_id must not sneak one in.
    qwen = load_tokenizer(tokenizer_dirs["qwen-style"], vocab_size=1000, bos_id=0)
    assert qwen.encode("Hello") == _hf(tokenizer_dirs["qwen-style"])("Hello").input_ids
    assert qwen.encode("Hello")[0] != 0
    llama = load_tokenizer(tokenizer_dirs["byte-level"], vocab_size=1000, bos_id=7)
    assert llama.encode("Hello")[0] == llama.bos_id == 0  # <|begin_of_text|>, not 7


MESSAGES = [
    [{"role": "user", "content": "Hi there € x"}],
    [
        {"role": "system", "content": 'Be <brief> & "exact"'},
        {"role": "user", "content": " What is a joule? "},
        {"role": "assistant", "content": "A unit of energy."},
        {"role": "user", "content": "And a watt?"},
    ],
]


@pytest.mark.parametrize("name", [*BUILDERS, "sentencepiece-config-template"])
@pytest.mark.parametrize("messages", MESSAGES, ids=["one", "system"])
def test_chat_template_matches_transformers(
    tokenizer_dirs: dict[str, Path], name: str, messages: list[dict[str, str]]
) -> None:
    ours = load_tokenizer(tokenizer_dirs[name], vocab_size=1000)
    assert isinstance(ours, HFTokenizer) and ours.chat_template is not None
    ref = _hf(tokenizer_dirs[name])
    if name.startswith("sentencepiece") and messages[0]["role"] == "system":
        with pytest.raises(ValueError, match="Only user and assistant roles"):
            render_chat(ours, messages)
        return
    text = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ours.chat_template.render(messages) == text
    want = ref.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    assert render_chat(ours, messages) == list(want["input_ids"])


def test_chat_template_refusal_and_sandbox(tokenizer_dirs: dict[str, Path]) -> None:
    ours = load_tokenizer(tokenizer_dirs["byte-level"], vocab_size=1000)
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(ValueError, match="roles must alternate"):
        render_chat(ours, bad)
    from perwatt.engine.chat_template import ChatTemplate

    evil = ChatTemplate("{{ messages.__class__.__mro__ }}", {}, origin="test")
    with pytest.raises(ValueError, match="refused"):
        evil.render([{"role": "user", "content": "x"}])
    with pytest.raises(ValueError, match="refused"):  # immutable: templates cannot mutate input
        ChatTemplate("{{ messages.append(1) }}", {}, origin="test").render([])


def test_checkpoint_without_template_uses_the_plain_one(tmp_path: Path) -> None:
    d = H.qwen_style_bpe(tmp_path / "tok")
    (d / "chat_template.jinja").unlink()
    tok = load_tokenizer(d, vocab_size=1000)
    ids = render_chat(tok, [{"role": "user", "content": "hi"}])
    assert tok.decode(ids) == "<|user|>\nhi\n<|assistant|>\n"


def _continuation(tok: Any, prompt: list[int], gen: list[int]) -> str:
    """What a completion of ``gen`` after ``prompt`` reads as: the text the whole sequence
    decodes to, past the prompt's text."""
    whole = tok.decode(prompt + gen)
    head = tok.decode(prompt)
    assert whole.startswith(head)
    return whole[len(head) :]


@pytest.mark.parametrize("name", list(BUILDERS))
def test_incremental_detokenizer_matches_full_decode(
    tokenizer_dirs: dict[str, Path], name: str
) -> None:
    tok = load_tokenizer(tokenizer_dirs[name], vocab_size=1000)
    assert isinstance(tok, HFTokenizer)
    rng = random.Random(0)
    for trial in range(40):
        prompt = tok.encode(rng.choice(TEXTS[:5]))
        if trial % 2:  # random ids: byte tokens that split characters, specials, anything
            gen = [rng.randrange(tok.vocab_size) for _ in range(12)]
        else:
            gen = tok.encode(rng.choice(TEXTS[:5]), add_bos=False)
        whole, head = tok.decode(prompt + gen), tok.decode(prompt)
        want = whole[len(head) :]
        if name == "sentencepiece" and ("\ufffd" in whole or not whole.startswith(head)):
            # Invalid UTF-8 from random byte pieces: tokenizers' ByteFallback turns a whole run
            # of byte pieces into U+FFFDs once any of them is invalid, so even a valid "<0x6C>"
            # ("l") before an invalid "<0xFF>" decodes differently alone and in the run. No
            # incremental decoder can match that; valid text (what models emit) is checked.
            continue
        d = IncrementalDetokenizer(tok, prompt)
        deltas = [d.push(t) for t in gen]
        deltas.append(d.flush())
        assert "".join(deltas) == want, (prompt, gen)
        if "\ufffd" not in want:
            assert all("\ufffd" not in x for x in deltas)


def test_sentencepiece_first_token_keeps_its_space(tokenizer_dirs: dict[str, Path]) -> None:
    tok = load_tokenizer(tokenizer_dirs["sentencepiece"], vocab_size=1000)
    prompt = tok.encode("The quick")
    gen = tok.encode("brown fox", add_bos=False)  # "▁brown▁fox": the normalizer prepends ▁
    d = IncrementalDetokenizer(tok, prompt)
    text = "".join(d.push(t) for t in gen) + d.flush()
    assert text == " brown fox"  # without prompt context the decoder strips the first space
    d2 = IncrementalDetokenizer(tok, [tok.encode("x")[0]])  # a prompt of just BOS (special)
    assert "".join(d2.push(t) for t in gen) + d2.flush() == " brown fox"


def test_split_character_is_held_not_sent_as_replacement(
    tokenizer_dirs: dict[str, Path],
) -> None:
    tok = load_tokenizer(tokenizer_dirs["sentencepiece"], vocab_size=1000)
    ids = tok.encode("€ ok", add_bos=False)  # '€' is three byte-fallback tokens
    d = IncrementalDetokenizer(tok, tok.encode("a"))
    deltas = [d.push(t) for t in ids]
    assert deltas[:4] == [" ", "", "", "€"]  # "▁", then <0xE2> <0x82> held until <0xAC>
    assert "".join(deltas) + d.flush() == " € ok"
    assert all("\ufffd" not in x for x in deltas)


def test_byte_tokenizer_ids_come_from_config() -> None:
    # A checkpoint without a tokenizer file: BOS and EOS are config.json's, not 256/257.
    tok = ByteTokenizer(32_000, bos_id=1, eos_ids=(2, 32))
    assert tok.encode("A") == [1, 65] and tok.eos_ids == (2, 32)
    assert tok.decode([1, 65, 2]) == "A"
    served = VisibleByteTokenizer(tok)
    assert served.decode([1, 65, 300, 2]) == "A<t300>"
    assert served.eos_ids == (2, 32)
    preset = ByteTokenizer(1024)  # no ids at all: the tiny presets' 256/257
    assert preset.bos_id == 256 and preset.eos_ids == (257,)


def test_tokenizer_config_special_tokens_as_objects(tmp_path: Path) -> None:
    d = H.byte_level_bpe(tmp_path / "tok")
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["eos_token"] = {"__type": "AddedToken", "content": "<|eot_id|>", "special": True}
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = load_tokenizer(d, vocab_size=1000)
    assert tok.eos_ids == (_hf(d).convert_tokens_to_ids("<|eot_id|>"),)
