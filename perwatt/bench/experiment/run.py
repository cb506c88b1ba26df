"""``run_experiment``: every point of an experiment file, resumable, one server at a time.

::

    check everything (commands found, ports free, GPU values in range, the flag) ── nothing runs
    start the GPU actuator when a point changes the GPU
    for each server configuration with unfinished points:
        launch, wait until ready (failure: its points are marked failed with the log's tail)
        measure idle power once; record the quality-guard answers when prompts are given
        (the idle meter and every point open the energy source afresh: a meter closes its
        sources when it stops)
        for each GPU setting: apply it (power limit / locked clock; the default restores)
            for each load level: perwatt's bench runner (one result JSON + requests CSV),
                per-request energy attributed into the CSV, point.json written
                the server died? this point and the rest of its points: failed, with the log
        stop the server (SIGTERM, then SIGKILL, to its process group)
    restore the GPU (also on Ctrl-C, crash and SIGKILL: see perwatt.meter.actuation)

Layout of the output folder::

    OUT/points/<server>/<setting>/<load>/point.json      the point's status and figures' file
    OUT/points/<server>/<setting>/<load>/<label>_<load>.json, .requests.csv   bench result
    OUT/servers/<server>.log, <server>.json               the server's log, idle and readiness
    OUT/quality/<server>.json                             its answers to the guard prompts
    OUT/actuation.journal                                 every GPU change and its restore

A point is *finished* when its ``point.json`` says ``complete`` or ``failed`` and its
fingerprint (command, workload, GPU setting, load, energy source) matches the file: a re-run skips
it. Ctrl-C stops the point in progress (its result is kept, marked partial, and re-measured next
time) and :class:`ExperimentInterrupted` says what is missing.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from perwatt.bench.experiment.attribution import attribute_result
from perwatt.bench.experiment.config import ExperimentConfig, GPUSetting, Point, ServerSpec
from perwatt.bench.experiment.server import ServerFailure, ServerProcess, check_launchable
from perwatt.bench.experiment.store import (
    is_finished,
    point_dir,
    point_doc,
    read_point,
    write_json,
)
from perwatt.bench.quality import generate_answers, load_prompts
from perwatt.bench.result import load_result
from perwatt.bench.runner import ServerBenchConfig, run_server_bench
from perwatt.errors import ConfigError, PerwattError, SourceUnavailableError
from perwatt.meter.actuation import GPUActuator, check_gpu_settings, read_gpu_facts
from perwatt.meter.detect import close_sources, open_sources
from perwatt.meter.meter import Meter

FLAG: Final = "--i-understand-this-changes-clocks"


class ExperimentInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the experiment; ``outcome`` says what was measured and what is missing."""

    def __init__(self, outcome: ExperimentOutcome) -> None:
        super().__init__()
        self.outcome = outcome


@dataclass(slots=True)
class ExperimentOutcome:
    """What one ``run_experiment`` call did."""

    out_dir: Path
    measured: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    dry_run: bool = False
    plan: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "measured": self.measured,
            "skipped": self.skipped,
            "failed": self.failed,
            "missing": self.missing,
            "dry_run": self.dry_run,
        }


# --------------------------------------------------------------------------- checks
def _is_local(url: str) -> bool:
    host = (urlsplit(url).hostname or "").strip("[]")
    return host in ("127.0.0.1", "localhost", "::1", "0.0.0.0")


