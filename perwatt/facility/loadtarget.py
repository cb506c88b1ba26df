"""Grid load targets with DSX Flex semantics: what the utility asks, and what the site answers.

NVIDIA's DSX Flex interface (AsyncAPI schemas in ``NVIDIA/dsx-exchange``) carries a load target
as a ``grid.loadtarget.set.v1`` event and the site's answer as ``grid.powerstate.status.v1``.
The semantics modelled here (from the issue text; the schema repository could not be read when
this was written, so the *field names* below are perwatt's best reading and are validated
strictly rather than guessed loosely):

* a target applies to one **feed** from ``startTime`` to ``endTime`` (RFC 3339, UTC);
* it is an absolute value with a unit (``watt`` | ``kilowatt`` | ``megawatt``) or a **percent
  reduction** from the site's power just before the start;
* it is ``best-effort`` or ``strict``;
* the **most recent** target wins: an event issued later (CloudEvents ``time``) replaces an
  earlier one for the time they overlap. Two targets for the same feed that overlap and were
  issued at the same instant are ambiguous and rejected.

Input is JSON lines of CloudEvents 1.0 *structured* events::

    {"specversion": "1.0", "type": "grid.loadtarget.set.v1", "source": "utility/srp",
     "id": "evt-1", "time": "2025-05-03T21:00:00Z", "datacontenttype": "application/json",
     "data": {"feedId": "feed-a", "startTime": "2025-05-03T22:00:00Z",
              "endTime": "2025-05-04T01:00:00Z",
              "target": {"value": 25, "unit": "percent"}, "mode": "strict"}}

or a CSV with the header ``feed,start,end,value,unit,mode[,issued]`` (times RFC 3339 or seconds
from the start of the run; ``unit`` may also be ``percent``).

Status values (``grid.powerstate.status.v1``): ``in-flight`` (received, not yet started),
``target-set`` (started, site not yet moving), ``ramping-down``, ``ramping-up`` (after the
end), ``compliant``. A **breach** alert is raised while the site is over its target; it is
``critical`` above 20% over.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

from perwatt.errors import ConfigError, DataFormatError

SET_TYPE: Final = "grid.loadtarget.set.v1"
STATUS_TYPE: Final = "grid.powerstate.status.v1"
UNITS: Final = {"watt": 1.0, "kilowatt": 1e3, "megawatt": 1e6}
MODES: Final = ("best-effort", "strict")
STATES: Final = ("in-flight", "target-set", "ramping-down", "ramping-up", "compliant")
CRITICAL_OVER: Final = 0.20  # breach is critical above 20% over target (issue 13)
CSV_FIELDS: Final = ("feed", "start", "end", "value", "unit", "mode")


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadTarget:
    """One load target. Times are seconds from the run's origin (see :func:`load_targets`)."""

    id: str
    feed: str
    start_s: float
    end_s: float
    issued_s: float
    mode: str = "strict"
    value_w: float | None = None
    reduction: float | None = None  # fraction of the pre-event power to shed (0.25 = 25%)

    def __post_init__(self) -> None:
        w = f"target {self.id!r}"
        if not self.feed:
            raise ConfigError(f"{w}: feed is empty")
        for name in ("start_s", "end_s", "issued_s"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{w}: {name} must be finite")
        if not self.end_s > self.start_s:
            raise ConfigError(f"{w}: end must be after start")
        if self.mode not in MODES:
            raise ConfigError(f"{w}: mode must be one of {', '.join(MODES)}")
        if (self.value_w is None) == (self.reduction is None):
            raise ConfigError(f"{w}: give exactly one of an absolute value or a % reduction")
        if self.value_w is not None and not (math.isfinite(self.value_w) and self.value_w > 0):
            raise ConfigError(f"{w}: value must be > 0 W")
        if self.reduction is not None and not 0 < self.reduction < 1:
            raise ConfigError(f"{w}: percent reduction must be in (0, 100)")

    def target_w(self, baseline_w: float) -> float:
        """Watts asked for, given the site's power just before the start."""
        if self.value_w is not None:
            return self.value_w
        assert self.reduction is not None
        return baseline_w * (1.0 - self.reduction)


def _time(v: Any, field: str, where: str, origin: datetime | None) -> float:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    if not isinstance(v, str) or not v:
        raise DataFormatError(f"{where}: {field} must be an RFC 3339 time or seconds")
    try:
        return float(v)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise DataFormatError(f"{where}: {field} {v!r} is not an RFC 3339 time") from None
    if t.tzinfo is None:
        raise DataFormatError(f"{where}: {field} {v!r} has no time zone (use Z or +00:00)")
    base = origin or datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (t - base).total_seconds()


def _value(raw_value: Any, unit: Any, where: str, field: str) -> tuple[float | None, float | None]:
    if isinstance(raw_value, bool) or not isinstance(raw_value, int | float | str):
        raise DataFormatError(f"{where}: {field} must be a number")
    try:
        v = float(raw_value)
    except ValueError:
        raise DataFormatError(f"{where}: {field} {raw_value!r} is not a number") from None
    if not math.isfinite(v):
        raise DataFormatError(f"{where}: {field} must be finite")
    if unit == "percent":
        if not 0 < v < 100:
            raise DataFormatError(f"{where}: {field} percent reduction must be in (0, 100)")
        return None, v / 100.0
    if unit not in UNITS:
        raise DataFormatError(
            f"{where}: unit must be one of {', '.join(UNITS)} or percent, got {unit!r}"
        )
    if v <= 0:
        raise DataFormatError(f"{where}: {field} must be > 0")
    return v * UNITS[str(unit)], None


def _from_event(ev: Any, where: str, origin: datetime | None) -> LoadTarget:
    if not isinstance(ev, Mapping):
        raise DataFormatError(f"{where}: not a JSON object")
    if ev.get("specversion") != "1.0":
        raise DataFormatError(f'{where}: specversion must be "1.0" (CloudEvents 1.0)')
    for k in ("id", "source", "type"):
        if not isinstance(ev.get(k), str) or not ev.get(k):
            raise DataFormatError(f"{where}: CloudEvents attribute {k} is missing")
    if ev["type"] != SET_TYPE:
        raise DataFormatError(f"{where}: type must be {SET_TYPE}, got {ev['type']!r}")
    data = ev.get("data")
    if not isinstance(data, Mapping):
        raise DataFormatError(f"{where}: data must be an object")
    known = {"feedId", "startTime", "endTime", "target", "mode"}
    extra = sorted(set(data) - known)
    if extra:
        raise DataFormatError(f"{where}: unknown data field(s) {', '.join(extra)}")
    for k in ("feedId", "startTime", "endTime", "target"):
        if k not in data:
            raise DataFormatError(f"{where}: data.{k} is missing")
    tgt = data["target"]
    if not isinstance(tgt, Mapping) or set(tgt) != {"value", "unit"}:
        raise DataFormatError(f'{where}: data.target must be {{"value": …, "unit": …}}')
    value_w, red = _value(tgt["value"], tgt["unit"], where, "data.target.value")
    mode = data.get("mode", "strict")
    if mode not in MODES:
        raise DataFormatError(f"{where}: data.mode must be one of {', '.join(MODES)}")
    if not isinstance(data["feedId"], str) or not data["feedId"]:
        raise DataFormatError(f"{where}: data.feedId must be a non-empty string")
    issued = _time(ev["time"], "time", where, origin) if "time" in ev else -math.inf
    return _make(
        where,
        id=str(ev["id"]),
        feed=data["feedId"],
        start_s=_time(data["startTime"], "data.startTime", where, origin),
        end_s=_time(data["endTime"], "data.endTime", where, origin),
        issued_s=issued if math.isfinite(issued) else -1e18,
        mode=str(mode),
        value_w=value_w,
        reduction=red,
    )


def _make(where: str, **kw: Any) -> LoadTarget:
    try:
        return LoadTarget(**kw)
    except ConfigError as e:
        raise DataFormatError(f"{where}: {e}") from None


def load_targets(
    path: str | Path,
    *,
    origin: datetime | None = None,
    capacity_w: float | None = None,
    floor_w: float | None = None,
) -> tuple[LoadTarget, ...]:
    """Read targets from a JSON-lines CloudEvents file or a CSV (chosen by content).

    Times become seconds from ``origin`` (default: the earliest ``startTime`` in the file).
    Absolute targets above ``capacity_w`` or below ``floor_w`` (the least the site can draw)
    are rejected, naming the field and the file.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such load-target file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{p}: cannot read load targets: {e}") from None
    lines = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip()]
    if not lines:
        raise DataFormatError(f"{p}: no load targets")
    if lines[0][1].lstrip().startswith("{"):
        docs = []
        for n, ln in lines:
            try:
                docs.append((n, json.loads(ln)))
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{p}:{n}: not JSON ({e.msg})") from None
        if origin is None:
            origin = _earliest(docs, p)
        out = [_from_event(d, f"{p}:{n}", origin) for n, d in docs]
    else:
        out = _from_csv(p, text, origin)
    return check_targets(out, source=str(p), capacity_w=capacity_w, floor_w=floor_w)


def _earliest(docs: Sequence[tuple[int, Any]], p: Path) -> datetime | None:
    best: datetime | None = None
    for n, d in docs:
        data = d.get("data") if isinstance(d, Mapping) else None
        v = data.get("startTime") if isinstance(data, Mapping) else None
        if isinstance(v, str):
            try:
                t = datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError:
                raise DataFormatError(
                    f"{p}:{n}: data.startTime {v!r} is not an RFC 3339 time"
                ) from None
            if t.tzinfo is not None and (best is None or t < best):
                best = t
    return best


def _from_csv(p: Path, text: str, origin: datetime | None) -> list[LoadTarget]:
    rows = list(csv.DictReader(text.splitlines()))
    header = set(rows[0]) if rows else set()
    missing = [f for f in CSV_FIELDS if f not in header]
    if missing:
        raise DataFormatError(f"{p}: CSV needs the column(s) {', '.join(missing)}")
    if origin is None:
        starts = []
        for r in rows:
            with contextlib.suppress(ValueError):  # seconds, not a time: no origin needed
                starts.append(datetime.fromisoformat(str(r["start"]).replace("Z", "+00:00")))
        aware = [s for s in starts if s.tzinfo is not None]
        origin = min(aware) if aware else None
    out = []
    for i, r in enumerate(rows):
        where = f"{p}:{i + 2}"
        value_w, red = _value(r["value"], (r["unit"] or "").strip(), where, "value")
        issued = r.get("issued")
        out.append(
            _make(
                where,
                id=f"row{i + 2}",
                feed=(r["feed"] or "").strip(),
                start_s=_time(r["start"], "start", where, origin),
                end_s=_time(r["end"], "end", where, origin),
                issued_s=_time(issued, "issued", where, origin) if issued else float(i),
                mode=(r["mode"] or "strict").strip(),
                value_w=value_w,
                reduction=red,
            )
        )
    return out


def check_targets(
    targets: Sequence[LoadTarget],
    *,
    source: str = "<targets>",
    capacity_w: float | None = None,
    floor_w: float | None = None,
) -> tuple[LoadTarget, ...]:
    """Reject duplicate ids, ambiguous overlaps, and targets outside [floor, capacity]."""
    ids = [t.id for t in targets]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise DataFormatError(f"{source}: event id(s) used twice: {', '.join(dup)}")
    for t in targets:
        if t.value_w is None:
            continue
        if capacity_w is not None and t.value_w > capacity_w * (1 + 1e-9):
            raise DataFormatError(
                f"{source}: target {t.id!r} value {t.value_w / 1e6:g} MW is above the site's "
                f"capacity {capacity_w / 1e6:g} MW"
            )
        if floor_w is not None and t.value_w < floor_w * (1 - 1e-9):
            raise DataFormatError(
                f"{source}: target {t.id!r} value {t.value_w / 1e6:g} MW is below the site's "
                f"floor {floor_w / 1e6:g} MW (every GPU at its lowest power)"
            )
    s = sorted(targets, key=lambda t: (t.feed, t.start_s))
    for i, a in enumerate(s):
        for b in s[i + 1 :]:
            if b.feed != a.feed or b.start_s >= a.end_s:
                continue
            if a.issued_s == b.issued_s:
                raise DataFormatError(
                    f"{source}: targets {a.id!r} and {b.id!r} overlap on feed {a.feed!r} and were "
                    "issued at the same time (which wins is ambiguous)"
                )
    return tuple(targets)


def active_target(targets: Sequence[LoadTarget], feed: str, time_s: float) -> LoadTarget | None:
    """The target in force on ``feed`` at ``time_s``: the most recently issued that covers it."""
    live = [t for t in targets if t.feed == feed and t.start_s <= time_s < t.end_s]
    return max(live, key=lambda t: t.issued_s) if live else None


def status(
    *,
    time_s: float,
    target: LoadTarget | None,
    target_w: float | None,
    power_w: float,
    previous_w: float,
    pending: bool = False,
    tolerance: float = 0.005,
) -> str:
    """The ``grid.powerstate.status.v1`` state of a feed at one instant (module docstring)."""
    if target is None or target_w is None:
        return "in-flight" if pending else ("ramping-up" if power_w > previous_w else "compliant")
    if power_w <= target_w * (1 + tolerance):
        return "compliant"
    return "ramping-down" if power_w < previous_w else "target-set"


def breach(power_w: float, target_w: float) -> str | None:
    """None when at or under target; else ``warning``, or ``critical`` above 20% over."""
    if power_w <= target_w * (1 + 1e-9):
        return None
    return "critical" if power_w > target_w * (1 + CRITICAL_OVER) else "warning"


def status_event(
    *,
    feed: str,
    state: str,
    power_w: float,
    target_w: float | None,
    at: datetime | None,
    seq: int,
    time_s: float | None = None,
) -> dict[str, Any]:
    """A ``grid.powerstate.status.v1`` CloudEvent (structured mode) for one status change.

    ``at`` becomes the CloudEvents ``time`` (RFC 3339, UTC); without it the attribute, which
    CloudEvents 1.0 makes optional, is left out. ``time_s`` (seconds into the run) goes in data.
    """
    if state not in STATES:
        raise ConfigError(f"status must be one of {', '.join(STATES)}")
    data: dict[str, Any] = {"feedId": feed, "state": state, "powerW": power_w}
    if time_s is not None:
        data["timeS"] = time_s
    if target_w is not None:
        data["targetW"] = target_w
        b = breach(power_w, target_w)
        if b:
            data["breach"] = b
    ev: dict[str, Any] = {
        "specversion": "1.0",
        "type": STATUS_TYPE,
        "source": "perwatt/facility",
        "id": f"status-{seq}",
        "datacontenttype": "application/json",
        "data": data,
    }
    if at is not None:
        ev["time"] = at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    return ev


__all__ = [
    "CRITICAL_OVER",
    "MODES",
    "SET_TYPE",
    "STATES",
    "STATUS_TYPE",
    "UNITS",
    "LoadTarget",
    "active_target",
    "breach",
    "check_targets",
    "load_targets",
    "status",
    "status_event",
]
