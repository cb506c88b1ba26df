"""``perwatt quantize``: one entry point, :func:`quantize_model`, writes a quantized model into a
directory that ``perwatt serve --model DIR`` and ``perwatt bench --engine builtin --model DIR``
load through :func:`resolve_quantized`. The numbers (formats, phase 1 and phase 2) are
:mod:`perwatt.engine.quant`; this module builds the model with them, writes the directory and
keeps whatever was at ``--out`` safe::

    DIR/
      perwatt-quantized.json        manifest: precision, group size, source, seed, versions
      model.perwatt.safetensors     save_quantized(): quantized linears + every other tensor
      config.json, tokenizer*.json  copied from a checkpoint source (none for a named shape)

The directory is built under a hidden temporary name beside DIR and renamed into place, so a
crash or Ctrl-C leaves either the old DIR or the new one, never half of one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from perwatt import __version__
from perwatt.engine import weights as W
from perwatt.engine.config import ModelConfig, get_config
from perwatt.engine.model import Transformer
from perwatt.engine.oom import is_oom
from perwatt.engine.precision import plan_precision, resolve_device
from perwatt.engine.quant import quantize_in_place, read_quantized_metadata, save_quantized
from perwatt.errors import ConfigError, DataFormatError

QUANTIZED_MANIFEST = "perwatt-quantized.json"
QUANTIZED_WEIGHTS = "model.perwatt.safetensors"
QUANTIZED_FORMAT = "perwatt.quantized/1"
QUANTIZE_PRECISIONS = ("fp8", "int8", "int4", "nvfp4")
# Files of a HF checkpoint besides its weights that the engine (config, tokenizer) or a user
# (chat template, generation defaults) reads; copied so the directory stands on its own.
_CHECKPOINT_SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class QuantizedModel:
    """A directory written by :func:`quantize_model`, as its manifest describes it."""

    directory: Path
    weights_path: Path
    precision: str
    group_size: int | None  # int4 only
    source: str  # a shape name, or the absolute path of the checkpoint it was made from
    source_kind: str  # "shape" (seeded random weights) or "checkpoint"
    seed: int | None  # the random weights' seed (shapes only)
    weights_device: str  # device type the random weights were drawn on: their values depend on it
    size_bytes: int
    duration_s: float = 0.0

    def __post_init__(self) -> None:
        if self.precision not in QUANTIZE_PRECISIONS:
            raise DataFormatError(f"{self.directory}: unknown precision {self.precision!r}")
        if self.source_kind not in ("shape", "checkpoint"):
            raise DataFormatError(f"{self.directory}: unknown source kind {self.source_kind!r}")
        if self.size_bytes < 0 or self.duration_s < 0:
            raise DataFormatError(f"{self.directory}: negative size or duration")

    @property
    def model(self) -> str:
        """What :func:`~perwatt.engine.generate.load_engine` takes with :attr:`weights_path`:
        the shape name, or this directory (its copied config.json and tokenizer)."""
        return self.source if self.source_kind == "shape" else str(self.directory)

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "weights_file": self.weights_path.name,
            "precision": self.precision,
            "group_size": self.group_size,
            "source": self.source,
            "source_kind": self.source_kind,
            "seed": self.seed,
            "weights_device": self.weights_device,
            "size_bytes": self.size_bytes,
        }


def is_quantized_dir(path: str | Path) -> bool:
    p = Path(path).expanduser()
    return p.is_dir() and (p / QUANTIZED_MANIFEST).is_file()


def read_quantized_dir(path: str | Path) -> QuantizedModel:
    """The :class:`QuantizedModel` of a directory written by :func:`quantize_model`."""
    directory = Path(path).expanduser()
    manifest = directory / QUANTIZED_MANIFEST
    try:
        raw = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataFormatError(f"{manifest}: cannot read: {e}") from e
    if not isinstance(raw, dict) or raw.get("format") != QUANTIZED_FORMAT:
        raise DataFormatError(f"{manifest}: not a {QUANTIZED_FORMAT} manifest")
    try:
        weights = directory / str(raw["weights_file"])
        group = raw.get("group_size")
        seed = raw.get("seed")
        qm = QuantizedModel(
            directory=directory,
            weights_path=weights,
            precision=str(raw["precision"]),
            group_size=None if group is None else int(group),
            source=str(raw["source"]),
            source_kind=str(raw["source_kind"]),
            seed=None if seed is None else int(seed),
            weights_device=str(raw.get("weights_device", "cpu")),
            size_bytes=int(raw.get("size_bytes", 0)),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise DataFormatError(f"{manifest}: missing or malformed field ({e})") from e
    if not weights.is_file():
        raise DataFormatError(f"{directory}: {weights.name} is missing; quantize again")
    return qm


def resolve_quantized(
    model: str, precision: str | None, quantized_path: str | Path | None
) -> tuple[str, str, str | None, QuantizedModel | None]:
    """``(model, precision, quantized file, manifest)`` for serve and bench.

    ``model`` may be a directory written by ``perwatt quantize`` (its precision is then the
    default, and another one is an error naming the right flag); ``quantized_path`` may be such
    a directory or the safetensors file itself. ``precision`` None means the file's recorded
    precision for such a file, and bf16 when nothing quantized is given.
    """
    qm: QuantizedModel | None = None
    if is_quantized_dir(model):
        if quantized_path is not None:
            raise ConfigError(
                f"--model {model} is already a quantized directory; drop --quantized-path"
            )
        qm = read_quantized_dir(model)
        load_as = qm.model
    else:
        load_as = model
        if quantized_path is not None and is_quantized_dir(quantized_path):
            qm = read_quantized_dir(quantized_path)
    if qm is not None:
        if precision is not None and precision.lower() != qm.precision:
            raise ConfigError(
                f"{qm.directory} holds {qm.precision} weights (written by perwatt quantize), "
                f"not {precision}; use --precision {qm.precision} or leave it out"
            )
        return load_as, qm.precision, str(qm.weights_path), qm
    qpath = None if quantized_path is None else str(quantized_path)
    if precision is None and qpath is not None:
        # The file records the precision it was saved at (save_quantized): read as bf16 it
        # could only fail to load.
        precision = str(read_quantized_metadata(qpath)["precision"])
    return load_as, precision or "bf16", qpath, None


def _quantize_writes() -> frozenset[str]:
    """The names :func:`quantize_model` puts in a directory: all ``--force`` may replace."""
    return frozenset((QUANTIZED_MANIFEST, QUANTIZED_WEIGHTS, *_CHECKPOINT_SIDE_FILES))


def _same_path(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:  # a bind mount or a second name the resolved paths do not show
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_out_dir(out: Path, source_dir: Path | None, force: bool) -> None:
    if source_dir is not None:
        # Resolved on both sides: a symlinked parent or ``..`` in --out must not slip past and
        # let --force delete the checkpoint (or a directory holding it).
        out_r, src_r = out.resolve(), source_dir.resolve()
        if _same_path(out, source_dir) or out_r in src_r.parents:
            raise ConfigError(
                f"--out {out} would replace the checkpoint it is quantized from ({src_r}); "
                "choose an --out outside it"
            )
        if src_r in out_r.parents:
            raise ConfigError(
                f"--out {out} is inside the checkpoint it is quantized from ({src_r}); "
                "choose an --out outside it"
            )
    if not (out.exists() or out.is_symlink()):
        return
    if not force:
        raise ConfigError(
            f"--out {out} already exists; pass --force to replace it, or choose another --out"
        )
    if out.is_symlink() or not out.is_dir():
        raise ConfigError(
            f"--out {out} exists and is not a directory (a file or a link); remove it or "
            "choose another --out"
        )
    # --force replaces what this command writes, never anything else: a typo in --out must not
    # delete a home directory, and a directory holding a manifest may hold other things too.
    ours = _quantize_writes()
    unexpected = sorted(
        p.name + ("/" if p.is_dir() and not p.is_symlink() else "")
        for p in out.iterdir()
        if p.name not in ours or p.is_symlink() or not p.is_file()
    )
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (
            f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""
        )
        raise ConfigError(
            f"--out {out} holds {shown}, which perwatt quantize did not write; refusing to "
            "replace it even with --force: choose another --out"
        )


def _missing_parents(directory: Path) -> list[Path]:
    """``directory`` and its ancestors that do not exist yet, innermost first."""
    missing: list[Path] = []
    d = directory
    while not (d.exists() or d.is_symlink()) and d != d.parent:
        missing.append(d)
        d = d.parent
    return missing


def _build_quantized(
    cfg: ModelConfig,
    checkpoint: Path | None,
    precision: str,
    *,
    device: torch.device,
    seed: int,
    group_size: int | None,
) -> tuple[nn.Module, int]:
    """The quantized model, built the way :class:`~perwatt.engine.generate.Engine` builds one
    (same seeded values, same order), without a KV cache or a tokenizer, and without the
    device kernels' weight copies (it is only saved)."""
    plan = plan_precision(precision, device, allow_emulated=True)  # storage is the same
    with torch.device("meta"):
        model = Transformer(cfg)
    model.to(plan.compute_dtype)
    if checkpoint is None:

        def source(pname: str, shape: torch.Size) -> Tensor:
            if pname == "output.weight" and cfg.tie_embeddings:
                pname = "tok_embeddings.weight"
            return W.random_tensor(pname, shape, seed, device)

        group = quantize_in_place(
            model,
            precision,
            plan=plan,
            group_size=group_size,
            weight_source=source,
            finalize=False,  # saved, never run: no kernel-layout copies
        )
        W.materialize_meta_(model, device)
        W.init_random_(model, seed)
    else:
        model = model.to_empty(device=device)
        model.tie_weights()
        W.load_hf_weights(model, checkpoint)
        group = quantize_in_place(
            model, precision, plan=plan, group_size=group_size, finalize=False
        )
    model.tie_weights()
    return model, group


