"""``run_builtin_bench``: the tiny preset on the CPU, energy from an exact simulated source."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from perwatt.bench.result import load_result
from perwatt.engine import bench as B
from perwatt.errors import ConfigError, PerwattError
from perwatt.meter import SimulatedSource

pytest.importorskip("torch")

POWER_W = 100.0
SMALL: dict[str, Any] = {
    "model": "tiny",
    "input_len": 4,
    "output_len": 3,
    "device": "cpu",
    "min_window_s": 0.0,
    "warmup_steps": 1,
    "accuracy_prompts": 2,
    "accuracy_steps": 2,
    "progress": lambda line: None,
}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a shared 2-core runner, two OpenMP threads spinning against other
    processes made a tiny decode step 10-50x slower (4 ms vs 60-280 ms measured here)."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def docs(paths: list[Path]) -> list[dict[str, Any]]:
    return [dict(load_result(p)) for p in paths]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("sweep")
    paths = B.run_builtin_bench(
        precisions="bf16,int8,int4",
        batches="1,2",
        result_dir=out,
        energy_source=SimulatedSource(power_w=POWER_W),
        label="t",
        **SMALL,
    )
    assert [p.name for p in paths] == [
        f"t-{p}_b{b}.json" for p in ("bf16", "int8", "int4") for b in (1, 2)
    ]
    assert not list(out.glob("*.tmp"))
    return docs(paths)


def test_every_point_has_tokens_per_joule_with_source(sweep: list[dict[str, Any]]) -> None:
    for doc in sweep:
        assert doc["status"] == "complete", doc["partial_reason"]
        assert doc["config"]["engine"] == "builtin"
        assert doc["load"] == {"kind": "batch", "value": float(doc["config"]["batch_size"])}
        e = doc["energy"]
        assert e["source"] == "simulated" and e["measured"] is False
        assert e["basis"] == "steady_state"
        steady = e["steady_state"]
        dec = doc["builtin"]["decode"]
        b = doc["config"]["batch_size"]
        assert dec["tokens"] == b * (3 - 1) * doc["builtin"]["rounds"]
        # a constant 100 W source: energy is power x decode time, up to the gap between the
        # meter stamping a window edge (midpoint of its read) and the source reading its own
        # clock. Idle that gap is µs; on a loaded 2-core CI runner a preempted read stretched it
        # to ~7 ms per edge, 1.7 % of a 0.87 s sum of decode windows. 5 % still fails a window
        # that took in prefill (one more step of three) or lost a round.
        assert steady["total_energy_j"] == pytest.approx(POWER_W * steady["duration_s"], rel=5e-2)
        # the figures derived from that energy are exact
        assert e["output_tokens_per_j"] == pytest.approx(dec["tokens"] / steady["total_energy_j"])
        assert e["j_per_output_token"] * e["output_tokens_per_j"] == pytest.approx(1.0)
        assert dec["tokens_per_s"] == pytest.approx(dec["tokens"] / steady["duration_s"])
        assert e["avg_power_w"] == pytest.approx(POWER_W, rel=5e-2)
        assert e["avg_power_w"] == pytest.approx(steady["total_energy_j"] / steady["duration_s"])
        # prefill and warm-up are reported separately from the steady state
        assert doc["builtin"]["prefill"]["energy_j"] > 0
        assert doc["builtin"]["warmup"]["duration_s"] > 0
        assert doc["builtin"]["load"]["duration_s"] > 0
        w0, w1 = e["steady_state_window_s"]
        assert 0 <= w0 < w1 <= e["whole_run"]["duration_s"] + 1e-9
        tl = doc["timeline"]
        assert tl["t_s"] == sorted(tl["t_s"]) and all(p == POWER_W for p in tl["power_w"])
        assert all(0 <= t <= e["whole_run"]["duration_s"] for t in tl["t_s"])
        # the workload is the batch's prompts (rounds repeat it; compare must not flag rounds)
        assert doc["config"]["num_prompts"] == b
        assert doc["metrics"]["completed"] == b * doc["builtin"]["rounds"]
        assert doc["economics"]["usd_per_million_output_tokens"] > 0
        assert doc["metrics"]["total_output_tokens"] == b * 3 * doc["builtin"]["rounds"]
        assert doc["metrics"]["token_count_source"] == "engine"
        assert any("not a hardware measurement" in w for w in doc["builtin"]["warnings"])


def test_requests_csv_is_readable_by_compare(
    sweep: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    from perwatt.bench.compare import load_requests_csv

    out = next(iter(tmp_path_factory.getbasetemp().glob("sweep*")))
    for doc in sweep:
        rows = load_requests_csv(out / doc["requests_csv"])
        b, rounds = doc["config"]["batch_size"], doc["builtin"]["rounds"]
        assert rows.n == b * rounds
        assert list(rows.output_tokens) == [3.0] * (b * rounds)
        assert float(rows.ttft_ms.mean()) == pytest.approx(doc["metrics"]["ttft_ms"]["mean"])
        assert float(rows.e2el_ms.mean()) == pytest.approx(doc["metrics"]["e2el_ms"]["mean"])


def test_every_point_has_the_accuracy_guard(sweep: list[dict[str, Any]]) -> None:
    by_prec: dict[str, list[dict[str, Any]]] = {}
    for doc in sweep:
        acc = doc["accuracy"]
        assert acc["reference"] == "fp32"  # the CPU reference
        assert acc["kl_mean"] >= 0 and 0 <= acc["top1_agreement"] <= 1
        assert acc["max_rel_err"] >= 0 and acc["positions"] == 2 * 3
        by_prec.setdefault(doc["config"]["precision"], []).append(acc)
    # int4 moves the logits further from the reference than int8 does
    kl = {p: max(a["kl_mean"] for a in accs) for p, accs in by_prec.items()}
    assert kl["int4"] > kl["int8"]


def test_summary_names_the_source(sweep: list[dict[str, Any]], tmp_path: Path) -> None:
    paths = []
    for i, doc in enumerate(sweep[:2]):
        p = tmp_path / f"{i}.json"
        p.write_text(json.dumps(doc))
        paths.append(p)
    table = B.format_summary(paths)
    assert table.count("simulated") == 2
    assert "tokens/J" in table and "KL vs ref" in table
    assert "simulated" in B.format_point(sweep[0])


def test_window_repeats_rounds_until_long_enough(tmp_path: Path) -> None:
    args = {**SMALL, "min_window_s": 0.4, "accuracy_prompts": 0}
    [path] = B.run_builtin_bench(
        precisions="bf16",
        batches="1",
        result_dir=tmp_path,
        energy_source=SimulatedSource(power_w=POWER_W),
        **args,
    )
    doc = load_result(path)
    steady = doc["energy"]["steady_state"]
    assert steady is not None and steady["duration_s"] >= 0.4
    per_round = doc["builtin"]["round_decode_s"]  # type: ignore[typeddict-item]
    assert len(per_round) == doc["builtin"]["rounds"]  # type: ignore[typeddict-item]
    # stops at the first round that reaches the window, not later
    assert sum(per_round[:-1]) < 0.4 <= sum(per_round)
    assert steady["duration_s"] == pytest.approx(sum(per_round))
    assert doc["accuracy"] is None


def test_failed_points_are_recorded_and_the_sweep_continues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    real_load = B._load

    def load(model: str, precision: str, *, batch: int, seq_len: int, **kw: Any) -> Any:
        if batch == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
        if precision == "fp16":  # as plan_precision does for a precision this device lacks
            raise ConfigError("fp16 is not supported on this device")
        return real_load(model, precision, batch=batch, seq_len=seq_len, **kw)

    monkeypatch.setattr(B, "_load", load)
    paths = B.run_builtin_bench(
        precisions="fp16,bf16",
        batches="1,3",
        result_dir=tmp_path,
        energy_source=SimulatedSource(power_w=POWER_W),
        **{**SMALL, "accuracy_prompts": 0},
    )
    by_name = {p.name: load_result(p) for p in paths}
    assert len(by_name) == 4
    bad_prec = by_name["builtin-tiny-fp16_b1.json"]
    assert bad_prec["status"] == "failed"
    assert "fp16" in (bad_prec["partial_reason"] or "")
    oom = by_name["builtin-tiny-bf16_b3.json"]
    assert oom["status"] == "failed"
    assert "smaller --batch" in (oom["partial_reason"] or "")
    assert oom["energy"] is None
    ok = by_name["builtin-tiny-bf16_b1.json"]
    assert ok["status"] == "complete" and ok["energy"] is not None
    assert "failed:" in B.format_summary(paths)


@pytest.mark.parametrize("model", ["no-such-shape", "DIR"])
def test_unresolvable_model_is_one_error_before_the_sweep(tmp_path: Path, model: str) -> None:
    if model == "DIR":
        (tmp_path / "ckpt").mkdir()
        (tmp_path / "ckpt" / "config.json").write_text("{not json")
        model = str(tmp_path / "ckpt")
    out = tmp_path / "out"
    with pytest.raises(PerwattError, match=r"unknown model shape|cannot parse"):
        B.run_builtin_bench(
            precisions="fp32,bf16",
            batches="1,2",
            result_dir=out,
            energy_source=SimulatedSource(power_w=POWER_W),
            **{**SMALL, "model": model},
        )
    assert not out.exists() or not list(out.iterdir())


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"precisions": "bf16,bogus"}, "--precision 'bogus' is unknown"),
        ({"reference_precision": "fp7"}, "reference precision 'fp7' is unknown"),
        ({"input_len": 100_000_000}, "exceed the model's 2048 positions"),
        ({"min_window_s": float("nan")}, "--min-window-s"),
        ({"min_window_s": 1e9}, "--min-window-s"),
        ({"idle_seconds": float("inf")}, "--idle-seconds"),
        ({"pue": float("nan")}, "pue"),
    ],
)
def test_bad_options_fail_before_anything_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kw: dict[str, Any], needle: str
) -> None:
    """Issue 9 §4: an invalid precision was caught only after the reference model's load."""

    def no_load(*a: Any, **k: Any) -> Any:
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(B, "_load", no_load)
    monkeypatch.setattr(B, "reference_run", no_load)
    monkeypatch.setattr(B, "_open_meter", no_load)
    out = tmp_path / "out"
    args: dict[str, Any] = {**SMALL, "precisions": "bf16", "batches": "1", **kw}
    with pytest.raises(ConfigError, match=needle):
        B.run_builtin_bench(result_dir=out, energy_source=SimulatedSource(power_w=1.0), **args)
    assert not out.exists()


