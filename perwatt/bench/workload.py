"""Workloads: what prompts to send and how many tokens to ask for.

Three kinds, all repeatable with a seed:

* **synthetic** — prompts of about ``input_len`` tokens, ``output_len`` tokens asked for, lengths
  fixed or drawn from a distribution (``fixed``, ``uniform:R`` = uniform on
  ``[L(1-R), L(1+R)]`` like vLLM's ``--random-range-ratio``, ``normal:CV``, ``lognormal:SIGMA``
  with the median at L). Prompts are random words from a list of common English words that are
  one token each (with the leading space) in the GPT-2/Llama/Mistral BPE vocabularies, so a
  tokenizer sees about N tokens for N words. It is *approximate*: chat templates add their own
  tokens, and a rare merge can split differently. The result's ``total_input_tokens`` is exact
  only when the server reports ``usage`` (the record says which). Random words per prompt also
  keep prefix caching from turning the benchmark into a cache benchmark.
* **sharegpt** — the ShareGPT JSON format (``[{"conversations": [{"from": "human", "value": …},
  {"from": "gpt", "value": …}, …]}, …]``): first turn is the prompt, the reply's length (about
  4/3 tokens per word) is the output length unless ``--output-len`` overrides it. As in
  vLLM's benchmark, conversations with fewer than 4 prompt or output tokens, a prompt over 1024
  or a total over 2048 tokens are filtered out.
* **jsonl** — one object per line, ``{"prompt": str, "output_len": int (optional)}``.

Bad input, by severity: a file that cannot be read or parsed as a whole (not JSON, a JSONL line
that is not JSON) raises :class:`DataFormatError` with ``file:line``: the file is broken and any
number from it would be suspect. A row that parses but is unusable (no prompt, a non-positive
``output_len``) is skipped, counted and reported in the result (``workload.skipped_rows`` with the
first few reasons); a file with no usable row is an error.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from perwatt.errors import ConfigError, DataFormatError, FieldError

# Very frequent English words. BPE vocabularies trained on English text (GPT-2, Llama, Mistral)
# merge such words, with their leading space, into single tokens; this list was not verified
# against each tokenizer here, hence "about N tokens" everywhere.
WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        [
            "the",
            "of",
            "and",
            "to",
            "in",
            "is",
            "was",
            "for",
            "on",
            "that",
            "with",
            "as",
            "by",
            "at",
            "from",
            "his",
            "it",
            "an",
            "were",
            "are",
            "which",
            "this",
            "be",
            "has",
            "or",
            "had",
            "first",
            "one",
            "their",
            "its",
            "new",
            "after",
            "but",
            "who",
            "not",
            "they",
            "have",
            "her",
            "she",
            "two",
            "been",
            "other",
            "when",
            "there",
            "all",
            "during",
            "into",
            "school",
            "time",
            "may",
            "years",
            "more",
            "most",
            "only",
            "over",
            "city",
            "some",
            "world",
            "would",
            "where",
            "later",
            "up",
            "such",
            "used",
            "many",
            "can",
            "state",
            "about",
            "national",
            "out",
            "known",
            "university",
            "united",
            "then",
            "made",
            "year",
            "three",
            "also",
            "some",
            "people",
            "between",
            "team",
            "family",
            "film",
            "him",
            "while",
            "since",
            "under",
            "both",
            "three",
            "game",
            "well",
            "season",
            "part",
            "series",
            "through",
            "house",
            "before",
            "each",
            "group",
            "found",
            "work",
            "day",
            "name",
            "life",
            "second",
            "public",
            "country",
            "music",
            "small",
            "great",
            "number",
            "early",
            "high",
            "last",
            "government",
            "water",
            "order",
            "major",
            "line",
            "best",
            "power",
            "great",
            "place",
            "local",
            "played",
            "however",
            "long",
            "several",
            "war",
            "area",
            "town",
            "until",
            "against",
            "three",
            "called",
            "end",
            "home",
            "major",
            "left",
            "took",
            "general",
            "became",
            "million",
            "south",
            "north",
            "west",
            "east",
            "church",
            "back",
            "based",
            "four",
            "point",
            "against",
            "show",
        ]
    )
)

WorkloadKind = Literal["synthetic", "sharegpt", "jsonl"]
MAX_BAD_ROW_EXAMPLES = 5
#: Longest prompt or answer asked for, in tokens (2^20): past any served model's context window
#: but one, and 100x a long benchmark prompt. A bigger value is a typo, and building it took
#: minutes of the client's time and gigabytes before a single request went out.
MAX_TOKENS_PER_REQUEST = 1 << 20
#: Most requests in one run.
MAX_NUM_PROMPTS = 1_000_000
#: Most words of synthetic prompt text in one run (~6 bytes each: ~300 MB; ~1 s per million
#: words to draw on a 2-core VM).
MAX_SYNTHETIC_WORDS = 50_000_000
#: Largest normal:CV / lognormal:SIGMA spread.
MAX_SPREAD = 10.0


def check_synthetic_size(*, num_prompts: int, input_len: int, output_len: int | None) -> None:
    """Refuse a synthetic workload too large to build or to send (one line naming the field;
    the CLI names its flag)."""
    if not 1 <= num_prompts <= MAX_NUM_PROMPTS:
        raise FieldError(
            f"{{f}} must be in 1..{MAX_NUM_PROMPTS:,}, got {num_prompts:,}", f="num_prompts"
        )
    for name, n in (("input_len", input_len), ("output_len", output_len)):
        if n is not None and not 1 <= n <= MAX_TOKENS_PER_REQUEST:
            raise FieldError(
                f"{{f}} must be in 1..{MAX_TOKENS_PER_REQUEST:,} tokens, got {n:,}", f=name
            )
    if num_prompts * input_len > MAX_SYNTHETIC_WORDS:
        raise FieldError(
            f"{{n}} {num_prompts:,} x {{i}} {input_len:,} = "
            f"{num_prompts * input_len:,} prompt tokens, more than {MAX_SYNTHETIC_WORDS:,} "
            "(the prompts alone would take gigabytes to build); use fewer or shorter prompts",
            n="num_prompts",
            i="input_len",
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestSpec:
    """One request of a workload."""

    index: int
    prompt: str
    #: approximate prompt tokens (exact only once the server reports usage)
    input_tokens: int
    #: max_tokens to ask for; None lets the server decide
    output_len: int | None

    def __post_init__(self) -> None:
        if self.output_len is not None and self.output_len < 1:
            raise ValueError(f"output_len must be >= 1, got {self.output_len}")


@dataclass(frozen=True, slots=True, kw_only=True)
class LengthDist:
    """A length distribution around a nominal length L."""

    kind: Literal["fixed", "uniform", "normal", "lognormal"] = "fixed"
    param: float = 0.0

    def __post_init__(self) -> None:
        if self.kind == "uniform" and not 0.0 <= self.param < 1.0:
            raise ConfigError(f"uniform:R needs 0 <= R < 1, got {self.param}")
        if self.kind in ("normal", "lognormal") and not 0 <= self.param <= MAX_SPREAD:
            # inf made every draw infinite (an OverflowError deep in the workload builder).
            raise ConfigError(f"{self.kind}:X needs 0 <= X <= {MAX_SPREAD:g}, got {self.param}")

    @classmethod
    def parse(cls, spec: str) -> LengthDist:
        """``fixed`` | ``uniform:R`` | ``normal:CV`` | ``lognormal:SIGMA``."""
        name, _, arg = spec.strip().partition(":")
        if name == "fixed" and not arg:
            return cls()
        if name in ("uniform", "normal", "lognormal"):
            try:
                return cls(kind=name, param=float(arg))  # type: ignore[arg-type]
            except ValueError:
                pass
        raise ConfigError(
            f"length distribution {spec!r} not understood; use fixed, uniform:R (0<=R<1), "
            "normal:CV or lognormal:SIGMA"
        )

    def sample(self, rng: random.Random, nominal: int) -> int:
        """A length around ``nominal``, at least 1 and at most :data:`MAX_TOKENS_PER_REQUEST`."""
        if self.kind == "fixed":
            return nominal
        if self.kind == "uniform":
            lo = max(1, math.floor(nominal * (1 - self.param)))
            hi = max(lo, math.ceil(nominal * (1 + self.param)))
            return min(MAX_TOKENS_PER_REQUEST, rng.randint(lo, hi))
        if self.kind == "normal":
            x = rng.gauss(nominal, nominal * self.param)
        else:
            # exp() of a far tail draw overflows; the cap below applies anyway.
            x = nominal * math.exp(min(50.0, rng.gauss(0.0, self.param)))
        return max(1, min(MAX_TOKENS_PER_REQUEST, round(x)))

    def describe(self) -> str:
        return "fixed" if self.kind == "fixed" else f"{self.kind}:{self.param:g}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    """The requests of one run and how they were made (``describe()`` goes into the result)."""

    kind: WorkloadKind
    requests: tuple[RequestSpec, ...]
    #: ask the server to generate exactly output_len tokens (ignore_eos / min_tokens)
    fixed_output: bool
    source: str | None = None
    seed: int = 0
    rows_read: int = 0
    skipped_rows: int = 0
    filtered_rows: int = 0
    bad_row_examples: tuple[str, ...] = ()
    repeated: bool = False
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.requests:
            raise ConfigError("a workload needs at least one request")

    def describe(self) -> dict[str, Any]:
        ins = [r.input_tokens for r in self.requests]
        outs = [r.output_len for r in self.requests if r.output_len is not None]
        return {
            "kind": self.kind,
            "source": self.source,
            "seed": self.seed,
            "num_requests": len(self.requests),
            "fixed_output": self.fixed_output,
            "input_tokens_approx_mean": sum(ins) / len(ins),
            "input_tokens_note": "approximate (word list); exact only where the server reports usage",
            "output_len_mean": sum(outs) / len(outs) if outs else None,
            "rows_read": self.rows_read,
            "skipped_rows": self.skipped_rows,
            "bad_row_examples": list(self.bad_row_examples),
            "filtered_rows": self.filtered_rows,
            "repeated": self.repeated,
            **self.params,
        }


def approx_tokens(text: str) -> int:
    """About 4/3 tokens per English word (OpenAI's rule of thumb); at least 1 for any text."""
    words = len(text.split())
    return max(1 if text.strip() else 0, round(words * 4 / 3))


def synthetic_prompt(rng: random.Random, n_tokens: int) -> str:
    """``n_tokens`` random words from the word list (one word ≈ one token)."""
    return " ".join(rng.choice(WORDS) for _ in range(n_tokens))


def synthetic(
    *,
    num_prompts: int,
    input_len: int,
    output_len: int,
    seed: int = 0,
    input_dist: LengthDist | None = None,
    output_dist: LengthDist | None = None,
) -> Workload:
    """Random-word prompts of about ``input_len`` tokens asking for ``output_len`` tokens."""
    check_synthetic_size(num_prompts=num_prompts, input_len=input_len, output_len=output_len)
    din = input_dist or LengthDist()
    dout = output_dist or LengthDist()
    rng = random.Random(seed)
    reqs = []
    for i in range(num_prompts):
        n_in = din.sample(rng, input_len)
        n_out = dout.sample(rng, output_len)
        reqs.append(
            RequestSpec(
                index=i, prompt=synthetic_prompt(rng, n_in), input_tokens=n_in, output_len=n_out
            )
        )
    return Workload(
        kind="synthetic",
        requests=tuple(reqs),
        fixed_output=True,
        seed=seed,
        params={
            "input_len": input_len,
            "output_len": output_len,
            "input_dist": din.describe(),
            "output_dist": dout.describe(),
        },
    )


def _read_text(path: Path) -> str:
    try:
        # utf-8-sig: files saved by Windows editors start with a BOM that json.loads rejects.
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataFormatError(f"{path}: no such workload file") from None
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}: not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise DataFormatError(f"{path}: cannot read ({e.strerror or e})") from None


