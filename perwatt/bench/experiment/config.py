"""The experiment file: server configurations × GPU settings × load levels × one workload (TOML).

::

    [experiment]                 name, out (result folder), energy_source, idle_seconds,
                                 ready_timeout_s, stop_grace_s, gpus (indices to actuate)
    [workload]                   synthetic lengths (input_len/output_len/…) or dataset = "file"
    [load]                       max_concurrency = [1, 8, 32]  or  request_rate = [1, 4, inf]
    [gpu]                        power_limits_w = [300, 400], sm_clocks_mhz = [1410]
    [slo]                        tpot_p90_ms = 50, ttft_p90_ms = 500 (keys: METRIC_PCT_ms)
    [analysis]                   baseline = "bf16" (a server label)
    [economics]                  price_per_kwh, pue, site_gpus, utilization
    [quality]                    prompts = "guard.jsonl", max_tokens, min_top1_agreement, …
    [[server]]                   label, command ("… --port {port}") or url, port, model, env,
                                 num_gpus, ready_path

Every key is checked: an unknown key, a wrong type or a value out of range is a
:class:`~perwatt.errors.ConfigError` whose message starts with the field (``server[2].port``,
``slo.tpot_p99ms``), raised before anything is launched. Input paths in the file (dataset,
quality prompts) are relative to the experiment file's folder; ``experiment.out`` (default
``NAME-results``) is relative to the current directory.

Command placeholders: ``{port}`` (the configuration's port), ``{host}`` (127.0.0.1) and
``{python}`` (this interpreter). A command whose first word is ``perwatt`` runs as
``{python} -m perwatt``: the server then runs the same perwatt as the experiment, whatever is on
``PATH``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from perwatt.economics import DEFAULT_PRICE_PER_KWH_USD, DEFAULT_PUE
from perwatt.errors import ConfigError, DataFormatError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (pyproject installs tomli there)
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

SLO_METRICS: Final = ("ttft", "tpot", "itl", "e2el")
SLO_STATS: Final = ("mean", "p50", "p90", "p95", "p99")
#: ``tpot_p90_ms`` … every latency the result documents carry.
SLO_KEYS: Final = tuple(f"{m}_{s}_ms" for m in SLO_METRICS for s in SLO_STATS)
_LABEL_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def _keys(table: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    for k in table:
        if k not in allowed:
            raise ConfigError(
                f"{where}.{k}: unknown key (allowed: {', '.join(allowed)})"
                if where
                else f"{k}: unknown table (allowed: {', '.join(allowed)})"
            )


def _table(doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    v = doc.get(key, {})
    if not isinstance(v, Mapping):
        raise ConfigError(f"{key}: must be a table ([{key}])")
    return v


def _num(
    t: Mapping[str, Any],
    key: str,
    where: str,
    default: float,
    *,
    lo: float | None = None,
    lo_open: bool = False,
    hi: float | None = None,
) -> float:
    v = t.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{where}.{key}: must be a finite number, got {v!r}")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise ConfigError(f"{where}.{key}: must be {'>' if lo_open else '>='} {lo:g}, got {v!r}")
    if hi is not None and v > hi:
        raise ConfigError(f"{where}.{key}: must be <= {hi:g}, got {v!r}")
    return float(v)


def _int(t: Mapping[str, Any], key: str, where: str, default: int, *, lo: int = 0) -> int:
    v = t.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"{where}.{key}: must be a whole number >= {lo}, got {v!r}")
    return int(v)


def _str(t: Mapping[str, Any], key: str, where: str, default: str | None) -> str | None:
    v = t.get(key, default)
    if v is not None and not (isinstance(v, str) and v.strip()):
        raise ConfigError(f"{where}.{key}: must be a non-empty string, got {v!r}")
    return v


def _list(t: Mapping[str, Any], key: str, where: str) -> list[Any]:
    v = t.get(key, [])
    if not isinstance(v, list):
        v = [v]
    return list(v)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSpec:
    """One server configuration: launched from ``command`` or already running at ``url``."""

    label: str
    command: tuple[str, ...] | None  # argv after placeholders; None: an already running server
    url: str
    port: int | None
    model: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    num_gpus: int = 1
    ready_path: str = "/models"
    where: str = "server[0]"

    def __post_init__(self) -> None:
        if not _LABEL_RE.match(self.label):
            raise ConfigError(
                f"{self.where}.label: {self.label!r} must start with a letter or digit and use "
                "letters, digits, . _ + - only (it names files)"
            )
        if self.num_gpus < 1:
            raise ConfigError(f"{self.where}.num_gpus: must be >= 1")

    @property
    def launched(self) -> bool:
        return self.command is not None

    def describe(self) -> str:
        return shlex.join(self.command) if self.command else f"already running at {self.url}"


@dataclass(frozen=True, slots=True, kw_only=True)
class GPUSetting:
    """A power limit and/or a locked SM clock; both None: the GPU as it is."""

    power_limit_w: float | None = None
    sm_clock_mhz: int | None = None

    @property
    def tag(self) -> str:
        parts = []
        if self.power_limit_w is not None:
            parts.append(f"pl{self.power_limit_w:g}W")
        if self.sm_clock_mhz is not None:
            parts.append(f"sm{self.sm_clock_mhz}MHz")
        return "-".join(parts) or "default"

    @property
    def changes_gpu(self) -> bool:
        return self.power_limit_w is not None or self.sm_clock_mhz is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadSpec:
    """One load level: a concurrency, or a request rate (None: as fast as possible)."""

    kind: Literal["concurrency", "rate"]
    value: float | None  # rate None = inf

    @property
    def tag(self) -> str:
        if self.kind == "concurrency":
            return f"c{int(self.value or 0)}"
        return "rinf" if self.value is None else f"r{self.value:g}"


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadSpec:
    """The prompts every point is measured with (as ``perwatt bench``'s workload flags)."""

    endpoint: Literal["completions", "chat"] = "completions"
    num_prompts: int = 100
    input_len: int = 1024
    output_len: int | None = 128
    input_dist: str = "fixed"
    output_dist: str = "fixed"
    dataset: Path | None = None
    ignore_eos: bool = True
    seed: int = 0
    timeout_s: float = 600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class EconomicsSpec:
    """Electricity price, PUE and site size for the cost figures."""

    price_per_kwh: float
    pue: float
    site_gpus: int = 1000
    utilization: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class QualitySpec:
    """The accuracy check between servers: prompts, tokens, and pass thresholds."""

    prompts: Path
    max_tokens: int = 64
    min_top1_agreement: float | None = None
    min_exact_match: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Point:
    """One measurement: a server configuration at a GPU setting and a load level."""

    server: ServerSpec
    setting: GPUSetting
    load: LoadSpec

    @property
    def id(self) -> str:
        return f"{self.server.label}/{self.setting.tag}/{self.load.tag}"

    @property
    def run_label(self) -> str:
        """The result documents' label: one series per (server, GPU setting)."""
        s = self.setting.tag
        return self.server.label if s == "default" else f"{self.server.label}@{s}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ExperimentConfig:
    """A validated experiment file."""

    name: str
    path: Path | None
    out_dir: Path
    servers: tuple[ServerSpec, ...]
    settings: tuple[GPUSetting, ...]
    loads: tuple[LoadSpec, ...]
    workload: WorkloadSpec
    slo: Mapping[str, float]
    baseline: str
    economics: EconomicsSpec
    quality: QualitySpec | None = None
    energy_source: str = "auto"
    idle_seconds: float = 5.0
    ready_timeout_s: float = 600.0
    stop_grace_s: float = 15.0
    gpus: tuple[int, ...] = (0,)
    burstiness: float = 1.0
    sample_interval_s: float = 0.1

    def __post_init__(self) -> None:
        labels = [s.label for s in self.servers]
        if not labels:
            raise ConfigError("server: give at least one [[server]] table")
        for i, lab in enumerate(labels):
            if lab in labels[:i]:
                raise ConfigError(f"server[{i}].label: {lab!r} is used twice")
        if self.baseline not in labels:
            raise ConfigError(
                f"analysis.baseline: {self.baseline!r} is not a server label "
                f"(labels: {', '.join(labels)})"
            )

    def points(self) -> list[Point]:
        """Every point, in run order: server by server, each GPU setting, each load level."""
        return [
            Point(server=s, setting=g, load=ld)
            for s in self.servers
            for g in self.settings
            for ld in self.loads
        ]

    @property
    def changes_gpu(self) -> bool:
        return any(g.changes_gpu for g in self.settings)

    def fingerprint(self, point: Point) -> str:
        """A hash of everything that shapes a point's figures: a re-run with the same hash skips
        the point; a changed command, workload or energy source measures it again."""
        w = self.workload
        doc = {
            "server": [point.server.command, point.server.url, point.server.model],
            "env": dict(point.server.env),
            "setting": [point.setting.power_limit_w, point.setting.sm_clock_mhz],
            "load": [point.load.kind, point.load.value, self.burstiness],
            "workload": [
                w.endpoint,
                w.num_prompts,
                w.input_len,
                w.output_len,
                w.input_dist,
                w.output_dist,
                str(w.dataset) if w.dataset else None,
                w.ignore_eos,
                w.seed,
            ],
            "energy_source": self.energy_source,
        }
        text = json.dumps(doc, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- parsing
_TOP: Final = (
    "experiment",
    "workload",
    "load",
    "gpu",
    "slo",
    "analysis",
    "economics",
    "quality",
    "server",
)
_EXPERIMENT_KEYS: Final = (
    "name",
    "out",
    "energy_source",
    "idle_seconds",
    "ready_timeout_s",
    "stop_grace_s",
    "gpus",
    "sample_interval_s",
)
_WORKLOAD_KEYS: Final = (
    "endpoint",
    "num_prompts",
    "input_len",
    "output_len",
    "input_dist",
    "output_dist",
    "dataset",
    "ignore_eos",
    "seed",
    "timeout_s",
)
_LOAD_KEYS: Final = ("max_concurrency", "request_rate", "burstiness")
_GPU_KEYS: Final = ("power_limits_w", "sm_clocks_mhz")
_ANALYSIS_KEYS: Final = ("baseline",)
_ECONOMICS_KEYS: Final = ("price_per_kwh", "pue", "site_gpus", "utilization")
_QUALITY_KEYS: Final = ("prompts", "max_tokens", "min_top1_agreement", "min_exact_match")
_SERVER_KEYS: Final = (
    "label",
    "command",
    "url",
    "port",
    "model",
    "env",
    "num_gpus",
    "ready_path",
)


def _command(raw: Any, where: str, port: int | None) -> tuple[str, ...]:
    if isinstance(raw, str):
        try:
            argv = shlex.split(raw)
        except ValueError as e:
            raise ConfigError(f"{where}.command: cannot split {raw!r} ({e})") from None
    elif isinstance(raw, list) and all(isinstance(a, str) for a in raw):
        argv = list(raw)
    else:
        raise ConfigError(f"{where}.command: must be a string or a list of strings")
    if not argv:
        raise ConfigError(f"{where}.command: is empty")
    subs = {"port": str(port), "host": "127.0.0.1", "python": sys.executable}
    out: list[str] = []
    for a in argv:
        try:
            out.append(a.format(**subs))
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(
                f"{where}.command: unknown placeholder in {a!r} ({e}); use {{port}}, {{host}} or "
                "{python}"
            ) from None
    if out[0] == "perwatt":
        # The server runs the same perwatt as the experiment, not whatever PATH finds first.
        out = [sys.executable, "-m", "perwatt", *out[1:]]
    return tuple(out)


def _server(raw: Any, i: int) -> ServerSpec:
    where = f"server[{i}]"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a table ([[server]])")
    _keys(raw, _SERVER_KEYS, where)
    label = _str(raw, "label", where, None)
    if label is None:
        raise ConfigError(f"{where}.label: missing (a short name such as 'bf16')")
    cmd_raw = raw.get("command")
    url_raw = _str(raw, "url", where, None)
    if cmd_raw is None and url_raw is None:
        raise ConfigError(f"{where}: give a command to launch, or the url of a running server")
    port: int | None = None
    if "port" in raw:
        port = _int(raw, "port", where, 0, lo=1)
        if port > 65535:
            raise ConfigError(f"{where}.port: must be <= 65535, got {port}")
    command = None
    if cmd_raw is not None:
        if port is None:
            raise ConfigError(
                f"{where}.port: missing; a launched server needs a port (and the command "
                "should pass it, e.g. --port {port})"
            )
        command = _command(cmd_raw, f"{where}", port)
    url = url_raw or "http://127.0.0.1:{port}/v1"
    try:
        url = url.format(port=port, host="127.0.0.1")
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"{where}.url: unknown placeholder ({e})") from None
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}.url: must start with http:// or https://, got {url!r}")
    env = raw.get("env", {})
    if not isinstance(env, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise ConfigError(f'{where}.env: must be a table of strings, e.g. {{ HF_HOME = "/data" }}')
    ready = _str(raw, "ready_path", where, "/models") or "/models"
    return ServerSpec(
        label=label,
        command=command,
        url=url.rstrip("/"),
        port=port,
        model=_str(raw, "model", where, None),
        env=dict(env),
        num_gpus=_int(raw, "num_gpus", where, 1, lo=1),
        ready_path=ready if ready.startswith("/") else "/" + ready,
        where=where,
    )


def _loads(t: Mapping[str, Any]) -> tuple[LoadSpec, ...]:
    _keys(t, _LOAD_KEYS, "load")
    conc = _list(t, "max_concurrency", "load")
    rate = _list(t, "request_rate", "load")
    if conc and rate:
        raise ConfigError(
            "load: give max_concurrency or request_rate, not both (results are matched on one "
            "load axis)"
        )
    if not conc and not rate:
        raise ConfigError("load.max_concurrency: missing (or give load.request_rate)")
    out: list[LoadSpec] = []
    for c in conc:
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise ConfigError(f"load.max_concurrency: {c!r} is not a whole number >= 1")
        out.append(LoadSpec(kind="concurrency", value=float(c)))
    for r in rate:
        if isinstance(r, str) and r.strip().lower() in ("inf", "infinity"):
            out.append(LoadSpec(kind="rate", value=None))
            continue
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not r > 0:
            raise ConfigError(f'load.request_rate: {r!r} is not a number > 0 (or "inf")')
        out.append(
            LoadSpec(kind="rate", value=None if math.isinf(r) else float(r)),
        )
    tags = [ld.tag for ld in out]
    for i, tg in enumerate(tags):
        if tg in tags[:i]:
            raise ConfigError(f"load: level {tg} is given twice")
    return tuple(out)


def _settings(t: Mapping[str, Any]) -> tuple[GPUSetting, ...]:
    _keys(t, _GPU_KEYS, "gpu")
    limits = _list(t, "power_limits_w", "gpu")
    clocks = _list(t, "sm_clocks_mhz", "gpu")
    for w in limits:
        if (
            isinstance(w, bool)
            or not isinstance(w, (int, float))
            or not (math.isfinite(w) and w > 0)
        ):
            raise ConfigError(f"gpu.power_limits_w: {w!r} is not a number of watts > 0")
    for c in clocks:
        if isinstance(c, bool) or not isinstance(c, int) or c <= 0:
            raise ConfigError(f"gpu.sm_clocks_mhz: {c!r} is not a whole number of MHz > 0")
    if len(set(limits)) != len(limits) or len(set(clocks)) != len(clocks):
        raise ConfigError("gpu: a power limit or clock is given twice")
    return tuple(
        GPUSetting(power_limit_w=None if w is None else float(w), sm_clock_mhz=c)
        for w in (limits or [None])
        for c in (clocks or [None])
    )


def _slo(t: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in t:
        if k not in SLO_KEYS:
            raise ConfigError(
                f"slo.{k}: unknown SLO key; use METRIC_STAT_ms with METRIC in "
                f"{', '.join(SLO_METRICS)} and STAT in {', '.join(SLO_STATS)} (e.g. tpot_p90_ms)"
            )
        out[k] = _num(t, k, "slo", 0.0, lo=0.0, lo_open=True)
    return out


def _path(base: Path, v: str) -> Path:
    p = Path(v).expanduser()
    return p if p.is_absolute() else base / p


def parse_experiment(
    doc: Mapping[str, Any], *, base_dir: Path, path: Path | None = None
) -> ExperimentConfig:
    """Validate a parsed experiment document (see the module docstring)."""
    _keys(doc, _TOP, "")
    ex = _table(doc, "experiment")
    _keys(ex, _EXPERIMENT_KEYS, "experiment")
    name = _str(ex, "name", "experiment", None) or (path.stem if path else "experiment")
    out = _str(ex, "out", "experiment", None)
    gpus = _list(ex, "gpus", "experiment") or [0]
    for g in gpus:
        if isinstance(g, bool) or not isinstance(g, int) or g < 0:
            raise ConfigError(f"experiment.gpus: {g!r} is not a GPU index")

    wt = _table(doc, "workload")
    _keys(wt, _WORKLOAD_KEYS, "workload")
    endpoint = wt.get("endpoint", "completions")
    if endpoint not in ("completions", "chat"):
        raise ConfigError(f"workload.endpoint: must be completions or chat, got {endpoint!r}")
    dataset = _str(wt, "dataset", "workload", None)
    dataset_path = _path(base_dir, dataset) if dataset else None
    if dataset_path is not None and not dataset_path.is_file():
        raise ConfigError(f"workload.dataset: {dataset_path} does not exist")
    ignore_eos = wt.get("ignore_eos", True)
    if not isinstance(ignore_eos, bool):
        raise ConfigError("workload.ignore_eos: must be true or false")
    out_len: int | None = _int(wt, "output_len", "workload", 128, lo=1)
    if dataset_path is not None and "output_len" not in wt:
        out_len = None  # the dataset's own lengths
    workload = WorkloadSpec(
        endpoint=endpoint,
        num_prompts=_int(wt, "num_prompts", "workload", 100, lo=1),
        input_len=_int(wt, "input_len", "workload", 1024, lo=1),
        output_len=out_len,
        input_dist=_str(wt, "input_dist", "workload", "fixed") or "fixed",
        output_dist=_str(wt, "output_dist", "workload", "fixed") or "fixed",
        dataset=dataset_path,
        ignore_eos=ignore_eos,
        seed=_int(wt, "seed", "workload", 0),
        timeout_s=_num(wt, "timeout_s", "workload", 600.0, lo=0.0, lo_open=True),
    )
    lt = _table(doc, "load")
    loads = _loads(lt)
    burst = _num(lt, "burstiness", "load", 1.0, lo=0.0, lo_open=True)

    settings = _settings(_table(doc, "gpu"))
    slo = _slo(_table(doc, "slo"))
    at = _table(doc, "analysis")
    _keys(at, _ANALYSIS_KEYS, "analysis")
    et = _table(doc, "economics")
    _keys(et, _ECONOMICS_KEYS, "economics")
    economics = EconomicsSpec(
        price_per_kwh=_num(et, "price_per_kwh", "economics", DEFAULT_PRICE_PER_KWH_USD, lo=0.0),
        pue=_num(et, "pue", "economics", DEFAULT_PUE, lo=1.0),
        site_gpus=_int(et, "site_gpus", "economics", 1000, lo=1),
        utilization=_num(et, "utilization", "economics", 1.0, lo=0.0, lo_open=True, hi=1.0),
    )
    quality = None
    if "quality" in doc:
        qt = _table(doc, "quality")
        _keys(qt, _QUALITY_KEYS, "quality")
        prompts = _str(qt, "prompts", "quality", None)
        if prompts is None:
            raise ConfigError("quality.prompts: missing (a JSONL prompt file)")
        qp = _path(base_dir, prompts)
        if not qp.is_file():
            raise ConfigError(f"quality.prompts: {qp} does not exist")
        quality = QualitySpec(
            prompts=qp,
            max_tokens=_int(qt, "max_tokens", "quality", 64, lo=1),
            min_top1_agreement=(
                _num(qt, "min_top1_agreement", "quality", 0.0, lo=0.0, hi=1.0)
                if "min_top1_agreement" in qt
                else None
            ),
            min_exact_match=(
                _num(qt, "min_exact_match", "quality", 0.0, lo=0.0, hi=1.0)
                if "min_exact_match" in qt
                else None
            ),
        )

    raw_servers = doc.get("server", [])
    if not isinstance(raw_servers, list):
        raise ConfigError("server: must be an array of tables ([[server]])")
    servers = tuple(_server(s, i) for i, s in enumerate(raw_servers))
    ports = [s.port for s in servers if s.launched]
    for s in servers:
        if s.launched and ports.count(s.port) > 1:
            raise ConfigError(f"{s.where}.port: {s.port} is used by another server")
    if not servers:
        raise ConfigError("server: give at least one [[server]] table")
    baseline = _str(at, "baseline", "analysis", None) or servers[0].label
    es = _str(ex, "energy_source", "experiment", "auto") or "auto"
    return ExperimentConfig(
        name=name,
        path=path,
        # Results go where the user runs perwatt (not beside a recipe shipped in the package).
        out_dir=Path(out).expanduser() if out else Path(f"{name}-results"),
        servers=servers,
        settings=settings,
        loads=loads,
        workload=workload,
        slo=slo,
        baseline=baseline,
        economics=economics,
        quality=quality,
        energy_source=es,
        idle_seconds=_num(ex, "idle_seconds", "experiment", 5.0, lo=0.0),
        ready_timeout_s=_num(ex, "ready_timeout_s", "experiment", 600.0, lo=0.0, lo_open=True),
        stop_grace_s=_num(ex, "stop_grace_s", "experiment", 15.0, lo=0.0),
        gpus=tuple(gpus),
        burstiness=burst,
        sample_interval_s=_num(ex, "sample_interval_s", "experiment", 0.1, lo=0.0, lo_open=True),
    )


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment file; errors name the file and the field."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")  # a BOM from a Windows editor is not TOML
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the experiment file ({e.strerror or e})") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise DataFormatError(f"{p}: not valid TOML ({e})") from None
    try:
        return parse_experiment(doc, base_dir=p.resolve().parent, path=p)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
