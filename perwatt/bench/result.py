"""The bench result document: one JSON file per run at one load level.

Layout (``SCHEMA_VERSION = "perwatt.bench.result/1"``; the full field list is the TypedDicts
below, mirrored from notes/schema.md)::

    {"schema", "status", "partial_reason", "label", "created_utc", "perwatt_version",
     "config": {...}, "load": {"kind", "value"}, "conditions": {...},
     "metrics": {...}, "energy": {...} | null, "economics": {...} | null,
     "accuracy": {...} | null, "timeline": {"t_s": [...], "power_w": [...]},
     "requests_csv": "file name" | null}

Writers (the server runner and the built-in engine's bench) start every document with
:func:`new_result` and :func:`run_conditions`, so the header (schema, status, label, creation time,
perwatt version) and the run conditions (host, CPU, Python, torch, GPUs, energy source) are built
in one place.

Lifecycle: the runner writes the document first with ``status="running"``, rewrites it atomically
(``.tmp`` then rename, so a reader never sees half a file) as requests complete, and finishes with
``complete`` (every request answered in full), ``complete-with-failures`` (the run finished but
some requests failed or were truncated: the figures cover the others, and ``partial_reason`` says
how many and why), ``partial`` (Ctrl-C or SIGTERM, a crash, server gone: what was measured is
kept, and
``partial_reason`` says why) or ``failed`` (nothing usable: every request failed).

Readers (compare, report) call :func:`load_result`, which validates the structure and raises
:class:`perwatt.errors.DataFormatError` naming the file and the offending key, so a truncated or
foreign JSON file is a one-line error instead of a ``KeyError`` deep inside a plot.

Energy figures from a simulated, replayed or estimated source keep that label in
``energy.source`` with ``energy.measured = false``; nothing here ever upgrades them.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import math
import platform
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal, TypedDict, cast

from perwatt import __version__
from perwatt._files import atomic_write_text
from perwatt.errors import DataFormatError
from perwatt.meter.detect import cpu_model, nvml_module
from perwatt.meter.nvml import gpu_inventory

SCHEMA_VERSION: Final = "perwatt.bench.result/1"

Status = Literal["running", "complete", "complete-with-failures", "partial", "failed"]
STATUSES: Final = ("running", "complete", "complete-with-failures", "partial", "failed")
LoadKind = Literal["rate", "concurrency", "batch"]
LOAD_KINDS: Final = ("rate", "concurrency", "batch")
TokenCountSource = Literal["usage", "chunks", "engine"]
TOKEN_COUNT_SOURCES: Final = ("usage", "chunks", "engine")
PERCENTILE_KEYS: Final = ("mean", "median", "p50", "p90", "p95", "p99", "min", "max")
ECONOMICS_NOTE: Final = "energy cost only; facility energy = GPU energy x PUE"


class Percentiles(TypedDict):
    """Distribution summary of one latency, in ms. All null when there is no sample."""

    mean: float | None
    median: float | None
    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None
    min: float | None
    max: float | None


class GoodputSLO(TypedDict, total=False):
    """The latency limits a request must meet to count towards goodput (ms)."""

    ttft: float
    tpot: float
    e2el: float


class RunConfig(TypedDict):
    """What was asked of the run: server, model, workload, load and energy settings."""

    engine: Literal["server", "builtin"]
    url: str | None
    endpoint: Literal["completions", "chat"]
    model: str
    precision: str | None
    workload: dict[str, Any]
    num_prompts: int
    input_len: int | None
    output_len: int | None
    request_rate: float | None  # None = infinite (all requests at once, as vLLM's "inf")
    burstiness: float
    max_concurrency: int | None
    batch_size: int | None
    seed: int
    goodput_slo_ms: GoodputSLO | None
    num_gpus: int
    price_per_kwh: float
    pue: float


class Load(TypedDict):
    """The load level; compare matches runs on (kind, value)."""

    kind: LoadKind
    value: float


class GPUConditions(TypedDict, total=False):
    """One GPU as the run found it: name, driver, power limit, clocks."""

    name: str
    uuid: str
    driver: str
    power_limit_w: float | None
    sm_clock_mhz: float | None
    max_sm_clock_mhz: float | None


class Conditions(TypedDict):
    """Where and when the run happened: host, CPU, software versions, GPUs."""

    gpus: list[GPUConditions]
    host: str
    cpu: str
    python: str
    torch: str | None
    energy_source: str
    date_utc: str


class Metrics(TypedDict):
    """Throughput and latency figures of the run's requests."""

    completed: int
    failed: int
    duration_s: float
    request_throughput_rps: float
    output_throughput_tok_s: float
    total_token_throughput_tok_s: float
    total_input_tokens: int
    total_output_tokens: int
    token_count_source: TokenCountSource
    ttft_ms: Percentiles
    tpot_ms: Percentiles
    itl_ms: Percentiles
    e2el_ms: Percentiles
    goodput_rps: float | None
    errors: dict[str, int]