def test_cpu_allocator_failure_is_reported_as_out_of_memory() -> None:
    import torch

    try:
        torch.empty(2**50)  # 4 PiB: past any x86-64/arm64 address space, so malloc fails at once
    except RuntimeError as e:
        err: BaseException = e
    else:
        pytest.fail("a 4 PiB CPU allocation succeeded")
    reason = B.failure_reason(err, B.PointSpec(precision="fp32", batch_size=64))
    assert reason.startswith("out of memory at fp32 batch 64: use a smaller --batch")


def test_nan_weights_measure_without_accuracy_and_say_why(tmp_path: Path) -> None:
    import torch

    from perwatt.engine.generate import load_engine
    from perwatt.engine.weights import export_hf

    src = load_engine("tiny", precision="fp32", device="cpu", max_seq_len=16)
    with torch.no_grad():
        src.model.norm.weight.fill_(float("nan"))
    ckpt = export_hf(src.model, tmp_path / "ckpt")
    (path,) = B.run_builtin_bench(
        precisions="fp32",
        batches="1",
        result_dir=tmp_path / "out",
        energy_source=SimulatedSource(power_w=POWER_W),
        **{**SMALL, "model": str(ckpt)},
    )
    doc = load_result(path)
    assert doc["status"] == "complete" and doc["accuracy"] is None
    assert "reference logits contain NaN/inf" in doc["builtin"]["accuracy_error"]


