"""``perwatt quantize``'s directories: written once, loaded like quantizing at load, and never
a risk to what was at ``--out`` or to the checkpoint."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from perwatt.engine import Engine, get_config, plan_precision
from perwatt.engine.quant import Int4Linear
from perwatt.errors import ConfigError, DataFormatError

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread: OpenMP threads spinning against other processes on a shared 2-core
    runner made these tiny models several times slower (as in test_bench.py)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _logits(engine: Engine) -> torch.Tensor:
    with torch.no_grad():
        return engine.model(torch.tensor([[256, 1, 2, 3, 4]]))


def _leftovers(parent: Path) -> list[str]:
    """Hidden temporary entries quantize_model may leave beside --out (it must not)."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize(
    ("model", "precision"),
    [("tiny", "int8"), ("tiny", "int4"), ("tiny", "fp8"), ("tiny", "nvfp4"), ("tiny-moe", "int4")],
)
def test_quantize_model_dir_loads_like_quantizing_at_load(
    tmp_path: Path, model: str, precision: str
) -> None:
    from perwatt.engine.generate import load_engine
    from perwatt.engine.quantized_dir import QUANTIZED_WEIGHTS, quantize_model, resolve_quantized

    out = tmp_path / "q"
    qm = quantize_model(model, precision, out, seed=3, device="cpu")
    assert qm.directory == out and qm.precision == precision and qm.seed == 3
    assert qm.source == model and qm.source_kind == "shape" and qm.weights_device == "cpu"
    assert qm.group_size == (128 if precision == "int4" else None)
    assert sorted(p.name for p in out.iterdir()) == [QUANTIZED_WEIGHTS, "perwatt-quantized.json"]
    assert qm.size_bytes == (out / QUANTIZED_WEIGHTS).stat().st_size
    assert _leftovers(tmp_path) == []
    # what serve/bench do with --model OUT: no precision given -> the directory's
    name, prec, path, read = resolve_quantized(str(out), None, None)
    assert (name, prec, path) == (model, precision, str(out / QUANTIZED_WEIGHTS))
    assert read is not None and read.to_dict() == qm.to_dict()
    loaded = load_engine(name, precision=prec, device="cpu", max_seq_len=16, quantized_path=path)
    direct = Engine(model, precision=precision, device="cpu", max_seq_len=16, seed=3)
    torch.testing.assert_close(_logits(loaded), _logits(direct), rtol=0, atol=0)
    other_seed = Engine(model, precision=precision, device="cpu", max_seq_len=16, seed=4)
    assert not torch.equal(_logits(loaded), _logits(other_seed))  # the seed was stored, not 0