class Energy(TypedDict):
    """The run's energy figures and where they came from (source, basis, window)."""

    source: str
    measured: bool
    idle_subtracted: bool
    whole_run: dict[str, Any]  # Measurement.to_dict()
    steady_state: dict[str, Any] | None
    steady_state_window_s: list[float] | None  # [t0, t1] relative to run start
    j_per_output_token: float | None  # None when no output token was produced
    output_tokens_per_j: float | None  # None when no energy was recorded
    j_per_request: float | None
    avg_power_w: float
    peak_power_w: float | None
    idle_power_w: float | None
    idle_share: float | None
    output_tokens_per_s_per_gpu: float
    basis: Literal["steady_state", "whole_run"]


class Economics(TypedDict):
    """Cost and tokens per MWh derived from the energy figures."""

    usd_per_million_output_tokens: float | None
    output_tokens_per_mwh: float | None
    price_per_kwh: float
    pue: float
    note: str


class Accuracy(TypedDict):
    """Agreement with a reference server, when a quality run was attached."""

    reference: str
    kl_mean: float | None
    top1_agreement: float | None
    max_rel_err: float | None
    exact_match: float | None
    logprob_agreement: float | None
    perplexity: float | None
    note: str


class Timeline(TypedDict):
    """The power timeline file written beside the result, if any."""

    t_s: list[float]
    power_w: list[float]


class BenchResult(TypedDict):
    """One result file of ``perwatt bench``: one load level of one run."""

    schema: str
    status: Status
    partial_reason: str | None
    label: str
    created_utc: str
    perwatt_version: str
    config: RunConfig
    load: Load
    conditions: Conditions
    metrics: Metrics
    energy: Energy | None  # None only while running or when the run failed before metering
    economics: Economics | None
    accuracy: Accuracy | None
    timeline: Timeline
    requests_csv: str | None


# --------------------------------------------------------------------------- building
# The server benchmark (bench/runner.py) and the built-in engine's (engine/bench.py) both start
# their documents here, so the identity fields and the run conditions cannot drift apart.

#: The first keys of every document, in this order.
HEADER_KEYS: Final = (
    "schema",
    "status",
    "partial_reason",
    "label",
    "created_utc",
    "perwatt_version",
)


def utc_now() -> str:
    """Now, UTC, to the second: ``2026-01-01T00:00:00Z`` (``created_utc``, ``date_utc``)."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _perwatt_version() -> str:
    return str(__version__)


def torch_version() -> str | None:
    """The installed torch's version without importing it (None: not installed)."""
    mod = sys.modules.get("torch")
    if mod is not None:
        return str(getattr(mod, "__version__", "unknown"))
    try:  # metadata only: importing torch would cost seconds and memory for nothing
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def local_gpu_conditions() -> list[GPUConditions]:
    """Name, driver, power limit and clocks of this machine's GPUs from NVML; [] if it fails."""
    try:
        inv = gpu_inventory(nvml=nvml_module())
    except Exception:  # conditions are descriptive; a failing query must not lose the run
        return []
    return [cast(GPUConditions, g.conditions()) for g in inv]