def test_overflowing_precision_fails_naming_a_wider_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = B.teacher_forced_logits

    def tfl(engine: Any, *a: Any) -> Any:
        fed, logits = real(engine, *a)
        if engine.precision == "fp16":
            logits = [t.fill_(float("inf")) for t in logits]
        return fed, logits

    monkeypatch.setattr(B, "teacher_forced_logits", tfl)
    paths = B.run_builtin_bench(
        precisions="fp16,fp32",
        batches="1",
        result_dir=tmp_path,
        energy_source=SimulatedSource(power_w=POWER_W),
        **SMALL,
    )
    bad, ok = (load_result(p) for p in paths)
    assert bad["status"] == "failed"
    assert "(overflow at this precision): use bf16 or fp32" in bad["partial_reason"]
    assert "fp16 batch 1: accuracy guard: fp16 logits" in bad["partial_reason"]
    assert ok["status"] == "complete" and ok["accuracy"] is not None


def test_idle_baseline_gives_idle_share(tmp_path: Path) -> None:
    # Nothing sets the simulated load, so the source draws its idle 60 W all the time: the idle
    # share of the decode energy must be 1 and the idle power 60 W.
    [path] = B.run_builtin_bench(
        precisions="bf16",
        batches="1",
        result_dir=tmp_path,
        energy_source=SimulatedSource(idle_w=60.0, busy_w=300.0),
        idle_seconds=0.3,  # long against scheduling delays on a busy CI machine
        **{**SMALL, "accuracy_prompts": 0},
    )
    e = load_result(path)["energy"]
    assert e is not None
    assert e["idle_power_w"] == pytest.approx(60.0, rel=1e-2)
    assert e["idle_share"] == pytest.approx(1.0, rel=1e-2)
    assert e["idle_subtracted"] is False


