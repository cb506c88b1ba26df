from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from perwatt.bench.workload import (
    WORDS,
    LengthDist,
    approx_tokens,
    from_file,
    synthetic,
)
from perwatt.errors import ConfigError, DataFormatError


def test_synthetic_fixed_lengths_and_seed() -> None:
    a = synthetic(num_prompts=5, input_len=32, output_len=16, seed=3)
    b = synthetic(num_prompts=5, input_len=32, output_len=16, seed=3)
    c = synthetic(num_prompts=5, input_len=32, output_len=16, seed=4)
    assert a.requests == b.requests
    assert a.requests != c.requests
    for r in a.requests:
        assert len(r.prompt.split()) == 32 == r.input_tokens
        assert r.output_len == 16
        assert set(r.prompt.split()) <= set(WORDS)
    assert a.fixed_output
    d = a.describe()
    assert d["kind"] == "synthetic" and d["num_requests"] == 5
    assert "approximate" in d["input_tokens_note"]
    # Different prompts: prefix caching cannot turn this into a cache benchmark.
    assert len({r.prompt for r in a.requests}) == 5


@pytest.mark.parametrize("spec", ["uniform:0.5", "normal:0.2", "lognormal:0.3"])
def test_length_distributions(spec: str) -> None:
    dist = LengthDist.parse(spec)
    w = synthetic(num_prompts=300, input_len=100, output_len=50, seed=1, input_dist=dist)
    lens = [r.input_tokens for r in w.requests]
    assert min(lens) >= 1
    assert len(set(lens)) > 10
    assert 80 < sum(lens) / len(lens) < 125
    if spec.startswith("uniform"):
        assert min(lens) >= 50 and max(lens) <= 150


def test_length_dist_parse_errors() -> None:
    assert LengthDist.parse("fixed").sample(random.Random(0), 7) == 7
    for bad in ("uniform", "uniform:2", "gauss:1", "normal:x", "fixed:1"):
        with pytest.raises(ConfigError):
            LengthDist.parse(bad)


def test_synthetic_bad_args() -> None:
    with pytest.raises(ConfigError, match="num_prompts"):
        synthetic(num_prompts=0, input_len=1, output_len=1)
    with pytest.raises(ConfigError, match="input_len"):
        synthetic(num_prompts=1, input_len=0, output_len=1)


def test_jsonl(tmp_path: Path) -> None:
    p = tmp_path / "p.jsonl"
    p.write_text(
        '{"prompt": "hello there friend", "output_len": 5}\n'
        "\n"
        '{"prompt": "second prompt"}\n'
        '{"prompt": "", "output_len": 3}\n'
        '{"prompt": "x", "output_len": -2}\n'
        '{"prompt": "x", "output_len": "7"}\n'
        "[1, 2]\n"
    )
    w = from_file(p, num_prompts=4, seed=0)
    assert w.kind == "jsonl"
    assert w.rows_read == 6 and w.skipped_rows == 4
    assert len(w.bad_row_examples) == 4
    assert f"{p}:4: missing or empty 'prompt'" in w.bad_row_examples[0]
    assert any(":5: output_len -2 is not positive" in e for e in w.bad_row_examples)
    assert w.repeated  # 2 usable rows cycled to 4 requests
    assert {r.prompt for r in w.requests} == {"hello there friend", "second prompt"}
    assert not w.fixed_output  # one row has no output_len
    w2 = from_file(p, num_prompts=2, seed=0, output_len=9)
    assert all(r.output_len == 9 for r in w2.requests) and w2.fixed_output


def test_jsonl_syntax_error_names_line(tmp_path: Path) -> None:
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "ok"}\n{"prompt": oops}\n')
    with pytest.raises(DataFormatError, match=r"p\.jsonl:2: not valid JSON"):
        from_file(p, num_prompts=1)


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    row = {"prompt": "one two three four five", "output_len": 4}
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(row).encode() + b"\n")
    assert from_file(p, num_prompts=1).skipped_rows == 0
    sg = tmp_path / "bom.json"
    long = " ".join(["word"] * 30)
    sg.write_bytes(b"\xef\xbb\xbf" + json.dumps([_conv(long, long)]).encode())
    assert from_file(sg, num_prompts=1).requests[0].output_len > 0


def test_no_usable_rows(tmp_path: Path) -> None:
    p = tmp_path / "p.jsonl"
    p.write_text('{"text": "no prompt key"}\n')
    with pytest.raises(DataFormatError, match="no usable row"):
        from_file(p, num_prompts=1)
    with pytest.raises(DataFormatError, match="no such workload file"):
        from_file(tmp_path / "missing.jsonl", num_prompts=1)
    for name, text in (("e.jsonl", ""), ("e.json", "[]"), ("blank.jsonl", "\n\n")):
        (tmp_path / name).write_text(text)
        with pytest.raises(DataFormatError, match=r"the file has no rows"):
            from_file(tmp_path / name, num_prompts=1)
    short = tmp_path / "short.json"
    short.write_text(json.dumps([_conv("hi", "hello there"), {"conversations": []}]))
    with pytest.raises(DataFormatError, match=r"2 read; .*at least 2 turns; 1 filtered out"):
        from_file(short, num_prompts=1)


def _conv(human: str, gpt: str) -> dict[str, object]:
    return {"conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]}


def test_sharegpt(tmp_path: Path) -> None:
    long = " ".join(["word"] * 30)
    data = [
        _conv(long, long),
        _conv("too short", long),  # filtered: prompt under 4 tokens
        _conv(" ".join(["w"] * 2000), "reply " * 10),  # filtered: prompt over 1024
        {"conversations": [{"from": "human", "value": "only one turn"}]},  # bad row
        "not an object",  # bad row
        _conv("what is the capital of france today", "paris is the capital of france"),
    ]
    p = tmp_path / "sg.json"
    p.write_text(json.dumps(data))
    w = from_file(p, num_prompts=2, seed=1)
    assert w.kind == "sharegpt"
    assert w.filtered_rows == 2 and w.skipped_rows == 2 and w.rows_read == 6
    assert sorted(r.output_len or 0 for r in w.requests) == sorted(
        [approx_tokens(long), approx_tokens("paris is the capital of france")]
    )
    assert w.fixed_output and not w.repeated


def test_sharegpt_not_a_list(tmp_path: Path) -> None:
    p = tmp_path / "sg.json"
    p.write_text("[1, 2")
    with pytest.raises(DataFormatError, match="not valid JSON"):
        from_file(p, num_prompts=1, fmt="sharegpt")
    p.write_text('{"a": 1}')
    with pytest.raises(DataFormatError, match="JSON list"):
        from_file(p, num_prompts=1, fmt="sharegpt")


def test_approx_tokens() -> None:
    assert approx_tokens("") == 0
    assert approx_tokens("a") == 1
    assert approx_tokens("one two three") == 4