def test_quantize_model_from_checkpoint_is_self_contained(tmp_path: Path) -> None:
    import json

    from perwatt.engine.generate import load_engine
    from perwatt.engine.quantized_dir import quantize_model, resolve_quantized
    from perwatt.engine.weights import export_hf

    src = Engine("tiny", precision="fp32", device="cpu", max_seq_len=16, seed=5)
    ckpt = export_hf(src.model, tmp_path / "ckpt")
    (ckpt / "tokenizer_config.json").write_text('{"chat_template": "x"}')
    qm = quantize_model(str(ckpt), "int8", tmp_path / "q8", device="cpu")
    assert qm.source_kind == "checkpoint" and qm.source == str(ckpt.resolve()) and qm.seed is None
    out = tmp_path / "q8"
    assert (out / "config.json").read_text() == (ckpt / "config.json").read_text()
    assert json.loads((out / "tokenizer_config.json").read_text()) == {"chat_template": "x"}
    name, prec, path, _ = resolve_quantized(str(out), "int8", None)
    assert name == str(out) and prec == "int8"
    loaded = load_engine(name, precision=prec, device="cpu", max_seq_len=16, quantized_path=path)
    direct = load_engine(str(ckpt), precision="int8", device="cpu", max_seq_len=16)
    torch.testing.assert_close(_logits(loaded), _logits(direct), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_model(str(out), "int4", tmp_path / "again", device="cpu")
    with pytest.raises(ConfigError, match="would replace the checkpoint"):
        quantize_model(str(ckpt), "int4", ckpt, device="cpu", force=True)


@pytest.mark.parametrize(
    ("precision", "kw", "match"),
    [
        ("fp7", {}, r"unknown precision 'fp7'; perwatt quantize writes fp8, int8, int4, nvfp4"),
        ("bf16", {}, r"bf16 is not quantized: serve or bench it directly with --precision bf16"),
        ("int8", {"group_size": 64}, r"--group-size applies to int4 only"),
        ("int4", {"group_size": 96}, r"group size 96 does not divide"),
    ],
)
def test_quantize_model_rejects_bad_precision_before_writing(
    tmp_path: Path, precision: str, kw: dict[str, int], match: str
) -> None:
    from perwatt.engine.quantized_dir import quantize_model

    with pytest.raises(ConfigError, match=match):
        quantize_model("tiny", precision, tmp_path / "q", device="cpu", **kw)
    assert list(tmp_path.iterdir()) == []  # neither --out nor a temporary directory


def test_quantize_model_unknown_shape_fails_before_writing(tmp_path: Path) -> None:
    from perwatt.engine.quantized_dir import quantize_model

    with pytest.raises(ConfigError, match="no-such-shape"):
        quantize_model("no-such-shape", "int8", tmp_path / "q", device="cpu")
    assert list(tmp_path.iterdir()) == []


def test_quantize_model_existing_out_needs_force_and_force_replaces(tmp_path: Path) -> None:
    from perwatt.engine.quantized_dir import quantize_model, read_quantized_dir

    out = tmp_path / "q"
    quantize_model("tiny", "int8", out, device="cpu")
    with pytest.raises(ConfigError, match=r"already exists; pass --force to replace it"):
        quantize_model("tiny", "int4", out, device="cpu")
    assert read_quantized_dir(out).precision == "int8"  # untouched
    quantize_model("tiny", "int4", out, device="cpu", force=True)
    assert read_quantized_dir(out).precision == "int4"
    assert _leftovers(tmp_path) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    quantize_model("tiny", "int8", empty, device="cpu", force=True)  # an empty directory is fine
    assert read_quantized_dir(empty).precision == "int8"


def test_force_never_replaces_a_directory_quantize_did_not_write(tmp_path: Path) -> None:
    from perwatt.engine.quantized_dir import quantize_model

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(
        ConfigError,
        match=r"holds thesis.tex, which perwatt quantize did not write; refusing to replace it "
        "even with --force",
    ):
        quantize_model("tiny", "int8", mine, device="cpu", force=True)
    assert (mine / "thesis.tex").read_text() == "precious"
    # A manifest is not enough: everything in the directory must be something quantize writes.
    q = tmp_path / "q"
    quantize_model("tiny", "int8", q, device="cpu")
    (q / "notes.txt").write_text("mine")
    (q / "sub").mkdir()
    with pytest.raises(ConfigError, match=r"holds notes.txt, sub/, which perwatt quantize did"):
        quantize_model("tiny", "int4", q, device="cpu", force=True)
    assert (q / "notes.txt").read_text() == "mine" and (q / "sub").is_dir()
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ConfigError, match="is not a directory"):
        quantize_model("tiny", "int8", afile, device="cpu", force=True)
    assert afile.read_text() == "x"
    link = tmp_path / "link"
    link.symlink_to(mine)
    with pytest.raises(ConfigError, match="is not a directory"):
        quantize_model("tiny", "int8", link, device="cpu", force=True)
    assert (mine / "thesis.tex").read_text() == "precious"


def test_force_never_deletes_the_checkpoint_through_a_link_or_dotdot(tmp_path: Path) -> None:

    from perwatt.engine.quantized_dir import quantize_model
    from perwatt.engine.weights import export_hf

    base = tmp_path / "base"
    quantize_model("tiny", "int8", base / "Q", device="cpu")
    src = Engine("tiny", precision="fp32", device="cpu", max_seq_len=16, seed=5)
    ckpt = export_hf(src.model, base / "Q" / "ckpt")  # the checkpoint sits inside the old --out
    os.symlink(base, tmp_path / "link")
    for out in (
        tmp_path / "link" / "Q",
        ckpt / ".." / ".." / "Q",
        tmp_path / "link" / "Q" / "ckpt",
    ):
        with pytest.raises(ConfigError, match="would replace the checkpoint it is quantized from"):
            quantize_model(str(ckpt), "int4", out, device="cpu", force=True)
        assert (ckpt / "config.json").is_file()
    with pytest.raises(ConfigError, match="is inside the checkpoint it is quantized from"):
        quantize_model(str(ckpt), "int4", tmp_path / "link" / "Q" / "ckpt" / "q4", device="cpu")
    assert sorted(p.name for p in ckpt.iterdir()) == sorted(
        p.name for p in (base / "Q" / "ckpt").iterdir()
    )
    assert not (ckpt / "q4").exists()


