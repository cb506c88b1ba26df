"""Stage profiles: time and energy of one forward/backward per pipeline stage per GPU clock.

The profile CSV has one row per (stage, instruction, SM frequency)::

    stage,instruction,frequency,time,energy
    0,forward,1410,0.0501,23.80     # stage 0, one microbatch forward at 1410 MHz: 50.1 ms, 23.8 J
    0,backward,1410,0.0929,44.58

``time`` is seconds and ``energy`` joules *of one microbatch*, the format of the Perseus
(SOSP'24) artifact data and of ``perwatt train profile``. Stages are numbered ``0..S-1`` with no
gap; every stage has both instructions at the same set of frequencies. Different stages may use
different GPUs (a heterogeneous pipeline) and so different frequency sets.

With data or tensor parallelism a stage runs on several GPUs that share one frequency plan;
:func:`combine_ranks` merges their per-rank profiles (a stage is as slow as its slowest rank and
uses the energy of all of them).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from perwatt.errors import DataFormatError
from perwatt.train.schedule import INSTRUCTIONS, InstructionName

__all__ = [
    "InstructionProfile",
    "StageProfile",
    "combine_ranks",
    "load_profile",
]

_COLUMNS = ("stage", "instruction", "frequency", "time", "energy")
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True, kw_only=True)
class InstructionProfile:
    """One instruction of one stage at each measured frequency, sorted by descending clock."""

    stage: int
    instruction: InstructionName
    freq_mhz: npt.NDArray[np.int64]
    time_s: FloatArray
    energy_j: FloatArray

    def __post_init__(self) -> None:
        n = len(self.freq_mhz)
        if n == 0 or len(self.time_s) != n or len(self.energy_j) != n:
            raise DataFormatError(f"stage {self.stage} {self.instruction}: empty or ragged arrays")
        where = f"stage {self.stage} {self.instruction}"
        if not (np.all(np.isfinite(self.time_s)) and np.all(np.isfinite(self.energy_j))):
            raise DataFormatError(f"{where}: time/energy has NaN or inf; re-profile those clocks")
        if np.any(self.time_s <= 0) or np.any(self.energy_j <= 0):
            raise DataFormatError(f"{where}: time and energy must be > 0")
        # a set, not np.unique: np.unique imports numpy.ma on first use, 37 ms of `train plan`'s
        # start-up (issue 11) for a check over a few dozen clocks
        if len(set(self.freq_mhz.tolist())) != n:
            raise DataFormatError(f"{where}: duplicate frequencies; keep one row per clock")
        if np.any(np.diff(self.freq_mhz) >= 0):
            raise DataFormatError(f"{where}: frequencies must be sorted descending")

    @property
    def max_freq_mhz(self) -> int:
        return int(self.freq_mhz[0])


@dataclass(frozen=True, slots=True, kw_only=True)
class StageProfile:
    """Per stage and instruction: time and energy of one microbatch at each SM clock."""

    entries: Mapping[tuple[int, InstructionName], InstructionProfile]
    source: str = ""
    num_stages: int = field(init=False)

    def __post_init__(self) -> None:
        stages = sorted({s for s, _ in self.entries})
        where = f"{self.source}: " if self.source else ""
        if not stages:
            raise DataFormatError(f"{where}profile has no rows")
        if stages != list(range(len(stages))):
            missing = sorted(set(range(max(stages) + 1)) - set(stages))
            raise DataFormatError(
                f"{where}profile is missing stage(s) {missing}; stages must be 0..S-1"
            )
        for s in stages:
            for inst in INSTRUCTIONS:
                if (s, inst) not in self.entries:
                    raise DataFormatError(f"{where}stage {s} has no {inst} rows")
            f = set(self.entries[(s, "forward")].freq_mhz.tolist())
            b = set(self.entries[(s, "backward")].freq_mhz.tolist())
            if f != b:
                raise DataFormatError(
                    f"{where}stage {s}: frequencies {sorted(f ^ b)} MHz are measured for only one "
                    "of forward/backward; profile both at every clock"
                )
        object.__setattr__(self, "num_stages", len(stages))

    def __getitem__(self, key: tuple[int, InstructionName]) -> InstructionProfile:
        return self.entries[key]

    def frequencies(self, stage: int) -> list[int]:
        """The clocks (MHz) measured for ``stage``, descending."""
        return [int(f) for f in self.entries[(stage, "forward")].freq_mhz]

    def check_supported(
        self, supported_freqs_mhz: Iterable[int] | Mapping[int, Iterable[int]]
    ) -> None:
        """Raise DataFormatError if a profiled clock is not one the GPU supports.

        ``supported_freqs_mhz`` is one list for every stage, or a mapping stage → list (a
        heterogeneous pipeline), e.g. from ``nvmlDeviceGetSupportedGraphicsClocks``.
        """
        if isinstance(supported_freqs_mhz, Mapping):
            per_stage = {int(k): {int(f) for f in v} for k, v in supported_freqs_mhz.items()}
        else:
            common = {int(f) for f in supported_freqs_mhz}
            per_stage = dict.fromkeys(range(self.num_stages), common)
        for s in range(self.num_stages):
            allowed = per_stage.get(s)
            if allowed is None:
                raise DataFormatError(f"no supported-clock list for stage {s}")
            bad = sorted(set(self.frequencies(s)) - allowed)
            if bad:
                raise DataFormatError(
                    f"stage {s}: profiled clocks {bad} MHz are not supported by its GPU; "
                    "drop those rows or re-profile"
                )

    @classmethod
    def from_rows(
        cls,
        rows: Iterable[tuple[int, str, int, float, float]],
        *,
        source: str = "",
    ) -> StageProfile:
        """Build from ``(stage, instruction, freq_mhz, time_s, energy_j)`` tuples."""
        where = f"{source}: " if source else ""
        grouped: dict[tuple[int, InstructionName], list[tuple[int, float, float]]] = {}
        seen: set[tuple[int, str, int]] = set()
        for stage, inst, freq, t, e in rows:
            if inst not in INSTRUCTIONS:
                raise DataFormatError(f"{where}unknown instruction {inst!r}; use forward/backward")
            key3 = (stage, inst, freq)
            if key3 in seen:
                raise DataFormatError(
                    f"{where}duplicate row for stage {stage} {inst} at {freq} MHz; keep one"
                )
            seen.add(key3)
            name: InstructionName = "forward" if inst == "forward" else "backward"
            grouped.setdefault((stage, name), []).append((freq, t, e))
        entries = {}
        for (stage, inst), items in grouped.items():
            items.sort(key=lambda x: -x[0])
            entries[(stage, inst)] = InstructionProfile(
                stage=stage,
                instruction=inst,
                freq_mhz=np.array([x[0] for x in items], dtype=np.int64),
                time_s=np.array([x[1] for x in items], dtype=np.float64),
                energy_j=np.array([x[2] for x in items], dtype=np.float64),
            )
        return cls(entries=entries, source=source)


def _num(text: str | None, what: str, where: str) -> float:
    if text is None:  # csv.DictReader fills a short row's missing fields with None
        raise DataFormatError(f"{where}: row has no {what} column; expected {','.join(_COLUMNS)}")
    try:
        value = float(text)
    except ValueError:
        raise DataFormatError(f"{where}: {what} {text!r} is not a number") from None
    if math.isnan(value) or math.isinf(value):
        raise DataFormatError(f"{where}: {what} is {text}; re-profile this point or drop the row")
    return value


def load_profile(path: str | Path) -> StageProfile:
    """Read a ``stage,instruction,frequency,time,energy`` CSV (extra columns are ignored)."""
    p = Path(path)
    try:
        # utf-8-sig: a CSV saved by Excel or a Windows editor starts with a byte-order mark,
        # which plain utf-8 keeps as part of the first column's name ("\ufeffstage").
        fh = p.open(newline="", encoding="utf-8-sig")
    except OSError as err:
        raise DataFormatError(f"cannot read profile {p}: {err.strerror}") from err
    try:
        with fh:
            rows = _read_rows(p, fh)
    except (UnicodeDecodeError, csv.Error) as err:
        # A binary or mis-encoded file is bad input, not a crash.
        raise DataFormatError(f"{p}: not a UTF-8 CSV profile ({err})") from None
    return StageProfile.from_rows(rows, source=str(p))


def _read_rows(p: Path, fh: Iterable[str]) -> list[tuple[int, str, int, float, float]]:
    reader = csv.DictReader(fh)
    header = reader.fieldnames or []
    missing = [c for c in _COLUMNS if c not in header]
    if missing:
        raise DataFormatError(
            f"{p}: missing column(s) {missing}; expected header {','.join(_COLUMNS)}"
        )
    rows: list[tuple[int, str, int, float, float]] = []
    for line, rec in enumerate(reader, start=2):
        where = f"{p}:{line}"
        stage_f = _num(rec["stage"], "stage", where)
        freq_f = _num(rec["frequency"], "frequency", where)
        if stage_f != int(stage_f) or stage_f < 0:
            raise DataFormatError(f"{where}: stage must be a non-negative integer")
        if freq_f != int(freq_f) or freq_f <= 0:
            raise DataFormatError(f"{where}: frequency must be a positive integer (MHz)")
        t = _num(rec["time"], "time", where)
        energy = _num(rec["energy"], "energy", where)
        if t <= 0 or energy <= 0:
            raise DataFormatError(f"{where}: time and energy must be > 0")
        rows.append((int(stage_f), rec["instruction"].strip(), int(freq_f), t, energy))
    return rows


def combine_ranks(profiles: Sequence[StageProfile]) -> StageProfile:
    """Merge the profiles of the data/tensor-parallel ranks that share each stage's plan.

    All ranks run one instruction together, so the stage takes as long as its slowest rank
    (``max`` of times) and consumes the energy of all of them (``sum`` of energies). Every rank
    must have the same stages and clocks.
    """
    if not profiles:
        raise DataFormatError("combine_ranks needs at least one profile")
    first = profiles[0]
    entries = {}
    for key, ip in first.entries.items():
        times, energies = [ip.time_s], [ip.energy_j]
        for other in profiles[1:]:
            if key not in other.entries:
                raise DataFormatError(
                    f"{other.source or 'a rank profile'} lacks stage {key[0]} {key[1]}"
                )
            op = other.entries[key]
            if not np.array_equal(op.freq_mhz, ip.freq_mhz):
                raise DataFormatError(
                    f"stage {key[0]} {key[1]}: ranks were profiled at different clocks; "
                    "profile every rank at the same frequencies"
                )
            times.append(op.time_s)
            energies.append(op.energy_j)
        entries[key] = InstructionProfile(
            stage=ip.stage,
            instruction=ip.instruction,
            freq_mhz=ip.freq_mhz.copy(),
            time_s=np.max(np.stack(times), axis=0),
            energy_j=np.sum(np.stack(energies), axis=0),
        )
    if any(set(p.entries) != set(first.entries) for p in profiles[1:]):
        raise DataFormatError("rank profiles cover different stages; give each rank every stage")
    return StageProfile(entries=entries, source=f"{len(profiles)} ranks combined")