def check_before_launch(
    config: ExperimentConfig,
    todo: Sequence[Point],
    *,
    allow_gpu_changes: bool,
    dry_run: bool,
    nvml_factory: Callable[[], Any] | None = None,
) -> list[str]:
    """Everything that can be checked without launching; ConfigError naming the field.

    Returns notes for the dry-run plan (e.g. that the GPU range could not be read)."""
    notes: list[str] = []
    servers = {p.server.label: p.server for p in todo}
    for spec in servers.values():
        check_launchable(spec)
    if config.energy_source.strip().lower() == "auto":
        remote = [s for s in config.servers if not _is_local(s.url)]
        if remote:
            raise ConfigError(
                f"experiment.energy_source: 'auto' meters this machine, but {remote[0].where}.url "
                f"{remote[0].url} is elsewhere; name the server's source (dcgm:URL, "
                "prometheus:URL)"
            )
    changing = [p for p in todo if p.setting.changes_gpu]
    if not changing:
        return notes
    limits = sorted({p.setting.power_limit_w for p in changing if p.setting.power_limit_w})
    clocks = sorted({p.setting.sm_clock_mhz for p in changing if p.setting.sm_clock_mhz})
    field_name = "gpu.power_limits_w" if limits else "gpu.sm_clocks_mhz"
    if not allow_gpu_changes and not dry_run:
        # Refused before NVML is opened, as the training controller does.
        raise ConfigError(
            f"{field_name}: changing the GPU's power limit or clocks needs the explicit flag "
            f"{FLAG}; without it, remove the values (or run with --dry-run to see the plan)"
        )
    try:
        facts = read_gpu_facts(config.gpus, nvml_factory=nvml_factory)
    except (SourceUnavailableError, ConfigError) as e:
        if dry_run:
            notes.append(f"GPU ranges not checked: {e}")
            return notes
        raise ConfigError(f"{field_name}: cannot read the GPU's limits ({e})") from None
    check_gpu_settings(
        facts,
        power_limits_w=limits,
        sm_clocks_mhz=[int(c) for c in clocks],
        field="gpu.power_limits_w",
        clock_field="gpu.sm_clocks_mhz",
    )
    for f in facts:
        rng = f.power_limit_range_w
        notes.append(
            f"gpu{f.index} {f.name}: power limit {f.power_limit_w:g} W"
            + (f" (settable {rng[0]:g}-{rng[1]:g} W)" if rng else "")
            + ("" if f.can_change else f"; cannot change: {f.why_not}")
        )
    return notes


# --------------------------------------------------------------------------- quality
def _record_answers(config: ExperimentConfig, spec: ServerSpec, out_dir: Path) -> dict[str, Any]:
    q = config.quality
    assert q is not None
    prompts = load_prompts(q.prompts)
    try:
        gens, notes = generate_answers(
            prompts,
            spec.url,
            model=spec.model,
            max_tokens=q.max_tokens,
            seed=config.workload.seed,
            timeout_s=config.workload.timeout_s,
        )
    except PerwattError as e:
        doc: dict[str, Any] = {"status": "failed", "reason": str(e), "answers": []}
    else:
        doc = {
            "status": "complete",
            "reason": None,
            "notes": list(notes),
            "answers": [
                {
                    "id": p.id,
                    "text": g.text,
                    "tokens": list(g.tokens) if g.tokens is not None else None,
                    "logprobs": list(g.logprobs) if g.logprobs is not None else None,
                    "top_logprobs": (
                        [dict(t) for t in g.top_logprobs] if g.top_logprobs is not None else None
                    ),
                    "finish_reason": g.finish_reason,
                }
                for p, g in zip(prompts, gens, strict=True)
            ],
        }
    doc.update(
        {
            "schema": "perwatt.experiment.answers/1",
            "server": spec.label,
            "prompts_file": str(q.prompts),
            "max_tokens": q.max_tokens,
            "seed": config.workload.seed,
            "note": "recorded at the GPU's default setting, right after the server was ready",
        }
    )
    write_json(out_dir / "quality" / f"{spec.label}.json", doc)
    return doc


# --------------------------------------------------------------------------- the run
@dataclass(slots=True)
class _Ctx:
    config: ExperimentConfig
    out_dir: Path
    actuator: GPUActuator | None
    log: Callable[[str], None]
    outcome: ExperimentOutcome


def _apply_setting(ctx: _Ctx, setting: GPUSetting, current: GPUSetting | None) -> None:
    act = ctx.actuator
    if act is None or current == setting:
        return
    if setting.power_limit_w is not None:
        act.set_power_limit_w(setting.power_limit_w)
        ctx.log(f"  power limit set to {setting.power_limit_w:g} W")
    elif current is not None and current.power_limit_w is not None:
        act.restore_power_limit()
        ctx.log("  power limit restored")
    if setting.sm_clock_mhz is not None:
        act.lock_sm_clocks(setting.sm_clock_mhz)
        ctx.log(f"  SM clock locked to {setting.sm_clock_mhz} MHz")
    elif current is not None and current.sm_clock_mhz is not None:
        act.reset_sm_clocks()
        ctx.log("  SM clocks reset")