def quantize_model(
    model: str,
    precision: str,
    out: str | Path,
    *,
    group_size: int | None = None,
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
) -> QuantizedModel:
    """Quantize ``model`` (a shape name: seeded random weights; or a local HF directory) to
    ``precision`` once and write the directory ``out`` that ``perwatt serve --model OUT`` and
    ``perwatt bench --engine builtin --model OUT`` load (see the layout above).

    Refuses an existing ``out`` unless ``force``, and even then replaces only a directory that
    holds nothing but what this function writes (checked again just before the swap), never
    the checkpoint or a directory containing it. Everything is checked before the model is
    built: unknown precision, unknown shape, unreadable config.json, unwritable ``out``.
    """
    t0 = time.perf_counter()
    prec = precision.strip().lower()
    if prec not in QUANTIZE_PRECISIONS:
        hint = (
            f"{prec} is not quantized: serve or bench it directly with --precision {prec}"
            if prec in ("fp32", "fp16", "bf16")
            else f"unknown precision {precision!r}"
        )
        raise ConfigError(f"{hint}; perwatt quantize writes {', '.join(QUANTIZE_PRECISIONS)}")
    if group_size is not None and prec != "int4":
        raise ConfigError(f"--group-size applies to int4 only, not {prec}")
    src = Path(model).expanduser()
    checkpoint: Path | None = None
    if src.is_dir():
        if is_quantized_dir(src):
            raise ConfigError(
                f"{model} is already quantized ({read_quantized_dir(src).precision}); "
                "quantize the checkpoint it was made from"
            )
        cfg = W.read_hf_config(src)
        checkpoint = src.resolve()
    else:
        cfg = get_config(model)  # an unknown name is a ConfigError listing the shapes
    dev = resolve_device(device)
    out_dir = Path(out).expanduser().absolute()
    _check_out_dir(out_dir, checkpoint, force)
    # Parent folders this run creates are removed again if it fails (only those: one that
    # existed before, or that something else filled meanwhile, stays).
    created = _missing_parents(out_dir.parent)
    ok = False
    try:
        try:
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(
                tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent)
            )
        except OSError as e:
            raise ConfigError(
                f"cannot write --out {out_dir}: {e.strerror or e} ({out_dir.parent}); "
                "choose a writable directory"
            ) from None
        qm = _quantize_into(
            tmp, out_dir, model, cfg, checkpoint, prec, dev, seed, group_size, force, __version__
        )
        ok = True
    finally:
        if not ok:
            for d in created:  # innermost first
                try:
                    d.rmdir()
                except OSError:
                    break
    return dataclasses.replace(qm, duration_s=time.perf_counter() - t0)