def test_estimated_source_is_labelled_estimated(tmp_path: Path) -> None:
    [path] = B.run_builtin_bench(
        precisions="bf16",
        batches="1",
        result_dir=tmp_path,
        energy_source="estimated",
        **{**SMALL, "accuracy_prompts": 0},
    )
    doc = load_result(path)
    assert doc["energy"] is not None
    assert doc["energy"]["source"] == "estimated" and doc["energy"]["measured"] is False
    assert doc["conditions"]["energy_source"] == "estimated"


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"batches": "1,x"}, "--batch"),
        ({"batches": "0"}, ">= 1"),
        ({"precisions": ""}, "--precision"),
        ({"output_len": 1}, "--output-len"),
        ({"min_window_s": -1.0}, "--min-window-s"),
        ({"idle_seconds": -1.0}, "--idle-seconds"),
    ],
)
def test_bad_arguments(tmp_path: Path, kw: dict[str, Any], needle: str) -> None:
    args: dict[str, Any] = {
        **SMALL,
        "precisions": "bf16",
        "batches": "1",
        "result_dir": tmp_path,
        "energy_source": SimulatedSource(power_w=1.0),
        **kw,
    }
    with pytest.raises(ConfigError, match=needle):
        B.run_builtin_bench(**args)


def test_make_bench_main_job_writes_results_and_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """benchmarks/main.py (what `make bench` runs), shrunk to one quick point."""
    import importlib.util

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "main.py"
    spec = importlib.util.spec_from_file_location("perwatt_make_bench_main", script)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    argv = ["--result-dir", str(tmp_path), "--device", "cpu", "--energy-source", "simulated"]
    argv += ["--model", "tiny", "--precisions", "bf16", "--batches", "2"]
    argv += ["--input-len", "4", "--output-len", "3", "--min-window-s", "0"]
    assert mod.main(argv) == 0
    out = capsys.readouterr().out
    assert "simulated" in out and "tokens/J" in out
    assert (tmp_path / "report.html").stat().st_size > 0
    [doc_path] = tmp_path.glob("*.json")
    doc = load_result(doc_path)
    assert doc["status"] == "complete" and doc["accuracy"] is not None


# ---------------------------------------------------------------------- accuracy guard wording
def test_reference_out_of_memory_counts_prompts_not_a_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    real_load = B._load

    def load(model: str, precision: str, *, batch: int, seq_len: int, **kw: Any) -> Any:
        if precision == "fp32":  # the CPU reference only: the int8 point itself fits
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
        return real_load(model, precision, batch=batch, seq_len=seq_len, **kw)

    monkeypatch.setattr(B, "_load", load)
    lines: list[str] = []
    (path,) = B.run_builtin_bench(
        precisions="int8",
        batches="1",
        result_dir=tmp_path,
        energy_source=SimulatedSource(power_w=POWER_W),
        **{**SMALL, "accuracy_prompts": 4, "progress": lines.append},
    )
    doc = load_result(path)
    assert doc["status"] == "complete" and doc["accuracy"] is None
    why = doc["builtin"]["accuracy_error"]
    # 4 prompts of min(input_len, 64) = 4 tokens, min(output_len - 1, 2) = 2 decode steps
    assert "fp32 accuracy reference (4 prompts of 4 tokens, 2 decode steps)" in why
    assert "out of memory" in why and "without the accuracy guard" in why
    assert "batch" not in why  # it is not a benchmark point, and --batch does not size it
    assert any(why in line for line in lines)


@pytest.mark.parametrize(
    ("err", "n", "want"),
    [
        (
            ConfigError("bad weights"),
            1,
            "the bf16 accuracy reference (1 prompt of 64 tokens, 8 decode steps): bad weights",
        ),
        (
            ValueError("boom"),
            3,
            "the bf16 accuracy reference (3 prompts of 64 tokens, 8 decode steps) failed "
            "(ValueError: boom)",
        ),
    ],
)
def test_reference_failure_reason_wording(err: Exception, n: int, want: str) -> None:
    assert B.reference_failure_reason(err, "bf16", n_prompts=n, prompt_len=64, steps=8) == want


