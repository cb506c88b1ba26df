"""Accuracy guard: do two servers give the same answers (e.g. BF16 reference vs FP8 candidate)?

A setting that raises tokens per joule by changing the answers is not a free win. This module
sends a fixed prompt set, with greedy decoding (``temperature=0``, ``top_p=1``, fixed
``max_tokens`` and ``seed``), to a *reference* server A and a *candidate* server B (any
OpenAI-compatible API) and reports how far B's outputs agree with A's:

* **exact match** — share of prompts whose generated text is identical.
* **greedy prefix agreement** — per prompt, the number of leading tokens both produced before
  the first difference; ``top1_agreement`` = Σ common prefix / Σ positions compared (the prefix
  plus the first diverging position). Under greedy decoding each chosen token *is* the server's
  top-1, and only positions with the same preceding text are comparable, so this is the top-1
  agreement rate up to divergence. Tokens come from the server's ``logprobs``; a server that
  returns none is compared on whitespace-separated words instead, and the report says so.
* **log-prob agreement** (when both servers return logprobs) — over the common prefix, the mean
  absolute difference of the chosen tokens' log-probabilities (nats), and ``logprob_agreement`` =
  exp(−mean |Δlogprob|), 1.0 for identical distributions. With ``top_logprobs`` it also reports an
  approximate KL(A‖B) over the tokens both servers list in their top-k (renormalised), which
  under-counts mass outside the top-k: a lower bound on a trend, not the true divergence.

Even at temperature 0 a server can be nondeterministic (batch composition changes kernels'
reduction order). ``control=True`` queries A a second time and reports A-vs-A agreement: the noise
floor B has to be judged against.

Runs are written as they go: with ``out``, the report file is rewritten (atomically, at most once
a second) with ``"status": "running"`` as prompts finish and ends ``complete``, or ``partial`` with
a ``partial_reason`` when Ctrl-C, SIGTERM or a failing server stops the run; a partial report
keeps the prompts compared so far but carries no ``accuracy`` block, so it cannot be attached to
bench results by mistake. A server that cannot be reached at all is found before any prompt is
sent.

Prompts file: JSONL, one object per line with ``"prompt"`` (text, for ``/completions``) or
``"messages"`` (for ``/chat/completions``), and an optional ``"id"``; blank lines and ``#``
comments are skipped. The report can be attached to bench results as their ``accuracy`` block
(:func:`attach_accuracy`).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import httpx

from perwatt._files import atomic_write_text, same_file
from perwatt._signals import interrupt_reason, interrupts_deferred
from perwatt.bench.client import error_message
from perwatt.bench.guard import (
    DEFAULT_THRESHOLDS,
    NO_VERDICT,
    GuardThresholds,
    GuardVerdict,
    judge,
)
from perwatt.bench.result import load_result, write_result
from perwatt.errors import ConfigError, DataFormatError, PerwattError, RemoteSourceError

Endpoint = Literal["completions", "chat"]
QualityStatus = Literal["running", "complete", "partial"]
QUALITY_SCHEMA: Final = "perwatt.bench.quality/1"
DEFAULT_MAX_TOKENS: Final = 64
DEFAULT_TOP_LOGPROBS: Final = 5
#: A running report is rewritten at most this often (each rewrite serialises every prompt so far).
CHECKPOINT_INTERVAL_S: Final = 1.0


# --------------------------------------------------------------------------- prompts
@dataclass(frozen=True, slots=True, kw_only=True)
class QualityPrompt:
    """One prompt of the fixed set: text for /completions or messages for /chat/completions."""

    id: str
    prompt: str | None = None
    messages: tuple[Mapping[str, Any], ...] | None = None

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ConfigError(f"prompt {self.id}: give exactly one of prompt or messages")


def load_prompts(path: str | Path) -> list[QualityPrompt]:
    """Read a JSONL prompt set; :class:`DataFormatError` names the file and line of a bad row."""
    path = Path(path)
    try:
        # utf-8-sig: files saved by Windows editors start with a BOM that json.loads rejects.
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except OSError as e:
        raise DataFormatError(f"{path}: cannot read prompt file ({e.strerror or e})") from e
    except UnicodeDecodeError as e:
        raise DataFormatError(
            f"{path}: not a JSONL prompt file (not UTF-8 text: {e.reason})"
        ) from None
    prompts: list[QualityPrompt] = []
    ids: set[str] = set()
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if isinstance(obj, str):
            obj = {"prompt": obj}
        if not isinstance(obj, dict):
            raise DataFormatError(f"{path}:{n}: expected an object with 'prompt' or 'messages'")
        pid = str(obj.get("id", len(prompts)))
        if pid in ids:
            raise DataFormatError(f"{path}:{n}: duplicate id {pid!r}")
        prompt, messages = obj.get("prompt"), obj.get("messages")
        if prompt is not None and not isinstance(prompt, str):
            raise DataFormatError(f"{path}:{n}: 'prompt' must be a string")
        if messages is not None and not (
            isinstance(messages, list)
            and messages
            and all(isinstance(m, dict) and "role" in m and "content" in m for m in messages)
        ):
            raise DataFormatError(
                f"{path}:{n}: 'messages' must be a non-empty list of {{role, content}} objects"
            )
        if (prompt is None) == (messages is None):
            raise DataFormatError(f"{path}:{n}: give exactly one of 'prompt' or 'messages'")
        ids.add(pid)
        prompts.append(
            QualityPrompt(
                id=pid, prompt=prompt, messages=tuple(messages) if messages is not None else None
            )
        )
    if not prompts:
        raise DataFormatError(f"{path}: no prompts (expected JSONL with 'prompt' or 'messages')")
    return prompts


# --------------------------------------------------------------------------- generation
@dataclass(frozen=True, slots=True, kw_only=True)
class Generation:
    """One greedy completion, with per-token log-probs when the server returned them."""

    text: str
    tokens: tuple[str, ...] | None = None
    logprobs: tuple[float | None, ...] | None = None
    top_logprobs: tuple[Mapping[str, float], ...] | None = None
    finish_reason: str | None = None


def _parse_completion_logprobs(lp: Any) -> tuple[Any, Any, Any]:
    """Legacy /completions shape: {tokens, token_logprobs, top_logprobs: [{tok: lp}]}."""
    if not isinstance(lp, dict) or not isinstance(lp.get("tokens"), list):
        return None, None, None
    tokens = tuple(str(t) for t in lp["tokens"])
    lps = lp.get("token_logprobs")
    logprobs = (
        tuple(None if x is None else float(x) for x in lps) if isinstance(lps, list) else None
    )
    tops = lp.get("top_logprobs")
    top = (
        tuple({str(k): float(v) for k, v in (d or {}).items()} for d in tops)
        if isinstance(tops, list)
        else None
    )
    return tokens, logprobs, top


def _parse_chat_logprobs(lp: Any) -> tuple[Any, Any, Any]:
    """Chat shape: {content: [{token, logprob, top_logprobs: [{token, logprob}]}]}."""
    if not isinstance(lp, dict) or not isinstance(lp.get("content"), list):
        return None, None, None
    items = lp["content"]
    tokens = tuple(str(i.get("token", "")) for i in items)
    logprobs = tuple(None if i.get("logprob") is None else float(i["logprob"]) for i in items)
    top = tuple(
        {str(t.get("token", "")): float(t["logprob"]) for t in (i.get("top_logprobs") or [])}
        for i in items
    )
    return tokens, logprobs, top


@dataclass(slots=True)
class _Server:
    """One OpenAI-compatible endpoint and what we learned about it while querying."""

    role: Literal["reference", "candidate"]
    base_url: str
    model: str | None
    api_key: str | None
    logprobs_supported: bool = True
    notes: list[str] = field(default_factory=list)
    answered: int = 0  # completions received; before the first, an HTTP 404 is a wrong --url
    said_no_logprobs: bool = False
    # Model ids /models listed (None: not asked or not understood). A --model outside it is not
    # refused up front: some servers (llama.cpp's) list one name and answer to any; it names
    # the likely cause when the first prompt gets an HTTP 404, as vLLM and OpenAI answer then.
    listed: list[str] | None = None


def _generate(
    client: httpx.Client,
    server: _Server,
    p: QualityPrompt,
    *,
    max_tokens: int,
    seed: int,
    top_logprobs: int,
) -> Generation:
    chat = p.messages is not None
    url = server.base_url.rstrip("/") + ("/chat/completions" if chat else "/completions")
    body: dict[str, Any] = {
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "top_p": 1.0,
        "seed": seed,
        "stream": False,
    }
    if server.model:
        body["model"] = server.model
    if chat:
        body["messages"] = [dict(m) for m in p.messages or ()]
    else:
        body["prompt"] = p.prompt
    if server.logprobs_supported:
        if chat:
            body["logprobs"] = True
            body["top_logprobs"] = top_logprobs
        else:
            body["logprobs"] = top_logprobs
    headers = {"Authorization": f"Bearer {server.api_key}"} if server.api_key else {}
    try:
        r = client.post(url, json=body, headers=headers)
        if r.status_code == 400 and server.logprobs_supported:
            # Many servers reject logprobs (or top_logprobs > their limit): retry without, once,
            # and remember, so the report can say the log-prob figures are missing and why.
            server.logprobs_supported = False
            server.notes.append(f"logprobs rejected (HTTP 400: {r.text[:120]}); text only")
            return _generate(
                client, server, p, max_tokens=max_tokens, seed=seed, top_logprobs=top_logprobs
            )
    except httpx.HTTPError as e:
        raise RemoteSourceError(
            f"the {server.role} server at {server.base_url} failed on prompt {p.id} "
            f"({type(e).__name__}: {e or 'no detail'})"
        ) from e
    if r.status_code == 404 and server.answered == 0:
        if not server.base_url.rstrip("/").endswith("/v1"):
            hint = "does its --url end with /v1 (e.g. http://127.0.0.1:8000/v1)?"
        elif server.model and server.listed and server.model not in server.listed:
            ids = server.listed
            shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
            which = "first" if server.role == "reference" else "second"
            hint = (
                f"it does not list --model {server.model!r} (it lists {shown}): fix the "
                f"{which} --model, or leave --model out"
            )
        elif server.model:
            # vLLM and OpenAI answer an unknown model with 404 too: the server's message says
            # which it was.
            hint = (
                f"is --model {server.model!r} served there (see {server.base_url}/models), and "
                f"does it serve {'chat' if chat else 'text'} completions?"
            )
        else:
            hint = f"check its --url; does it serve {'chat' if chat else 'text'} completions?"
        said = error_message(r.content, limit=200)
        raise ConfigError(
            f"the {server.role} server answered HTTP 404 for {url}"
            + (f" ({said})" if said else "")
            + f": {hint}"
        )
    if r.status_code != 200:
        raise RemoteSourceError(f"{url}: HTTP {r.status_code} for prompt {p.id}: {r.text[:200]}")
    try:
        data = r.json()
        choice = data["choices"][0]
        if chat:
            text = choice["message"]["content"] or ""
            tokens, logprobs, top = _parse_chat_logprobs(choice.get("logprobs"))
        else:
            text = choice["text"]
            tokens, logprobs, top = _parse_completion_logprobs(choice.get("logprobs"))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        raise RemoteSourceError(
            f"{url}: response for prompt {p.id} is not an OpenAI completion ({e!r})"
        ) from None
    server.answered += 1
    if tokens is None and server.logprobs_supported and not server.said_no_logprobs:
        # Asked for and not refused, yet absent: say why the log-prob figures read n/a.
        server.said_no_logprobs = True
        server.notes.append("answers carry no logprobs; compared on whitespace-separated words")
    return Generation(
        text=str(text),
        tokens=tokens,
        logprobs=logprobs,
        top_logprobs=top,
        finish_reason=choice.get("finish_reason"),
    )


# --------------------------------------------------------------------------- agreement
@dataclass(frozen=True, slots=True, kw_only=True)
class PromptAgreement:
    """How one prompt's candidate output agrees with the reference's."""

    id: str
    exact: bool
    unit: Literal["token", "word"]
    common_prefix: int
    compared: int  # common prefix + the first differing position (when there is one)
    len_a: int
    len_b: int
    mean_abs_dlogprob: float | None
    kl_topk: float | None
    text_a: str
    text_b: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "exact": self.exact,
            "unit": self.unit,
            "common_prefix": self.common_prefix,
            "compared": self.compared,
            "len_a": self.len_a,
            "len_b": self.len_b,
            "mean_abs_dlogprob": self.mean_abs_dlogprob,
            "kl_topk": self.kl_topk,
            "text_a": self.text_a,
            "text_b": self.text_b,
        }


def _kl_topk(pa: Mapping[str, float], pb: Mapping[str, float]) -> float | None:
    shared = [t for t in pa if t in pb]
    if not shared:
        return None
    la = [pa[t] for t in shared]
    lb = [pb[t] for t in shared]
    ma, mb = max(la), max(lb)
    za = math.log(sum(math.exp(x - ma) for x in la)) + ma
    zb = math.log(sum(math.exp(x - mb) for x in lb)) + mb
    return max(
        0.0, sum(math.exp(x - za) * ((x - za) - (y - zb)) for x, y in zip(la, lb, strict=True))
    )


def agreement(pid: str, a: Generation, b: Generation) -> PromptAgreement:
    """Compare one prompt's reference output ``a`` with candidate output ``b``."""
    if a.tokens is not None and b.tokens is not None:
        unit: Literal["token", "word"] = "token"
        ta, tb = list(a.tokens), list(b.tokens)
    else:
        unit = "word"
        ta, tb = a.text.split(), b.text.split()
    n = 0
    while n < len(ta) and n < len(tb) and ta[n] == tb[n]:
        n += 1
    diverged = n < max(len(ta), len(tb))
    compared = n + (1 if diverged else 0)
    dlp: float | None = None
    kl: float | None = None
    if unit == "token" and a.logprobs is not None and b.logprobs is not None:
        diffs = [
            abs(x - y)
            for x, y in zip(a.logprobs[:n], b.logprobs[:n], strict=True)
            if x is not None and y is not None
        ]
        dlp = sum(diffs) / len(diffs) if diffs else None
        if a.top_logprobs is not None and b.top_logprobs is not None:
            kls = [
                k
                for k in (
                    _kl_topk(x, y)
                    for x, y in zip(a.top_logprobs[:n], b.top_logprobs[:n], strict=True)
                )
                if k is not None
            ]
            kl = sum(kls) / len(kls) if kls else None
    return PromptAgreement(
        id=pid,
        exact=a.text == b.text,
        unit=unit,
        common_prefix=n,
        compared=compared,
        len_a=len(ta),
        len_b=len(tb),
        mean_abs_dlogprob=dlp,
        kl_topk=kl,
        text_a=a.text,
        text_b=b.text,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class AgreementSummary:
    """Aggregate agreement over the prompt set."""

    n_prompts: int
    exact_match: float
    top1_agreement: float | None
    unit: Literal["token", "word", "mixed"]
    mean_abs_dlogprob: float | None
    logprob_agreement: float | None
    kl_topk_mean: float | None
    mean_common_prefix: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_prompts": self.n_prompts,
            "exact_match": self.exact_match,
            "top1_agreement": self.top1_agreement,
            "unit": self.unit,
            "mean_abs_dlogprob": self.mean_abs_dlogprob,
            "logprob_agreement": self.logprob_agreement,
            "kl_topk_mean": self.kl_topk_mean,
            "mean_common_prefix": self.mean_common_prefix,
        }