def _fail_points(
    ctx: _Ctx, points: Sequence[Point], reason: str, tail: str, extra: dict[str, Any]
) -> None:
    for p in points:
        d = point_dir(ctx.out_dir, p)
        if d.exists():
            shutil.rmtree(d)
        write_json(
            d / "point.json",
            point_doc(ctx.config, p, status="failed", reason=reason, tail=tail, extra=extra),
        )
        ctx.outcome.failed.append(p.id)
        ctx.log(f"  {p.id}: failed ({reason})")


def _measure_idle(ctx: _Ctx) -> dict[str, Any]:
    secs = ctx.config.idle_seconds
    if secs <= 0:
        return {"idle_power_w": None, "idle_seconds": 0.0}
    sources = open_sources(ctx.config.energy_source)
    try:
        with Meter(
            sources, sample_interval_s=ctx.config.sample_interval_s, sync_cuda=False
        ) as meter:
            base = meter.idle_baseline(secs)
    finally:
        close_sources(sources)
    return {
        "idle_power_w": base.total_power_w,
        "idle_seconds": base.duration_s,
        "idle_sources": dict(base.sources),
    }


def _run_point(
    ctx: _Ctx, point: Point, server: ServerProcess | None, extra: dict[str, Any]
) -> bool:
    """Measure one point; False when the server is gone (the caller fails the rest)."""
    cfg = ctx.config
    w = cfg.workload
    d = point_dir(ctx.out_dir, point)
    if d.exists():  # an unfinished earlier attempt: measured again from scratch
        shutil.rmtree(d)
    d.mkdir(parents=True)
    conc = (int(point.load.value or 1),) if point.load.kind == "concurrency" else (None,)
    rate = (point.load.value,) if point.load.kind == "rate" else (None,)
    bench = ServerBenchConfig(
        url=point.server.url,
        endpoint=w.endpoint,
        model=point.server.model,
        dataset=w.dataset,
        num_prompts=w.num_prompts,
        input_len=w.input_len,
        output_len=w.output_len,
        input_dist=w.input_dist,
        output_dist=w.output_dist,
        ignore_eos=w.ignore_eos,
        request_rates=rate,
        burstiness=cfg.burstiness,
        max_concurrencies=conc,
        result_dir=d,
        label=point.run_label,
        seed=w.seed,
        energy_source=cfg.energy_source,
        num_gpus=point.server.num_gpus,
        price_per_kwh=cfg.economics.price_per_kwh,
        pue=cfg.economics.pue,
        timeout_s=w.timeout_s,
        sample_interval_s=cfg.sample_interval_s,
        log=lambda m: None,
    )
    ctx.log(f"  {point.id}: measuring")
    result: Path | None = None
    try:
        paths = run_server_bench(bench)
        result = paths[0]
    except KeyboardInterrupt:
        found = sorted(d.glob("*.json"))
        write_json(
            d / "point.json",
            point_doc(
                cfg,
                point,
                status="interrupted",
                reason="interrupted (Ctrl-C); measured again on the next run",
                result=next((p for p in found if p.name != "point.json"), None),
                extra=extra,
            ),
        )
        raise
    except PerwattError as e:
        dead = server is not None and not server.alive()
        tail = server.tail() if server is not None else ""
        why = f"the server {server.exit_text()} during the run" if dead and server else str(e)
        write_json(
            d / "point.json",
            point_doc(cfg, point, status="failed", reason=why, tail=tail, extra=extra),
        )
        ctx.outcome.failed.append(point.id)
        ctx.log(f"  {point.id}: failed ({why})")
        return not dead
    doc: dict[str, Any] = dict(load_result(result))
    status: str = doc["status"]
    reason: str | None = doc["partial_reason"]
    tail = ""
    alive = server is None or server.alive()
    if not alive and server is not None:
        status = "failed"
        reason = f"the server {server.exit_text()} during the run" + (
            f" ({doc['partial_reason']})" if doc["partial_reason"] else ""
        )
        tail = server.tail()
    elif status == "partial":
        status = "failed"  # finished, but not a figure to rank: never silently "best"
    att_info: dict[str, Any] = {}
    csv_name = doc.get("requests_csv")
    if csv_name and doc.get("energy"):
        att = attribute_result(doc, result.parent / csv_name)
        if att is not None:
            att_info = {
                "attribution": {
                    "method": att.method,
                    "total_energy_j": att.total_energy_j,
                    "sum_attributed_j": math.fsum(att.energy_j),
                    "requests": len(att.energy_j),
                }
            }
            write_json(
                d / "slices.json",
                {
                    "schema": "perwatt.experiment.slices/1",
                    "edges_s": list(att.slice_edges_s),
                    "energy_j": list(att.slice_energy_j),
                    "prefill_tokens": list(att.slice_prefill_tokens),
                    "decode_tokens": list(att.slice_decode_tokens),
                    "energy_source": doc["energy"]["source"],
                },
            )
    write_json(
        d / "point.json",
        point_doc(
            cfg,
            point,
            status=status,
            reason=reason,
            result=result,
            tail=tail,
            extra={**extra, **att_info},
        ),
    )
    if status == "complete":
        ctx.outcome.measured.append(point.id)
        en = doc.get("energy") or {}
        tpj = en.get("output_tokens_per_j")
        ctx.log(
            f"  {point.id}: complete"
            + (f", {tpj:.4g} output tokens/J ({en.get('source')})" if tpj else "")
        )
    else:
        ctx.outcome.failed.append(point.id)
        ctx.log(f"  {point.id}: {status} ({reason})")
    return alive