@dataclass(slots=True)
class _Rows:
    """Usable (prompt, output_len) rows plus the bookkeeping of what was dropped."""

    rows: list[tuple[str, int | None]] = field(default_factory=list)
    read: int = 0
    skipped: int = 0
    filtered: int = 0
    examples: list[str] = field(default_factory=list)

    def skip(self, where: str, why: str) -> None:
        self.skipped += 1
        if len(self.examples) < MAX_BAD_ROW_EXAMPLES:
            self.examples.append(f"{where}: {why}")


def _parse_output_len(raw: object) -> int | str | None:
    """An output length, None when absent, or a reason string when invalid."""
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int):
        return f"output_len {raw!r} is not an integer"
    if raw < 1:
        return f"output_len {raw} is not positive"
    return raw


def _jsonl_rows(path: Path) -> _Rows:
    out = _Rows()
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        out.read += 1
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(
                f"{path}:{n}: not valid JSON ({e.msg}); fix or remove the line"
            ) from None
        where = f"{path}:{n}"
        if not isinstance(obj, dict):
            out.skip(where, "not a JSON object")
            continue
        prompt = obj.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            out.skip(where, "missing or empty 'prompt' string")
            continue
        olen = _parse_output_len(obj.get("output_len", obj.get("max_tokens")))
        if isinstance(olen, str):
            out.skip(where, olen)
            continue
        out.rows.append((prompt, olen))
    return out