def summarize_agreement(items: Sequence[PromptAgreement]) -> AgreementSummary:
    """Exact-match share, pooled top-1 agreement and mean log-prob figures over prompts."""
    if not items:
        raise ConfigError("no prompt results to summarise")
    compared = sum(i.compared for i in items)
    units = {i.unit for i in items}
    dlps = [i.mean_abs_dlogprob for i in items if i.mean_abs_dlogprob is not None]
    kls = [i.kl_topk for i in items if i.kl_topk is not None]
    dlp = sum(dlps) / len(dlps) if dlps else None
    return AgreementSummary(
        n_prompts=len(items),
        exact_match=sum(i.exact for i in items) / len(items),
        top1_agreement=sum(i.common_prefix for i in items) / compared if compared else None,
        unit=units.pop() if len(units) == 1 else "mixed",
        mean_abs_dlogprob=dlp,
        logprob_agreement=math.exp(-dlp) if dlp is not None else None,
        kl_topk_mean=sum(kls) / len(kls) if kls else None,
        mean_common_prefix=sum(i.common_prefix for i in items) / len(items),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class QualityReport:
    """Reference vs candidate (and optionally reference vs itself) over one prompt set.

    ``status`` is ``complete`` when every prompt was compared; ``running`` (a checkpoint written
    while the run goes on) and ``partial`` (stopped early: ``partial_reason`` says why) cover the
    first ``len(prompts)`` of ``prompts_total`` prompts, and ``summary`` is ``None`` until one
    prompt is done.
    """

    reference_url: str
    candidate_url: str
    reference_model: str | None
    candidate_model: str | None
    prompts_file: str
    max_tokens: int
    seed: int
    summary: AgreementSummary | None
    control: AgreementSummary | None
    prompts: tuple[PromptAgreement, ...]
    notes: tuple[str, ...]
    duration_s: float
    prompts_total: int
    status: QualityStatus = "complete"
    partial_reason: str | None = None

    def __post_init__(self) -> None:
        if self.prompts_total < len(self.prompts):
            raise ValueError(
                f"prompts_total {self.prompts_total} < {len(self.prompts)} prompts compared"
            )
        if self.status == "complete" and (
            self.summary is None or len(self.prompts) != self.prompts_total
        ):
            raise ValueError("a complete report needs every prompt and a summary")
        if (self.status == "partial") != (self.partial_reason is not None):
            raise ValueError("partial_reason is given exactly when the status is partial")

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def accuracy_block(self) -> dict[str, Any]:
        """The bench result's ``accuracy`` block (notes/schema.md) for the candidate's runs.

        Only a complete run has one: agreement over part of the prompt set is not the figure
        the bench result claims.
        """
        s = self.summary
        if not self.complete or s is None:
            raise ConfigError(
                f"the quality run is {self.status} ({len(self.prompts)} of {self.prompts_total} "
                f"prompts{': ' + self.partial_reason if self.partial_reason else ''}); "
                "re-run it to completion before attaching its figures"
            )
        parts = [
            f"greedy (temperature 0, max_tokens {self.max_tokens}, seed {self.seed}) on "
            f"{s.n_prompts} prompts from {Path(self.prompts_file).name}",
            f"top1_agreement = greedy {s.unit} agreement up to first divergence",
        ]
        if s.logprob_agreement is not None:
            parts.append(
                f"logprob_agreement = exp(-mean|dlogprob|), mean|dlogprob| = "
                f"{s.mean_abs_dlogprob:.4g} nats"
            )
        if s.kl_topk_mean is not None:
            parts.append("kl_mean = KL(ref||cand) over shared top-k tokens (approximate)")
        if self.control is not None:
            parts.append(
                f"control (reference vs itself): exact {self.control.exact_match:.3f}, "
                f"top1 {self.control.top1_agreement}"
            )
        parts.extend(self.notes)
        return {
            "reference": self.reference_url
            + (f" ({self.reference_model})" if self.reference_model else ""),
            "kl_mean": s.kl_topk_mean,
            "top1_agreement": s.top1_agreement,
            "max_rel_err": None,
            "exact_match": s.exact_match,
            "logprob_agreement": s.logprob_agreement,
            "perplexity": None,
            "note": "; ".join(parts),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": QUALITY_SCHEMA,
            "status": self.status,
            "partial_reason": self.partial_reason,
            "reference": {"url": self.reference_url, "model": self.reference_model},
            "candidate": {"url": self.candidate_url, "model": self.candidate_model},
            "prompts_file": self.prompts_file,
            "prompts_total": self.prompts_total,
            "decoding": {
                "temperature": 0.0,
                "top_p": 1.0,
                "max_tokens": self.max_tokens,
                "seed": self.seed,
            },
            "summary": self.summary.to_dict() if self.summary else None,
            "control": self.control.to_dict() if self.control else None,
            "accuracy": self.accuracy_block() if self.complete else None,
            "notes": list(self.notes),
            "duration_s": self.duration_s,
            "prompts": [p.to_dict() for p in self.prompts],
        }


class QualityInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped :func:`run_quality`; ``report`` holds the prompts finished
    (partial).

    A ``KeyboardInterrupt``, so code that does not know it still stops as on any Ctrl-C; raised
    ``from`` the interrupt, so :func:`perwatt._signals.interrupt_reason` tells which one it was.
    """

    def __init__(self, report: QualityReport) -> None:
        super().__init__(report.partial_reason)
        self.report = report


class _Checkpoints:
    """Writes the report to ``out`` as the run goes: at most every ``interval_s``, or when forced."""

    def __init__(self, out: str | Path | None, interval_s: float) -> None:
        self.out = None if out is None else Path(out)
        self.interval_s = interval_s
        self._last = -math.inf

    def write(self, report: QualityReport, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.out is None or (not force and now - self._last < self.interval_s):
            return
        write_quality_report(report, self.out)
        self._last = now


def run_quality(
    prompts_file: str | Path,
    reference_url: str,
    candidate_url: str,
    *,
    reference_model: str | None = None,
    candidate_model: str | None = None,
    api_key: str | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    seed: int = 0,
    top_logprobs: int = DEFAULT_TOP_LOGPROBS,
    control: bool = False,
    timeout_s: float = 120.0,
    out: str | Path | None = None,
    checkpoint_interval_s: float = CHECKPOINT_INTERVAL_S,
    attach: Sequence[str | Path] = (),
) -> QualityReport:
    """Send the prompt set to both servers with greedy decoding and measure agreement.

    Model names default to the first one each server lists at ``/v1/models``. Both servers are
    contacted before any prompt is sent: one that cannot be reached is a :class:`ConfigError`
    naming it (nothing written). With ``out`` the report is written as the run goes (see the
    module docstring). Ctrl-C (or SIGTERM, under :func:`perwatt._signals.sigterm_as_interrupt`,
    as in the CLI) raises :class:`QualityInterrupted` carrying the partial report; a
    server failing mid-run raises :class:`RemoteSourceError` after the partial report is written.
    ``attach`` names the bench results the caller will attach the figures to: ``out`` may not be
    one of them (nor the prompt file), since the report is written before the first prompt.
    """
    if max_tokens < 1:
        raise ConfigError(f"--max-tokens must be >= 1, got {max_tokens}")
    if not 0 <= top_logprobs <= 20:
        raise ConfigError(f"--top-logprobs must be in [0, 20] (OpenAI's limit), got {top_logprobs}")
    if not (timeout_s > 0 and math.isfinite(timeout_s)):
        raise ConfigError(f"--timeout must be a positive number of seconds, got {timeout_s}")
    for role, u in (("reference", reference_url), ("candidate", candidate_url)):
        if not u.startswith(("http://", "https://")):
            raise ConfigError(
                f"the {role} --url must start with http:// or https://, got {u!r} "
                "(e.g. http://127.0.0.1:8000/v1)"
            )
        try:
            host = httpx.URL(u).host
        except httpx.InvalidURL as e:
            raise ConfigError(
                f"the {role} --url {u!r} is not a valid URL ({e}); e.g. http://127.0.0.1:8000/v1"
            ) from None
        if not host:
            raise ConfigError(f"the {role} --url {u!r} has no host; e.g. http://127.0.0.1:8000/v1")
    if out is not None:
        # The report is written at the first checkpoint, before any prompt: it must not
        # overwrite the prompt set or a bench result it is about to be attached to.
        if same_file(out, prompts_file):
            raise ConfigError(
                f"--out {out} is the prompt file; the report would overwrite it: "
                "choose another --out"
            )
        for target in attach:
            if same_file(out, target):
                raise ConfigError(
                    f"--out {out} is also an --attach target; the report would overwrite that "
                    "bench result: choose another --out (e.g. quality.json)"
                )
    prompts = load_prompts(prompts_file)
    if out is not None and Path(out).is_dir():
        raise ConfigError(
            f"{out} is a directory; give a file name, e.g. --out {Path(out) / 'quality.json'}"
        )
    t0 = time.perf_counter()
    ref = _Server("reference", reference_url, reference_model, api_key)
    cand = _Server("candidate", candidate_url, candidate_model, api_key)
    items: list[PromptAgreement] = []
    ctrl: list[PromptAgreement] = []
    checkpoints = _Checkpoints(out, checkpoint_interval_s)

    def report(status: QualityStatus, reason: str | None = None) -> QualityReport:
        notes = [f"reference: {n}" for n in ref.notes] + [f"candidate: {n}" for n in cand.notes]
        return QualityReport(
            reference_url=reference_url,
            candidate_url=candidate_url,
            reference_model=ref.model,
            candidate_model=cand.model,
            prompts_file=str(prompts_file),
            max_tokens=max_tokens,
            seed=seed,
            summary=summarize_agreement(items) if items else None,
            control=summarize_agreement(ctrl) if control and ctrl else None,
            prompts=tuple(items),
            notes=tuple(notes),
            duration_s=time.perf_counter() - t0,
            prompts_total=len(prompts),
            status=status,
            partial_reason=reason,
        )

    def done() -> str:
        return f"after {len(items)} of {len(prompts)} prompts"

    with httpx.Client(timeout=timeout_s) as client:
        for srv in (ref, cand):
            _probe(client, srv)
        # Written before the long part, so a bad --out fails now and a crash leaves a trace.
        checkpoints.write(report("running"), force=True)
        kw: dict[str, Any] = {"max_tokens": max_tokens, "seed": seed, "top_logprobs": top_logprobs}
        try:
            for p in prompts:
                a = _generate(client, ref, p, **kw)
                b = _generate(client, cand, p, **kw)
                # Control first: a prompt counts once all of its answers are in.
                c = _generate(client, ref, p, **kw) if control else None
                items.append(agreement(p.id, a, b))
                if c is not None:
                    ctrl.append(agreement(p.id, a, c))
                checkpoints.write(report("running"))
            # Inside the guard: a failure or Ctrl-C while writing the final report still marks
            # the file partial (not "running") and hands the figures back.
            final = report("complete")
            checkpoints.write(final, force=True)
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (perwatt._signals)
            partial = report("partial", f"{interrupt_reason(e)} {done()}")
            with interrupts_deferred():  # a second signal must not cut this write short
                checkpoints.write(partial, force=True)
            raise QualityInterrupted(partial) from e
        except Exception as e:
            why = str(e) if isinstance(e, PerwattError) else f"{type(e).__name__}: {e}"
            partial = report("partial", f"stopped {done()}: {why}")
            try:
                checkpoints.write(partial, force=True)
                marked = True
            except PerwattError:  # the write itself is what failed: say so, keep the cause
                marked = False
            if isinstance(e, PerwattError):
                if out is not None and marked:
                    kept = f" ({out} is marked partial: {len(items)} of {len(prompts)} prompts)"
                elif out is not None:
                    kept = f" ({out} could not be updated and may still read running)"
                elif items:
                    kept = f" (stopped {done()}; give --out to keep what was compared)"
                else:
                    kept = ""
                raise type(e)(f"{e}{kept}") from e
            raise
    return final


def generate_answers(
    prompts: Sequence[QualityPrompt],
    url: str,
    *,
    model: str | None = None,
    api_key: str | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    seed: int = 0,
    top_logprobs: int = DEFAULT_TOP_LOGPROBS,
    timeout_s: float = 120.0,
) -> tuple[list[Generation], tuple[str, ...]]:
    """One server's greedy answers to the prompt set, and notes on what it did not return.

    For comparing servers that never run at the same time (``perwatt experiment`` launches one
    configuration after another): record each one's answers, then compare them with
    :func:`agreement` and :func:`summarize_agreement`, as :func:`run_quality` does live.
    """
    srv = _Server("candidate", url, model, api_key)
    with httpx.Client(timeout=timeout_s) as client:
        _probe(client, srv)
        gens = [
            _generate(client, srv, p, max_tokens=max_tokens, seed=seed, top_logprobs=top_logprobs)
            for p in prompts
        ]
    return gens, tuple(srv.notes)


def _probe(client: httpx.Client, srv: _Server) -> None:
    """Reach the server before any prompt is sent; learn its model name if none was given.

    A server that cannot be reached is the user's to fix (start it, or correct --url), so it is
    a one-line :class:`ConfigError`, not a failure halfway through the run.
    """
    url = srv.base_url.rstrip("/") + "/models"
    headers = {"Authorization": f"Bearer {srv.api_key}"} if srv.api_key else {}
    try:
        r = client.get(url, headers=headers)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol) as e:
        raise ConfigError(
            f"cannot reach the {srv.role} server at {srv.base_url} ({_why(e)}): is the server "
            "running? Check the "
            + ("first" if srv.role == "reference" else "second")
            + " --url (base URL including /v1, e.g. http://127.0.0.1:8000/v1)"
        ) from None
    except httpx.HTTPError as e:
        raise RemoteSourceError(
            f"the {srv.role} server at {srv.base_url} did not answer {url} "
            f"({type(e).__name__}: {e or 'no detail'}): is it healthy?"
        ) from e
    if r.status_code != 200:
        if srv.model is None:
            srv.notes.append(f"/models answered HTTP {r.status_code}; no model name sent")
        return
    try:
        ids = [str(m["id"]) for m in r.json()["data"]]
    except (ValueError, KeyError, IndexError, TypeError):
        if srv.model is None:
            srv.notes.append("/models answer not understood; no model name sent")
        return
    srv.listed = ids
    if srv.model is None:
        srv.model = ids[0] if ids else None


def _why(e: httpx.HTTPError) -> str:
    """The OS reason of a connection failure, without httpx's exception class names."""
    text = str(e) or type(e).__name__
    if "[Errno" in text and "] " in text:
        text = text.split("] ", 1)[1]  # "[Errno 111] Connection refused" -> "Connection refused"
    return text.strip().lower() or type(e).__name__


def quality_verdict(
    report: QualityReport, thresholds: GuardThresholds = DEFAULT_THRESHOLDS
) -> GuardVerdict:
    """The accuracy guard's verdict on a complete run (:mod:`perwatt.bench.guard`); a run that
    stopped early has none: agreement over part of the prompt set decides nothing."""
    if not report.complete:
        return NO_VERDICT
    return judge(report.accuracy_block(), thresholds)


def format_quality_summary(
    report: QualityReport, thresholds: GuardThresholds = DEFAULT_THRESHOLDS
) -> str:
    """The text summary ``perwatt quality`` prints; a run stopped early says so on line one,
    a complete one ends with the accuracy guard's verdict."""

    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    lines = [f"reference {report.reference_url}  vs  candidate {report.candidate_url}"]
    if not report.complete:
        lines.append(
            f"  PARTIAL: {len(report.prompts)} of {report.prompts_total} prompts compared"
            + (f" ({report.partial_reason})" if report.partial_reason else "")
        )
    s = report.summary
    if s is None:
        lines.append("  no prompt was compared: no figures")
    else:
        lines += [
            f"  prompts            {s.n_prompts} (greedy, max_tokens {report.max_tokens})",
            f"  exact match        {f(s.exact_match)}",
            f"  top-1 agreement    {f(s.top1_agreement)} ({s.unit}s, up to first divergence)",
            f"  logprob agreement  {f(s.logprob_agreement)} "
            f"(mean |dlogprob| {f(s.mean_abs_dlogprob)})",
            f"  KL top-k (approx)  {f(s.kl_topk_mean)}",
        ]
    if report.control is not None:
        c = report.control
        lines.append(f"  control A vs A     exact {f(c.exact_match)}, top-1 {f(c.top1_agreement)}")
    lines += [f"  note: {n}" for n in report.notes]
    verdict = quality_verdict(report, thresholds)
    if report.complete:
        judged = thresholds.describe()
        if verdict.status == "none":
            lines.append(f"  verdict            none: no figure the guard judges ({judged})")
        else:
            word = verdict.text if verdict.failed else "PASS"
            lines.append(f"  verdict            {word} (guard: {judged})")
        if (
            report.control is not None
            and judge(
                {
                    "exact_match": report.control.exact_match,
                    "top1_agreement": report.control.top1_agreement,
                },
                thresholds,
            ).failed
        ):
            lines.append(
                "  note: the reference disagrees with itself beyond the thresholds (control): "
                "the verdict measures its nondeterminism as much as the candidate"
            )
    return "\n".join(lines)


def write_quality_report(report: QualityReport, path: str | Path) -> Path:
    """Write the report JSON atomically (``.tmp`` then rename)."""
    out = Path(path)
    if out.is_dir():
        raise ConfigError(
            f"{out} is a directory; give a file name, e.g. --out {out / 'quality.json'}"
        )
    try:
        return atomic_write_text(
            out, json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n"
        )
    except OSError as e:
        # Not a traceback, and no stray .tmp left beside the target.
        with contextlib.suppress(OSError):
            out.with_name(out.name + ".tmp").unlink(missing_ok=True)
        raise ConfigError(
            f"cannot write the quality report to {out} ({e.strerror or e}); choose another --out"
        ) from None


def check_attach_target(result_path: str | Path) -> None:
    """Fail now, not after the run, when ``result_path`` is not a readable bench result."""
    load_result(result_path)


def attach_accuracy(result_path: str | Path, accuracy: Mapping[str, Any]) -> Path:
    """Set a bench result's ``accuracy`` block (validated, rewritten atomically)."""
    doc: Any = load_result(result_path)
    doc["accuracy"] = dict(accuracy)
    return write_result(result_path, doc)


__all__ = [
    "CHECKPOINT_INTERVAL_S",
    "QUALITY_SCHEMA",
    "AgreementSummary",
    "Generation",
    "PromptAgreement",
    "QualityInterrupted",
    "QualityPrompt",
    "QualityReport",
    "QualityStatus",
    "agreement",
    "attach_accuracy",
    "check_attach_target",
    "format_quality_summary",
    "generate_answers",
    "load_prompts",
    "quality_verdict",
    "run_quality",
    "summarize_agreement",
    "write_quality_report",
]