def _run_server(ctx: _Ctx, spec: ServerSpec, points: Sequence[Point]) -> None:
    cfg = ctx.config
    server: ServerProcess | None = None
    srv_doc: dict[str, Any] = {"server": spec.label, "command": spec.describe(), "url": spec.url}
    srv_json = ctx.out_dir / "servers" / f"{spec.label}.json"
    ctx.log(f"{spec.label}: {spec.describe()}")
    try:
        if spec.command is not None:
            server = ServerProcess(
                spec,
                log_path=ctx.out_dir / "servers" / f"{spec.label}.log",
                ready_timeout_s=cfg.ready_timeout_s,
                stop_grace_s=cfg.stop_grace_s,
            )
            try:
                server.start()
                ready = server.wait_ready()
            except ServerFailure as e:
                srv_doc.update({"status": "failed", "reason": str(e), "log_tail": e.tail})
                write_json(srv_json, srv_doc)
                _fail_points(ctx, points, str(e), e.tail, {"server_log": f"{spec.label}.log"})
                return
            ctx.log(f"  ready after {ready:.1f} s")
            srv_doc["ready_after_s"] = ready
        idle = _measure_idle(ctx)
        srv_doc.update(idle)
        if idle["idle_power_w"] is not None:
            ctx.log(f"  idle power {idle['idle_power_w']:.4g} W over {idle['idle_seconds']:g} s")
        if cfg.quality is not None:
            q = _record_answers(cfg, spec, ctx.out_dir)
            ctx.log(f"  quality-guard answers: {q['status']}")
        srv_doc["status"] = "ran"
        write_json(srv_json, srv_doc)
        extra = {
            "idle_power_w": idle["idle_power_w"],
            "server_log": f"{spec.label}.log" if spec.command else None,
        }
        current: GPUSetting | None = None
        remaining = list(points)
        while remaining:
            p = remaining[0]
            if server is not None and not server.alive():
                why = f"the server {server.exit_text()} before this point"
                _fail_points(ctx, remaining, why, server.tail(), extra)
                return
            _apply_setting(ctx, p.setting, current)
            current = p.setting
            remaining.pop(0)
            if not _run_point(ctx, p, server, extra):
                if remaining:
                    assert server is not None
                    why = f"the server {server.exit_text()} before this point"
                    _fail_points(ctx, remaining, why, server.tail(), extra)
                return
    finally:
        if server is not None:
            ctx.log(f"  stopping {spec.label}")
            server.stop()
        if ctx.actuator is not None and ctx.actuator.running:
            # Each server starts from the GPU as it was; errors here must not hide the run's.
            if any(p.setting.power_limit_w is not None for p in points):
                with contextlib.suppress(PerwattError):
                    ctx.actuator.restore_power_limit()
            if any(p.setting.sm_clock_mhz is not None for p in points):
                with contextlib.suppress(PerwattError):
                    ctx.actuator.reset_sm_clocks()