def _sharegpt_rows(path: Path) -> _Rows:
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataFormatError(
            f"{path}:{e.lineno}: not valid JSON ({e.msg}); ShareGPT files are one JSON list"
        ) from None
    if not isinstance(data, list):
        raise DataFormatError(f"{path}: expected a JSON list of conversations (ShareGPT format)")
    out = _Rows()
    for i, conv in enumerate(data):
        out.read += 1
        where = f"{path}[{i}]"
        turns = conv.get("conversations") if isinstance(conv, dict) else None
        if not isinstance(turns, list) or len(turns) < 2:
            out.skip(where, "needs a 'conversations' list with at least 2 turns")
            continue
        t0, t1 = turns[0], turns[1]
        if not (isinstance(t0, dict) and isinstance(t1, dict)):
            out.skip(where, "turns must be objects with 'value'")
            continue
        prompt, reply = t0.get("value"), t1.get("value")
        if not isinstance(prompt, str) or not isinstance(reply, str):
            out.skip(where, "turn 'value' must be a string")
            continue
        p_tok, o_tok = approx_tokens(prompt), approx_tokens(reply)
        # vLLM benchmark_dataset.is_valid_sequence: min 4 tokens each, prompt <= 1024,
        # prompt + output <= 2048.
        if p_tok < 4 or o_tok < 4 or p_tok > 1024 or p_tok + o_tok > 2048:
            out.filtered += 1
            continue
        out.rows.append((prompt, o_tok))
    return out