def test_accuracy_note_counts_prompts_and_positions(sweep: list[dict[str, Any]]) -> None:
    for doc in sweep:
        note = doc["accuracy"]["note"]
        b = doc["config"]["batch_size"]
        # SMALL: 2 prompts of 4 tokens, 2 forced decode steps -> 3 positions per prompt
        assert "2 prompts of 4 random tokens x 3 positions each" in note
        at_a_time = "1 prompt at a time" if b == 1 else "2 prompts at a time"
        assert at_a_time in note and "batch" not in note


# ---------------------------------------------------------------------- perwatt quantize dirs
@pytest.fixture(scope="module")
def qdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from perwatt.engine.quantized_dir import quantize_model

    return quantize_model(
        "tiny", "int4", tmp_path_factory.mktemp("quant") / "tiny-int4", seed=3, device="cpu"
    ).directory


def test_bench_loads_a_quantize_dir_and_references_its_weights(
    qdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, int]] = []
    real = B.reference_run

    def spy(model: str, **kw: Any) -> Any:
        seen.append((model, kw["load_kw"]["seed"]))
        return real(model, **kw)

    monkeypatch.setattr(B, "reference_run", spy)
    (path,) = B.run_builtin_bench(
        precisions="int4",
        batches="1",
        result_dir=tmp_path,
        energy_source=SimulatedSource(power_w=POWER_W),
        seed=0,  # the prompts' seed; the weights' seed (3) comes from the manifest
        **{**SMALL, "model": str(qdir)},
    )
    doc = load_result(path)
    assert doc["status"] == "complete", doc["partial_reason"]
    assert path.name == "builtin-tiny-int4-int4_b1.json"
    assert doc["config"]["model"] == str(qdir) and doc["config"]["precision"] == "int4"
    q = doc["builtin"]["quantized"]
    assert q["source"] == "tiny" and q["seed"] == 3 and q["group_size"] == 128
    assert doc["builtin"]["engine"]["weights"] == str(qdir / "model.perwatt.safetensors")
    assert seen == [("tiny", 3)]  # the reference holds the weights that were quantized
    assert doc["accuracy"] is not None and doc["accuracy"]["reference"] == "fp32"


def test_bench_of_a_quantize_dir_at_another_precision_names_the_flag(
    qdir: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"holds int4 weights .*bench it with --precision int4"):
        B.run_builtin_bench(
            precisions="bf16",  # another precision than the directory holds
            batches="1",
            result_dir=tmp_path / "out",
            energy_source=SimulatedSource(power_w=POWER_W),
            **{**SMALL, "model": str(qdir)},
        )
    assert not (tmp_path / "out").exists()
    # no precision given (what `perwatt bench` passes once its --precision defaults to None)
    (path,) = B.run_builtin_bench(
        precisions=None,
        batches="1",
        result_dir=tmp_path / "out",
        energy_source=SimulatedSource(power_w=POWER_W),
        **{**SMALL, "model": str(qdir), "accuracy_prompts": 0},
    )
    assert load_result(path)["config"]["precision"] == "int4"
    (path,) = B.run_builtin_bench(
        precisions=None,
        batches="1",
        result_dir=tmp_path / "out",
        energy_source=SimulatedSource(power_w=POWER_W),
        **{**SMALL, "accuracy_prompts": 0},
    )
    assert load_result(path)["config"]["precision"] == "bf16"


def test_bench_of_a_quantized_file_defaults_to_its_precision(qdir: Path, tmp_path: Path) -> None:
    weights = qdir / "model.perwatt.safetensors"  # the file, not the directory: no manifest
    (path,) = B.run_builtin_bench(
        precisions=None,
        batches="1",
        result_dir=tmp_path / "out",
        energy_source=SimulatedSource(power_w=POWER_W),
        quantized_path=str(weights),
        **{**SMALL, "accuracy_prompts": 0, "seed": 3},
    )
    doc = load_result(path)
    assert doc["status"] == "complete", doc["partial_reason"]
    assert doc["config"]["precision"] == "int4"  # what the file records, not bf16
    assert doc["builtin"]["engine"]["weights"] == str(weights)