def plan_points(
    config: ExperimentConfig, out_dir: Path, *, retry_failed: bool = False
) -> tuple[list[Point], list[Point]]:
    """(to measure, already finished) in run order."""
    todo: list[Point] = []
    done: list[Point] = []
    for p in config.points():
        doc = read_point(out_dir, p)
        fin = is_finished(config, doc, p)
        if fin and retry_failed and doc is not None and doc.get("status") == "failed":
            fin = False
        (done if fin else todo).append(p)
    return todo, done


def run_experiment(
    config: ExperimentConfig,
    *,
    out_dir: Path | None = None,
    allow_gpu_changes: bool = False,
    dry_run: bool = False,
    retry_failed: bool = False,
    nvml_factory: Callable[[], Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> ExperimentOutcome:
    """Measure every unfinished point (see the module docstring)."""
    say = log or (lambda m: print(m, file=sys.stderr))
    out = Path(out_dir) if out_dir is not None else config.out_dir
    if out.exists() and not out.is_dir():
        raise ConfigError(f"experiment.out: {out} is a file; give a folder")
    todo, done = plan_points(config, out, retry_failed=retry_failed)
    outcome = ExperimentOutcome(out_dir=out, skipped=[p.id for p in done], dry_run=dry_run)
    notes = check_before_launch(
        config,
        todo,
        allow_gpu_changes=allow_gpu_changes,
        dry_run=dry_run,
        nvml_factory=nvml_factory,
    )
    if dry_run:
        outcome.plan = [*notes]
        for p in todo:
            cmd = p.server.describe()
            outcome.plan.append(
                f"{p.id}: {cmd}"
                + (f"; GPU {p.setting.tag}" if p.setting.changes_gpu else "")
                + f"; load {p.load.kind} {p.load.value if p.load.value is not None else 'inf'}"
            )
        outcome.missing = [p.id for p in todo]
        return outcome
    if not todo:
        say(f"nothing to measure: all {len(done)} points are finished in {out}")
        return outcome
    out.mkdir(parents=True, exist_ok=True)
    # Open once here so that a source that does not exist is an error before any launch.
    close_sources(open_sources(config.energy_source))
    actuator: GPUActuator | None = None
    try:
        if any(p.setting.changes_gpu for p in todo):
            actuator = GPUActuator(
                gpu_indices=config.gpus,
                allow_changes=allow_gpu_changes,
                power_limits_w=sorted(
                    {p.setting.power_limit_w for p in todo if p.setting.power_limit_w}
                ),
                sm_clocks_mhz=sorted(
                    {p.setting.sm_clock_mhz for p in todo if p.setting.sm_clock_mhz}
                ),
                nvml_factory=nvml_factory,
                journal_path=out / "actuation.journal",
            )
            actuator.start()
        ctx = _Ctx(config=config, out_dir=out, actuator=actuator, log=say, outcome=outcome)
        say(f"{len(todo)} point(s) to measure, {len(done)} already finished; results in {out}")
        t0 = time.monotonic()
        by_server: dict[str, list[Point]] = {}
        for p in todo:
            by_server.setdefault(p.server.label, []).append(p)
        try:
            for spec in config.servers:
                if spec.label in by_server:
                    _run_server(ctx, spec, by_server[spec.label])
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (perwatt._signals)
            finished = set(outcome.measured) | set(outcome.failed) | set(outcome.skipped)
            outcome.missing = [p.id for p in config.points() if p.id not in finished]
            # from e: interrupt_exit_code() tells Ctrl-C (130) from SIGTERM (143) by the chain
            raise ExperimentInterrupted(outcome) from e
        say(f"measured {len(outcome.measured)} point(s) in {time.monotonic() - t0:.0f} s")
    finally:
        if actuator is not None:
            actuator.close()
    return outcome