def _quantize_into(
    tmp: Path,
    out_dir: Path,
    model: str,
    cfg: ModelConfig,
    checkpoint: Path | None,
    prec: str,
    dev: torch.device,
    seed: int,
    group_size: int | None,
    force: bool,
    version: str,
) -> QuantizedModel:
    """Build, save into ``tmp`` and swap it into ``out_dir``; ``tmp`` is gone afterwards."""
    try:
        qmodel, group = _build_quantized(
            cfg, checkpoint, prec, device=dev, seed=seed, group_size=group_size
        )
        sd = qmodel.state_dict()
        del qmodel
        save_quantized(
            tmp / QUANTIZED_WEIGHTS, sd, cfg=cfg, precision=prec, group_size=group or None
        )
        del sd
        if checkpoint is not None:
            for name in _CHECKPOINT_SIDE_FILES:
                if (checkpoint / name).is_file():
                    shutil.copy2(checkpoint / name, tmp / name)
        qm = QuantizedModel(
            directory=out_dir,
            weights_path=out_dir / QUANTIZED_WEIGHTS,
            precision=prec,
            group_size=group or None,
            source=str(checkpoint) if checkpoint is not None else model,
            source_kind="checkpoint" if checkpoint is not None else "shape",
            seed=None if checkpoint is not None else seed,
            weights_device=dev.type,
            size_bytes=(tmp / QUANTIZED_WEIGHTS).stat().st_size,
        )
        manifest = {
            "format": QUANTIZED_FORMAT,
            **{k: v for k, v in qm.to_dict().items() if k != "directory"},
            "model": cfg.to_dict(),
            "perwatt_version": version,
            "torch": torch.__version__,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / QUANTIZED_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _default_permissions(tmp)
        _swap_into_place(tmp, out_dir, source=checkpoint, force=force)
    except OSError as e:
        raise ConfigError(f"cannot write --out {out_dir}: {e.strerror or e}") from e
    except (MemoryError, RuntimeError) as e:
        if not is_oom(e):
            raise
        other = "a GPU (--device cuda)" if dev.type == "cpu" else "--device cpu"
        raise ConfigError(
            f"out of memory quantizing {model} on {dev}: "
            + (
                "the checkpoint is loaded whole before quantizing; "
                if checkpoint is not None
                else ""
            )
            + f"use a machine with more memory or {other}"
        ) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename
    return qm


def _default_permissions(directory: Path) -> None:
    """mkdtemp makes the directory owner-only (0700) and safetensors writes 0600 files; give
    them what ``mkdir``/``open`` would have (0777/0666 less the umask), as for any output."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for f in directory.iterdir():
        f.chmod(0o666 & ~umask)


def _swap_into_place(tmp: Path, out: Path, *, source: Path | None, force: bool) -> None:
    """Rename ``tmp`` to ``out``; an old ``out`` is moved aside first and deleted only once the
    new one is in place, and put back if anything (Ctrl-C included) stops the swap between.

    ``out`` is checked again here, not only before the minutes-long build: a directory that
    appeared meanwhile is refused without ``force``, and with it replaced only if it still
    holds nothing but what quantize writes."""
    if not force and (out.exists() or out.is_symlink()):
        raise ConfigError(
            f"--out {out} appeared while quantizing and was left as it is; pass --force to "
            "replace it, or choose another --out"
        )
    _check_out_dir(out, source, force)
    if not (out.exists() or out.is_symlink()):
        try:
            # A rename onto a directory that appears after the check fails unless it is
            # empty (POSIX), so nothing that was written into it is lost.
            os.rename(tmp, out)
        except OSError as e:
            if out.exists() or out.is_symlink():
                raise ConfigError(
                    f"--out {out} appeared while quantizing and was left as it is; "
                    "choose another --out"
                ) from e
            raise
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    previous = old / "previous"
    try:
        os.rename(out, previous)
    except BaseException:
        old.rmdir()
        raise
    swapped = False
    try:
        os.rename(tmp, out)
        swapped = True
    finally:
        if swapped:
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.rename(previous, out)  # put the old directory back
            except OSError as e:
                raise ConfigError(
                    f"--out {out}: could not put the previous directory back ({e.strerror or e});"
                    f" it is kept at {previous}"
                ) from e
            old.rmdir()