def test_bench_of_a_quantize_dir_without_its_reference_says_why(tmp_path: Path) -> None:
    import json
    import shutil

    from perwatt.engine.generate import load_engine
    from perwatt.engine.quantized_dir import QUANTIZED_MANIFEST, quantize_model
    from perwatt.engine.weights import export_hf

    # random weights drawn on another device type: a reference here would hold other values
    q = quantize_model("tiny", "int8", tmp_path / "q", device="cpu").directory
    manifest = json.loads((q / QUANTIZED_MANIFEST).read_text())
    (q / QUANTIZED_MANIFEST).write_text(json.dumps({**manifest, "weights_device": "cuda"}))
    # a checkpoint that was deleted after quantizing
    src = load_engine("tiny", precision="fp32", device="cpu", max_seq_len=16)
    ckpt = export_hf(src.model, tmp_path / "ckpt")
    q2 = quantize_model(str(ckpt), "int8", tmp_path / "q2", device="cpu").directory
    shutil.rmtree(ckpt)
    for d, why in ((q, "drawn on cuda"), (q2, "is gone")):
        (path,) = B.run_builtin_bench(
            precisions="int8",
            batches="1",
            result_dir=tmp_path / "out",
            energy_source=SimulatedSource(power_w=POWER_W),
            **{**SMALL, "model": str(d)},
        )
        doc = load_result(path)
        assert doc["status"] == "complete" and doc["accuracy"] is None
        assert why in doc["builtin"]["accuracy_error"]


# ---------------------------------------------------------------------- one document header
def test_server_and_builtin_documents_share_one_header(
    sweep: list[dict[str, Any]], tmp_path: Path
) -> None:
    from perwatt.bench.result import HEADER_KEYS, SCHEMA_VERSION, Conditions
    from perwatt.bench.runner import ServerBenchConfig, run_server_bench
    from perwatt.bench.testing import FakeOpenAIServer, ServerConfig

    with FakeOpenAIServer(ServerConfig(itl_s=0.0)) as s:
        (path,) = run_server_bench(
            ServerBenchConfig(
                url=s.url,
                num_prompts=2,
                max_concurrencies=(2,),
                input_len=8,
                output_len=4,
                result_dir=tmp_path,
                sources=(SimulatedSource(power_w=POWER_W),),
                log=lambda msg: None,
            )
        )
    server = dict(load_result(path))
    builtin = sweep[0]
    for doc in (server, builtin):
        assert tuple(doc)[: len(HEADER_KEYS)] == HEADER_KEYS  # the header, in order
        assert doc["schema"] == SCHEMA_VERSION
        assert doc["created_utc"].endswith("Z") and len(doc["created_utc"]) == 20
    body = ("config", "load", "conditions", "metrics", "energy", "economics", "accuracy")
    tail = ("timeline", "requests_csv")
    assert tuple(server) == (*HEADER_KEYS, *body, *tail)
    assert tuple(builtin) == (*HEADER_KEYS, *body, *tail, "builtin")
    assert server["perwatt_version"] == builtin["perwatt_version"]
    # the same conditions, from the same code: the server run only adds which sources exactly
    schema_keys = tuple(Conditions.__annotations__)
    assert tuple(builtin["conditions"]) == schema_keys
    assert tuple(server["conditions"]) == (*schema_keys, "energy_source_detail")
    same = ("host", "cpu", "python", "torch", "energy_source", "gpus")
    assert {k: server["conditions"][k] for k in same} == {k: builtin["conditions"][k] for k in same}


def test_point_line_gives_the_guard_verdict_and_marks_emulation() -> None:
    """Issue 9: int4 top-1 0.25 was printed with no verdict; emulated fp8 J/token unmarked."""
    from perwatt.bench.guard import GuardThresholds
    from perwatt.bench.result import example_result

    doc: Any = example_result()
    doc["config"]["precision"] = "int4"
    doc["config"]["batch_size"] = 4
    doc["accuracy"] = {"reference": "fp32", "kl_mean": 0.103, "top1_agreement": 0.25}
    doc["builtin"] = {"decode": {"tokens_per_s": 100.0}, "emulated": True}
    line = B.format_point(doc)
    assert "guard FAIL (top-1 0.25 < 0.9; KL 0.103 > 0.1)" in line
    assert "tok/J (simulated) (emulated: no energy claim)" in line
    off = GuardThresholds(min_top1_agreement=None, max_kl_mean=0.5)
    assert "guard pass" in B.format_point(doc, off)