def run_conditions(
    *, energy_source: str, query_gpus: bool, extra: Mapping[str, Any] | None = None
) -> Conditions:
    """The ``conditions`` block: this host, its CPU, Python and torch versions, the energy
    source label and, when ``query_gpus`` (the GPUs are local and metered), each GPU's power
    limit and clocks. ``extra`` keys go after the schema's (e.g. ``energy_source_detail``)."""
    cond: Conditions = {
        "gpus": local_gpu_conditions() if query_gpus else [],
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "torch": torch_version(),
        "energy_source": energy_source,
        "date_utc": utc_now(),
    }
    if extra:
        cond.update(extra)  # type: ignore[typeddict-item]
    return cond


def new_result(
    *,
    label: str,
    config: Mapping[str, Any],
    load: Load,
    conditions: Conditions,
    metrics: Mapping[str, Any],
    requests_csv: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A document with ``status="running"``: the header (:data:`HEADER_KEYS`: schema, status,
    label, creation time, perwatt version), then config, load, conditions, metrics, and empty
    energy, economics, accuracy and timeline; ``extra`` keys (e.g. ``builtin``) go last."""
    doc: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "status": "running",
        "partial_reason": None,
        "label": label,
        "created_utc": utc_now(),
        "perwatt_version": _perwatt_version(),
        "config": dict(config),
        "load": dict(load),
        "conditions": dict(conditions),
        "metrics": dict(metrics),
        "energy": None,
        "economics": None,
        "accuracy": None,
        "timeline": {"t_s": [], "power_w": []},
        "requests_csv": requests_csv,
    }
    if extra:
        doc.update(extra)
    return doc


# --------------------------------------------------------------------------- writing
def _jsonable(obj: Any) -> Any:
    """Replace non-finite floats with None: JSON has no NaN/inf and strict readers reject them."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def write_result(path: str | Path, doc: BenchResult | Mapping[str, Any]) -> Path:
    """Write ``doc`` to ``path`` atomically: a ``.tmp`` sibling, fsync, then rename.

    A reader (or a crash) therefore sees either the previous complete version or the new one,
    never a torn file. Non-finite floats are written as ``null``.
    """
    text = json.dumps(_jsonable(doc), indent=2, allow_nan=False)
    return atomic_write_text(path, text + "\n", fsync=True)


class BenchInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a bench; ``paths`` are the result files it wrote, complete ones
    first and the interrupted one (marked with the reason) last.

    A ``KeyboardInterrupt``, so code that does not know it still stops as on any Ctrl-C; raised
    ``from`` the interrupt, so :func:`perwatt._signals.interrupt_reason` tells which one it was.
    """

    def __init__(self, paths: list[Path]) -> None:
        super().__init__(f"bench interrupted; {len(paths)} result file(s) written")
        self.paths = tuple(paths)


# --------------------------------------------------------------------------- reading
_NUM = (int, float)

# key -> (allowed python types, may be null)
_TOP: Final[dict[str, tuple[tuple[type, ...], bool]]] = {
    "schema": ((str,), False),
    "status": ((str,), False),
    "partial_reason": ((str,), True),
    "label": ((str,), False),
    "created_utc": ((str,), False),
    "perwatt_version": ((str,), False),
    "config": ((dict,), False),
    "load": ((dict,), False),
    "conditions": ((dict,), False),
    "metrics": ((dict,), False),
    "energy": ((dict,), True),
    "economics": ((dict,), True),
    "accuracy": ((dict,), True),
    "timeline": ((dict,), False),
    "requests_csv": ((str,), True),
}
_CONFIG: Final[dict[str, tuple[tuple[type, ...], bool]]] = {
    "engine": ((str,), False),
    "url": ((str,), True),
    "endpoint": ((str,), False),
    "model": ((str,), False),
    "precision": ((str,), True),
    "workload": ((dict,), False),
    "num_prompts": ((int,), False),
    "input_len": ((int,), True),
    "output_len": ((int,), True),
    "request_rate": (_NUM, True),
    "burstiness": (_NUM, False),
    "max_concurrency": ((int,), True),
    "batch_size": ((int,), True),
    "seed": ((int,), False),
    "goodput_slo_ms": ((dict,), True),
    "num_gpus": ((int,), False),
    "price_per_kwh": (_NUM, False),
    "pue": (_NUM, False),
}
_METRICS: Final[dict[str, tuple[tuple[type, ...], bool]]] = {
    "completed": ((int,), False),
    "failed": ((int,), False),
    "duration_s": (_NUM, False),
    "request_throughput_rps": (_NUM, False),
    "output_throughput_tok_s": (_NUM, False),
    "total_token_throughput_tok_s": (_NUM, False),
    "total_input_tokens": ((int,), False),
    "total_output_tokens": ((int,), False),
    "token_count_source": ((str,), False),
    "ttft_ms": ((dict,), False),
    "tpot_ms": ((dict,), False),
    "itl_ms": ((dict,), False),
    "e2el_ms": ((dict,), False),
    "goodput_rps": (_NUM, True),
    "errors": ((dict,), False),
}
_ENERGY: Final[dict[str, tuple[tuple[type, ...], bool]]] = {
    "source": ((str,), False),
    "measured": ((bool,), False),
    "idle_subtracted": ((bool,), False),
    "whole_run": ((dict,), False),
    "steady_state": ((dict,), True),
    "steady_state_window_s": ((list,), True),
    "j_per_output_token": (_NUM, True),
    "output_tokens_per_j": (_NUM, True),
    "j_per_request": (_NUM, True),
    "avg_power_w": (_NUM, False),
    "peak_power_w": (_NUM, True),
    "idle_power_w": (_NUM, True),
    "idle_share": (_NUM, True),
    "output_tokens_per_s_per_gpu": (_NUM, False),
    "basis": ((str,), False),
}
_ECONOMICS: Final[dict[str, tuple[tuple[type, ...], bool]]] = {
    "usd_per_million_output_tokens": (_NUM, True),
    "output_tokens_per_mwh": (_NUM, True),
    "price_per_kwh": (_NUM, False),
    "pue": (_NUM, False),
    "note": ((str,), False),
}


def _check(
    where: str,
    obj: Mapping[str, Any],
    spec: Mapping[str, tuple[tuple[type, ...], bool]],
    prefix: str,
) -> None:
    for key, (types, nullable) in spec.items():
        if key not in obj:
            raise DataFormatError(f"{where}: missing key {prefix}{key}")
        v = obj[key]
        if v is None:
            if not nullable:
                raise DataFormatError(f"{where}: {prefix}{key} is null")
            continue
        # bool is an int subclass: never accept it where a number is expected.
        if isinstance(v, bool) and bool not in types:
            raise DataFormatError(f"{where}: {prefix}{key} is a boolean, expected a number")
        if not isinstance(v, types):
            want = "/".join(t.__name__ for t in types)
            raise DataFormatError(f"{where}: {prefix}{key} is {type(v).__name__}, expected {want}")


# Every number in a result is a count, a duration, a power, an energy or a rate: none can be negative. A file edited by
# hand or written by a broken tool (negative J/token, energy, tokens, durations) is refused
# here, once, so compare and report never turn it into a confident ratio.
_CONFIG_RANGES: Final[dict[str, tuple[float, bool]]] = {
    # key -> (lowest value, whether the lowest value itself is excluded)
    "num_prompts": (0.0, False),
    "input_len": (0.0, False),
    "output_len": (0.0, False),
    "request_rate": (0.0, True),
    "burstiness": (0.0, True),
    "max_concurrency": (0.0, True),
    "batch_size": (0.0, True),
    "num_gpus": (0.0, True),
    "price_per_kwh": (0.0, False),
    "pue": (1.0, False),
}
_METRIC_KEYS_NON_NEGATIVE: Final = (
    "completed",
    "failed",
    "duration_s",
    "request_throughput_rps",
    "output_throughput_tok_s",
    "total_token_throughput_tok_s",
    "total_input_tokens",
    "total_output_tokens",
    "goodput_rps",
)
_ENERGY_KEYS_NON_NEGATIVE: Final = (
    "j_per_output_token",
    "output_tokens_per_j",
    "j_per_request",
    "avg_power_w",
    "peak_power_w",
    "idle_power_w",
    "idle_share",
    "output_tokens_per_s_per_gpu",
)
_MEASUREMENT_KEYS_NON_NEGATIVE: Final = (
    "duration_s",
    "total_energy_j",
    "avg_power_w",
    "peak_power_w",
)
_ECONOMICS_KEYS_NON_NEGATIVE: Final = (
    "usd_per_million_output_tokens",
    "output_tokens_per_mwh",
    "price_per_kwh",
)


def _check_value(where: str, key: str, v: Any, low: float = 0.0, open_low: bool = False) -> None:
    """A number that must be finite and >= ``low`` (> when ``open_low``); None passes."""
    if v is None or isinstance(v, bool) or not isinstance(v, _NUM):
        return  # types are _check's job
    if not math.isfinite(v):
        raise DataFormatError(f"{where}: {key} is {v}, not a finite number")
    if v < low or (open_low and v == low):
        bound = f"> {low:g}" if open_low else f">= {low:g}"
        raise DataFormatError(
            f"{where}: {key} is {v:g}, but it must be {bound}: an impossible value "
            "(a file edited by hand or written by a broken tool?)"
        )


def _check_values(where: str, doc: Mapping[str, Any]) -> None:
    """Refuse impossible numbers (negative energy, tokens, durations; NaN) naming file and key."""
    cfg = doc["config"]
    for key, (low, open_low) in _CONFIG_RANGES.items():
        _check_value(where, f"config.{key}", cfg.get(key), low, open_low)
    _check_value(where, "load.value", doc["load"]["value"])
    m = doc["metrics"]
    for key in _METRIC_KEYS_NON_NEGATIVE:
        _check_value(where, f"metrics.{key}", m[key])
    for name in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"):
        for k in PERCENTILE_KEYS:
            _check_value(where, f"metrics.{name}.{k}", m[name][k])
    for kind, n in m["errors"].items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise DataFormatError(f"{where}: metrics.errors.{kind} must be a count >= 0, got {n}")
    e = doc["energy"]
    if e is not None:
        for key in _ENERGY_KEYS_NON_NEGATIVE:
            _check_value(where, f"energy.{key}", e[key])
        if isinstance(e["idle_share"], _NUM) and e["idle_share"] > 1:
            raise DataFormatError(f"{where}: energy.idle_share is {e['idle_share']:g}, above 1")
        for block in ("whole_run", "steady_state"):
            meas = e[block]
            if isinstance(meas, Mapping):
                for key in _MEASUREMENT_KEYS_NON_NEGATIVE:
                    _check_value(where, f"energy.{block}.{key}", meas.get(key))
                per_device = meas.get("energy_j")
                if isinstance(per_device, Mapping):
                    for dev, j in per_device.items():
                        _check_value(where, f"energy.{block}.energy_j.{dev}", j)
    econ = doc["economics"]
    if econ is not None:
        for key in _ECONOMICS_KEYS_NON_NEGATIVE:
            _check_value(where, f"economics.{key}", econ[key])
        _check_value(where, "economics.pue", econ["pue"], 1.0)
    tl = doc["timeline"]
    for i, (t, w) in enumerate(zip(tl["t_s"], tl["power_w"], strict=True)):
        if not isinstance(t, _NUM) or isinstance(t, bool):
            raise DataFormatError(f"{where}: timeline.t_s[{i}] is not a number")
        if not isinstance(w, _NUM) or isinstance(w, bool):
            raise DataFormatError(f"{where}: timeline.power_w[{i}] is not a number")
        _check_value(where, f"timeline.power_w[{i}]", w)
        if not math.isfinite(t):
            raise DataFormatError(f"{where}: timeline.t_s[{i}] is {t}, not a finite number")


def validate_result(doc: Any, where: str = "result") -> BenchResult:
    """Check the structure of a result document; raise :class:`DataFormatError` if it is wrong."""
    if not isinstance(doc, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    schema = doc.get("schema")
    if schema != SCHEMA_VERSION:
        if isinstance(schema, str) and schema.startswith("perwatt.bench.result/"):
            raise DataFormatError(
                f"{where}: schema {schema!r} is not supported by this perwatt "
                f"(reads {SCHEMA_VERSION!r}); upgrade perwatt or re-run the benchmark"
            )
        raise DataFormatError(
            f"{where}: not a perwatt bench result (schema {schema!r}, expected {SCHEMA_VERSION!r})"
        )
    _check(where, doc, _TOP, "")
    if doc["status"] not in STATUSES:
        raise DataFormatError(f"{where}: status {doc['status']!r} is not one of {STATUSES}")
    _check(where, doc["config"], _CONFIG, "config.")
    load = doc["load"]
    if load.get("kind") not in LOAD_KINDS:
        raise DataFormatError(f"{where}: load.kind {load.get('kind')!r} is not one of {LOAD_KINDS}")
    v = load.get("value")
    if isinstance(v, bool) or not isinstance(v, _NUM):
        raise DataFormatError(f"{where}: load.value must be a number")
    if not isinstance(doc["conditions"].get("gpus", []), list):
        raise DataFormatError(f"{where}: conditions.gpus must be a list")
    try:
        _check(where, doc["metrics"], _METRICS, "metrics.")
    except DataFormatError:
        # The runner's first write holds null throughputs until its first checkpoint; a run
        # killed before then should read as unfinished, not as a corrupt key.
        if doc["status"] == "running":
            raise DataFormatError(
                f"{where}: no metrics yet (status 'running': the run is still going or was "
                "killed before its first checkpoint); wait for it to finish or re-run it"
            ) from None
        raise
    m = doc["metrics"]
    if m["token_count_source"] not in TOKEN_COUNT_SOURCES:
        raise DataFormatError(
            f"{where}: metrics.token_count_source {m['token_count_source']!r} "
            f"is not one of {TOKEN_COUNT_SOURCES}"
        )
    for name in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"):
        pct = m[name]
        for k in PERCENTILE_KEYS:
            if k not in pct:
                raise DataFormatError(f"{where}: missing key metrics.{name}.{k}")
            if pct[k] is not None and (isinstance(pct[k], bool) or not isinstance(pct[k], _NUM)):
                raise DataFormatError(f"{where}: metrics.{name}.{k} must be a number or null")
    if doc["energy"] is not None:
        _check(where, doc["energy"], _ENERGY, "energy.")
        if doc["energy"]["basis"] not in ("steady_state", "whole_run"):
            raise DataFormatError(f"{where}: energy.basis {doc['energy']['basis']!r} is invalid")
        win = doc["energy"]["steady_state_window_s"]
        if win is not None and (len(win) != 2 or not all(isinstance(x, _NUM) for x in win)):
            raise DataFormatError(f"{where}: energy.steady_state_window_s must be [t0, t1]")
    if doc["economics"] is not None:
        _check(where, doc["economics"], _ECONOMICS, "economics.")
    tl = doc["timeline"]
    ts, ps = tl.get("t_s"), tl.get("power_w")
    if not isinstance(ts, list) or not isinstance(ps, list) or len(ts) != len(ps):
        raise DataFormatError(
            f"{where}: timeline.t_s and timeline.power_w must be equal-length lists"
        )
    _check_values(where, doc)
    return doc  # type: ignore[return-value]


def load_result(path: str | Path) -> BenchResult:
    """Read and validate a result JSON file; :class:`DataFormatError` names the file and key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM from a Windows editor is not JSON
    except FileNotFoundError:
        raise DataFormatError(f"{path}: no such result file") from None
    except OSError as e:
        raise DataFormatError(f"{path}: cannot read ({e.strerror or e})") from e
    except UnicodeDecodeError as e:
        raise DataFormatError(
            f"{path}: not a result JSON file (not UTF-8 text: {e.reason})"
        ) from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataFormatError(
            f"{path}:{e.lineno}: not valid JSON ({e.msg}); a run still writing? re-run or wait"
        ) from None
    return validate_result(doc, str(path))


def empty_percentiles() -> Percentiles:
    """A summary with no samples (all null)."""
    return {
        "mean": None,
        "median": None,
        "p50": None,
        "p90": None,
        "p95": None,
        "p99": None,
        "min": None,
        "max": None,
    }


__all__ = [
    "ECONOMICS_NOTE",
    "HEADER_KEYS",
    "LOAD_KINDS",
    "PERCENTILE_KEYS",
    "SCHEMA_VERSION",
    "STATUSES",
    "TOKEN_COUNT_SOURCES",
    "Accuracy",
    "BenchInterrupted",
    "BenchResult",
    "Conditions",
    "Economics",
    "Energy",
    "GPUConditions",
    "GoodputSLO",
    "Load",
    "Metrics",
    "Percentiles",
    "RunConfig",
    "Timeline",
    "empty_percentiles",
    "example_result",
    "load_result",
    "local_gpu_conditions",
    "new_result",
    "run_conditions",
    "utc_now",
    "validate_result",
    "write_result",
]


def example_result(**overrides: Any) -> BenchResult:
    """A small valid document (simulated energy), for tests and docs; keys can be overridden.

    Values are made up but consistent: 24 requests x 16 output tokens over 2 s at 200 W.
    """
    pct: Percentiles = {
        "mean": 10.0,
        "median": 10.0,
        "p50": 10.0,
        "p90": 12.0,
        "p95": 13.0,
        "p99": 14.0,
        "min": 8.0,
        "max": 14.0,
    }
    whole = {
        "name": "whole_run",
        "start_s": 0.0,
        "end_s": 2.0,
        "duration_s": 2.0,
        "energy_j": {"sim0": 400.0},
        "total_energy_j": 400.0,
        "avg_power_w": 200.0,
        "peak_power_w": 200.0,
        "source": "simulated",
        "sources": {"sim0": "simulated"},
        "measured": False,
        "idle_subtracted": False,
        "idle_power_w": None,
        "warnings": [],
    }
    doc: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "status": "complete",
        "partial_reason": None,
        "label": "example",
        "created_utc": "2026-01-01T00:00:00Z",
        "perwatt_version": "0.1.0",
        "config": {
            "engine": "server",
            "url": "http://127.0.0.1:8000/v1",
            "endpoint": "completions",
            "model": "example-model",
            "precision": None,
            "workload": {"kind": "synthetic", "input_len": 32, "output_len": 16},
            "num_prompts": 24,
            "input_len": 32,
            "output_len": 16,
            "request_rate": None,
            "burstiness": 1.0,
            "max_concurrency": 4,
            "batch_size": None,
            "seed": 0,
            "goodput_slo_ms": None,
            "num_gpus": 1,
            "price_per_kwh": 0.10,
            "pue": 1.0,
        },
        "load": {"kind": "concurrency", "value": 4.0},
        "conditions": {
            "gpus": [],
            "host": "example-host",
            "cpu": "example-cpu",
            "python": "3.12.0",
            "torch": None,
            "energy_source": "simulated",
            "date_utc": "2026-01-01T00:00:00Z",
        },
        "metrics": {
            "completed": 24,
            "failed": 0,
            "duration_s": 2.0,
            "request_throughput_rps": 12.0,
            "output_throughput_tok_s": 192.0,
            "total_token_throughput_tok_s": 576.0,
            "total_input_tokens": 768,
            "total_output_tokens": 384,
            "token_count_source": "usage",
            "ttft_ms": dict(pct),
            "tpot_ms": dict(pct),
            "itl_ms": dict(pct),
            "e2el_ms": dict(pct),
            "goodput_rps": None,
            "errors": {},
        },
        "energy": {
            "source": "simulated",
            "measured": False,
            "idle_subtracted": False,
            "whole_run": whole,
            "steady_state": None,
            "steady_state_window_s": None,
            "j_per_output_token": 400.0 / 384,
            "output_tokens_per_j": 384 / 400.0,
            "j_per_request": 400.0 / 24,
            "avg_power_w": 200.0,
            "peak_power_w": 200.0,
            "idle_power_w": None,
            "idle_share": None,
            "output_tokens_per_s_per_gpu": 192.0,
            "basis": "whole_run",
        },
        "economics": {
            "usd_per_million_output_tokens": 400.0 / 384 / 3.6e6 * 0.10 * 1e6,
            "output_tokens_per_mwh": 384 / 400.0 * 3.6e9,
            "price_per_kwh": 0.10,
            "pue": 1.0,
            "note": ECONOMICS_NOTE,
        },
        "accuracy": None,
        "timeline": {"t_s": [0.0, 1.0, 2.0], "power_w": [200.0, 200.0, 200.0]},
        "requests_csv": None,
    }
    doc.update(overrides)
    return validate_result(doc, "example_result")
