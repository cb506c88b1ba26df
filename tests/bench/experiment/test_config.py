"""Experiment files: every bad input is a one-line error naming the field, before any launch."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from perwatt.bench.experiment.config import load_experiment, parse_experiment
from perwatt.bench.experiment.run import run_experiment
from perwatt.errors import ConfigError, DataFormatError

from .conftest import free_port, test_server_command, write_experiment

BASE = {
    "workload": {"num_prompts": 4},
    "load": {"max_concurrency": [1, 4]},
    "server": [
        {"label": "bf16", "command": "perwatt serve --model tiny --port {port}", "port": 9001},
        {"label": "fp8", "url": "http://127.0.0.1:9002/v1"},
    ],
}


def _parse(**over: object) -> object:
    doc = {**BASE, **over}
    return parse_experiment(doc, base_dir=Path("."))


def test_a_valid_file_and_its_points() -> None:
    cfg = parse_experiment(
        {**BASE, "gpu": {"power_limits_w": [300, 400]}, "slo": {"tpot_p90_ms": 50}},
        base_dir=Path("."),
    )
    ids = [p.id for p in cfg.points()]
    assert ids[:3] == ["bf16/pl300W/c1", "bf16/pl300W/c4", "bf16/pl400W/c1"]
    assert len(ids) == 8
    assert cfg.servers[0].command is not None
    # `perwatt` runs as this interpreter's perwatt, with the port filled in.
    assert cfg.servers[0].command[:3] == (sys.executable, "-m", "perwatt")
    assert cfg.servers[0].command[-1] == "9001"
    assert cfg.servers[0].url == "http://127.0.0.1:9001/v1"
    assert cfg.baseline == "bf16" and cfg.slo == {"tpot_p90_ms": 50.0}
    assert cfg.points()[0].run_label == "bf16@pl300W"


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"experimnt": {}}, r"^experimnt: unknown table"),
        ({"workload": {"num_prompt": 3}}, r"^workload\.num_prompt: unknown key"),
        ({"slo": {"tpot_p99": 5}}, r"^slo\.tpot_p99: unknown SLO key"),
        ({"slo": {"tpot_p90_ms": -1}}, r"^slo\.tpot_p90_ms: must be > 0"),
        ({"load": {}}, r"^load\.max_concurrency: missing"),
        ({"load": {"max_concurrency": [1], "request_rate": [2]}}, r"^load: give max_concurrency"),
        ({"load": {"max_concurrency": [0]}}, r"^load\.max_concurrency: 0 is not"),
        ({"gpu": {"power_limits_w": ["300"]}}, r"^gpu\.power_limits_w: '300' is not"),
        ({"analysis": {"baseline": "fp16"}}, r"^analysis\.baseline: 'fp16' is not a server"),
        ({"economics": {"pue": 0.5}}, r"^economics\.pue: must be >= 1"),
        ({"server": [{"label": "a"}]}, r"^server\[0\]: give a command"),
        ({"server": [{"label": "a", "command": "x"}]}, r"^server\[0\]\.port: missing"),
        (
            {"server": [{"label": "a b", "url": "http://127.0.0.1:1/v1"}]},
            r"^server\[0\]\.label: 'a b'",
        ),
        (
            {"server": [{"label": "a", "url": "http://h/v1", "gpus": 2}]},
            r"^server\[0\]\.gpus: unknown key",
        ),
        (
            {"server": [{"label": "a", "command": "x --port {prot}", "port": 5}]},
            r"^server\[0\]\.command: unknown placeholder",
        ),
    ],
)
def test_bad_input_names_the_field(over: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _parse(**over)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    p = tmp_path / "e.toml"
    p.write_text("[workload]\nnum_prompts = = 3\n")
    with pytest.raises(DataFormatError, match=r"e\.toml: not valid TOML"):
        load_experiment(p)
    p.write_text(
        '[load]\nmax_concurrency = [1]\n[slo]\nlatency_ms = 3\n[[server]]\nlabel = "a"\nurl = "http://x/v1"\n'
    )
    with pytest.raises(ConfigError, match=r"e\.toml: slo\.latency_ms: unknown SLO key"):
        load_experiment(p)


def test_command_not_found_before_anything_launches(tmp_path: Path) -> None:
    exp = write_experiment(
        tmp_path,
        [("ok", test_server_command()), ("bad", "no-such-engine-xyz serve --port {port}")],
    )
    with pytest.raises(ConfigError, match=r"server\[1\]\.command: 'no-such-engine-xyz' not found"):
        run_experiment(load_experiment(exp), log=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_port_in_use_before_anything_launches(tmp_path: Path) -> None:
    port = free_port()
    exp = tmp_path / "exp.toml"
    exp.write_text(
        f'[load]\nmax_concurrency = [1]\n[[server]]\nlabel = "a"\n'
        f'command = "{sys.executable} -m perwatt.bench.testing --port {{port}}"\nport = {port}\n'
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        with pytest.raises(ConfigError, match=rf"server\[0\]\.port: {port} is already in use"):
            run_experiment(load_experiment(exp), out_dir=tmp_path / "out", log=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_auto_energy_source_refused_for_a_remote_server() -> None:
    doc = {**BASE, "server": [{"label": "a", "url": "http://gpu-box:8000/v1"}]}
    cfg = parse_experiment(doc, base_dir=Path("."))
    with pytest.raises(ConfigError, match=r"^experiment\.energy_source: 'auto' meters this"):
        run_experiment(cfg, dry_run=True)


def test_fingerprint_changes_with_the_command() -> None:
    a = parse_experiment(BASE, base_dir=Path("."))
    other = dict(BASE)
    other["server"] = [dict(BASE["server"][0], command="perwatt serve --model small --port {port}")]  # type: ignore[index]
    b = parse_experiment(other, base_dir=Path("."))
    assert a.fingerprint(a.points()[0]) != b.fingerprint(b.points()[0])
    assert a.fingerprint(a.points()[0]) == a.fingerprint(a.points()[0])


RECIPES = sorted((Path(__file__).resolve().parents[3] / "examples").rglob("*.toml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_experiment_files_are_valid(path: Path) -> None:
    cfg = load_experiment(path)
    assert len(cfg.points()) >= 2 and len(cfg.servers) == 2
    assert cfg.baseline in {s.label for s in cfg.servers}


def test_recipes_are_shipped() -> None:
    names = {p.name for p in RECIPES}
    assert {
        "cpu-demo.toml",
        "vllm-bf16-vs-fp8.toml",
        "trtllm-fp8-vs-nvfp4.toml",
        "vllm-moe-vs-dense.toml",
    } <= names