def from_file(
    path: str | Path,
    *,
    num_prompts: int,
    seed: int = 0,
    output_len: int | None = None,
    fmt: Literal["auto", "sharegpt", "jsonl"] = "auto",
) -> Workload:
    """Read a ShareGPT JSON or JSONL prompt file and sample ``num_prompts`` requests from it.

    Rows are shuffled with ``seed``; a file with fewer rows than ``num_prompts`` is cycled
    (``repeated`` in the description). ``output_len`` overrides the per-row lengths.
    """
    if not 1 <= num_prompts <= MAX_NUM_PROMPTS:
        raise ConfigError(f"--num-prompts must be in 1..{MAX_NUM_PROMPTS:,}, got {num_prompts:,}")
    if output_len is not None and not 1 <= output_len <= MAX_TOKENS_PER_REQUEST:
        raise ConfigError(
            f"--output-len must be in 1..{MAX_TOKENS_PER_REQUEST:,} tokens, got {output_len:,}"
        )
    path = Path(path)
    kind: Literal["sharegpt", "jsonl"]
    if fmt == "auto":
        head = _read_text(path).lstrip()[:1]
        kind = "sharegpt" if head == "[" else "jsonl"
    else:
        kind = fmt
    rows = _sharegpt_rows(path) if kind == "sharegpt" else _jsonl_rows(path)
    if not rows.rows:
        if rows.read == 0:
            raise DataFormatError(
                f"{path}: the file has no rows; give a ShareGPT JSON list or JSONL prompt rows"
            )
        # Say how many were dropped for length, not only the malformed ones: a file of valid but
        # too-short conversations otherwise reads as if only its bad rows were the problem.
        parts = list(rows.examples)
        if rows.filtered:
            parts.append(f"{rows.filtered} filtered out by length")
        why = "; ".join(parts)
        raise DataFormatError(f"{path}: no usable row ({rows.read} read; {why})")
    rng = random.Random(seed)
    order = list(range(len(rows.rows)))
    rng.shuffle(order)
    reqs = []
    for i in range(num_prompts):
        prompt, olen = rows.rows[order[i % len(order)]]
        reqs.append(
            RequestSpec(
                index=i,
                prompt=prompt,
                input_tokens=approx_tokens(prompt),
                output_len=output_len if output_len is not None else olen,
            )
        )
    return Workload(
        kind=kind,
        requests=tuple(reqs),
        fixed_output=all(r.output_len is not None for r in reqs),
        source=str(path),
        seed=seed,
        rows_read=rows.read,
        skipped_rows=rows.skipped,
        filtered_rows=rows.filtered,
        bad_row_examples=tuple(rows.examples),
        repeated=num_prompts > len(rows.rows),
        params={"output_len_override": output_len},
    )