def test_out_that_appears_during_the_build_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import perwatt.engine.quantized_dir as Q

    out = tmp_path / "out"
    real_save = Q.save_quantized

    def save_while_user_writes(*a: object, **k: object) -> Path:
        out.mkdir()
        (out / "precious.txt").write_text("user data")  # appears while quantizing
        return real_save(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(Q, "save_quantized", save_while_user_writes)
    with pytest.raises(ConfigError, match=r"appeared while quantizing and was left as it is"):
        Q.quantize_model("tiny", "int8", out, device="cpu")  # no --force
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
    assert _leftovers(tmp_path) == []
    # --force checked an empty directory before the build; re-checked before the swap
    (out / "precious.txt").unlink()
    out.rmdir()
    out.mkdir()

    def fill_then_save(*a: object, **k: object) -> Path:
        (out / "precious.txt").write_text("user data")
        return real_save(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(Q, "save_quantized", fill_then_save)
    with pytest.raises(ConfigError, match=r"holds precious.txt, which perwatt quantize did not"):
        Q.quantize_model("tiny", "int8", out, device="cpu", force=True)
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
    assert _leftovers(tmp_path) == []


def test_ctrl_c_between_the_two_renames_puts_the_old_directory_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    import perwatt.engine.quantized_dir as Q

    out = tmp_path / "q"
    Q.quantize_model("tiny", "int8", out, device="cpu")
    before = (out / Q.QUANTIZED_MANIFEST).read_text()
    real_rename = os.rename

    def rename(src: object, dst: object) -> None:
        if Path(str(dst)) == out and str(src).endswith(".tmp"):
            raise KeyboardInterrupt  # after the old one was moved aside, before the new is in
        real_rename(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        Q.quantize_model("tiny", "int4", out, device="cpu", force=True)
    monkeypatch.undo()
    assert (out / Q.QUANTIZED_MANIFEST).read_text() == before
    assert _leftovers(tmp_path) == []


def test_failed_run_removes_the_parent_folders_it_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import perwatt.engine.quantized_dir as Q

    (tmp_path / "kept").mkdir()
    monkeypatch.setattr(Q, "_build_quantized", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        Q.quantize_model("tiny", "int8", tmp_path / "kept" / "a" / "b" / "q", device="cpu")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["kept"]  # kept existed before
    monkeypatch.undo()
    Q.quantize_model("tiny", "int8", tmp_path / "kept" / "a" / "b" / "q", device="cpu")
    assert (tmp_path / "kept" / "a" / "b" / "q" / Q.QUANTIZED_MANIFEST).is_file()


def test_quantize_to_save_builds_no_kernel_layout_copies() -> None:
    from perwatt.engine.quantized_dir import _build_quantized

    plan = plan_precision("int4", CPU)
    if "int4pack-cpu" not in plan.kernel:
        pytest.skip("this torch build has no CPU int4pack kernel")
    model, _ = _build_quantized(
        get_config("tiny"), None, "int4", device=CPU, seed=0, group_size=None
    )
    mods = [m for m in model.modules() if isinstance(m, Int4Linear)]
    assert mods and all(m.kernel == "dequant" for m in mods)
    assert all(m._cpu_weight is None and m._tg_weight is None for m in mods)
    # the engine, which runs the model, still gets the kernel
    engine = Engine("tiny", precision="int4", device="cpu", max_seq_len=16, seed=0)
    assert {m.kernel for m in engine.model.modules() if isinstance(m, Int4Linear)} == {
        "int4pack-cpu"
    }


def test_quantize_model_unwritable_out_is_one_line_error(tmp_path: Path) -> None:

    from perwatt.engine.quantized_dir import quantize_model

    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be")
    with pytest.raises(ConfigError, match=r"cannot write --out .*blocker/q.*choose a writable"):
        quantize_model("tiny", "int8", blocker / "q", device="cpu")
    if os.geteuid() == 0:
        return  # root writes into a read-only directory anyway
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match=r"cannot write --out .*Permission denied"):
            quantize_model("tiny", "int8", ro / "q", device="cpu")
    finally:
        ro.chmod(0o700)
    assert list(ro.iterdir()) == []


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failed_write_leaves_no_partial_dir_and_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    import perwatt.engine.quantized_dir as Q

    out = tmp_path / "q"
    Q.quantize_model("tiny", "int8", out, device="cpu")
    before = (out / Q.QUANTIZED_MANIFEST).read_text()

    def failing_save(path: Path, *a: object, **k: object) -> Path:
        Path(path).write_bytes(b"half a file")  # the crash happens mid-write
        raise exc

    monkeypatch.setattr(Q, "save_quantized", failing_save)
    expected: type[BaseException] = ConfigError if isinstance(exc, OSError) else KeyboardInterrupt
    with pytest.raises(expected, match="No space left" if expected is ConfigError else None):
        Q.quantize_model("tiny", "int4", out, device="cpu", force=True)
    assert (out / Q.QUANTIZED_MANIFEST).read_text() == before  # the old directory is intact
    assert _leftovers(tmp_path) == []
    with pytest.raises(expected):
        Q.quantize_model("tiny", "int4", tmp_path / "new", device="cpu")
    assert not (tmp_path / "new").exists() and _leftovers(tmp_path) == []


def test_resolve_quantized_precision_and_path_rules(tmp_path: Path) -> None:
    from perwatt.engine.quantized_dir import QUANTIZED_WEIGHTS, quantize_model, resolve_quantized

    out = tmp_path / "q"
    quantize_model("tiny", "int4", out, device="cpu")
    with pytest.raises(ConfigError, match=r"holds int4 weights .* use --precision int4"):
        resolve_quantized(str(out), "bf16", None)
    with pytest.raises(ConfigError, match="already a quantized directory; drop --quantized-path"):
        resolve_quantized(str(out), None, str(out))
    # --model SHAPE --quantized-path DIR (the older flag) takes the directory too
    assert resolve_quantized("tiny", None, str(out))[1:3] == ("int4", str(out / QUANTIZED_WEIGHTS))
    # a quantized file without --precision: the precision it records, not bf16
    weights = str(out / QUANTIZED_WEIGHTS)
    assert resolve_quantized("tiny", None, weights) == ("tiny", "int4", weights, None)
    # nothing quantized: bf16 by default, a file passes through
    assert resolve_quantized("tiny", None, None) == ("tiny", "bf16", None, None)
    assert resolve_quantized("tiny", "int8", "w.safetensors") == (
        "tiny",
        "int8",
        "w.safetensors",
        None,
    )


def test_read_quantized_dir_rejects_broken_manifests(tmp_path: Path) -> None:
    from perwatt.engine.quantized_dir import (
        QUANTIZED_MANIFEST,
        QUANTIZED_WEIGHTS,
        quantize_model,
        read_quantized_dir,
    )

    out = tmp_path / "q"
    quantize_model("tiny", "int8", out, device="cpu")
    (out / QUANTIZED_WEIGHTS).unlink()
    with pytest.raises(DataFormatError, match="is missing; quantize again"):
        read_quantized_dir(out)
    (out / QUANTIZED_MANIFEST).write_text("{not json")
    with pytest.raises(DataFormatError, match="cannot read"):
        read_quantized_dir(out)
    (out / QUANTIZED_MANIFEST).write_text('{"format": "perwatt.quantized/1"}')
    with pytest.raises(DataFormatError, match="missing or malformed field"):
        read_quantized_dir(out)


def test_quantize_model_out_of_memory_is_one_line_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import perwatt.engine.quantized_dir as Q

    def oom(*a: object, **k: object) -> None:
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB")

    monkeypatch.setattr(Q, "_build_quantized", oom)
    with pytest.raises(ConfigError, match=r"out of memory quantizing tiny on cpu: .*a GPU"):
        Q.quantize_model("tiny", "int4", tmp_path / "q", device="cpu")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(Q, "_build_quantized", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # a bug stays a traceback, and still cleans up
        Q.quantize_model("tiny", "int4", tmp_path / "q", device="cpu")
    assert list(tmp_path.iterdir()) == []
