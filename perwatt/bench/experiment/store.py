"""The experiment's output folder: where each point's files live and how a point is read back.

``OUT/points/<server>/<setting>/<load>/point.json`` says what happened to one point (schema
:data:`POINT_SCHEMA`: status, reason, the bench result's file name, the server log's last lines,
the fingerprint of the file's settings that shaped it). :mod:`~perwatt.bench.experiment.run`
writes these files; :mod:`~perwatt.bench.experiment.analysis` only reads them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from perwatt._files import atomic_write_text
from perwatt.bench.experiment.config import ExperimentConfig, Point
from perwatt.bench.result import utc_now

POINT_SCHEMA: Final = "perwatt.experiment.point/1"
#: A point with one of these statuses (and the same fingerprint) is skipped on a re-run.
FINISHED: Final = ("complete", "failed")


def point_dir(out_dir: Path, point: Point) -> Path:
    """The folder of one point's files under the experiment's output folder."""
    return out_dir / "points" / point.server.label / point.setting.tag / point.load.tag


def read_point(out_dir: Path, point: Point) -> dict[str, Any] | None:
    """The point's ``point.json``, or None when it is missing, unreadable or of another schema."""
    p = point_dir(out_dir, point) / "point.json"
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("schema") == POINT_SCHEMA else None


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` as indented JSON, atomically, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(doc, indent=2, allow_nan=False, default=str) + "\n")


def point_doc(
    config: ExperimentConfig,
    point: Point,
    *,
    status: str,
    reason: str | None,
    result: Path | None = None,
    tail: str = "",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``point.json`` document of a point that ended with ``status`` (and ``reason``)."""
    doc: dict[str, Any] = {
        "schema": POINT_SCHEMA,
        "id": point.id,
        "server": point.server.label,
        "label": point.run_label,
        "setting": {
            "tag": point.setting.tag,
            "power_limit_w": point.setting.power_limit_w,
            "sm_clock_mhz": point.setting.sm_clock_mhz,
        },
        "load": {"kind": point.load.kind, "value": point.load.value, "tag": point.load.tag},
        "fingerprint": config.fingerprint(point),
        "status": status,
        "reason": reason,
        "result": result.name if result is not None else None,
        "log_tail": tail,
        "finished_utc": utc_now(),
    }
    if extra:
        doc.update(extra)
    return doc


def is_finished(config: ExperimentConfig, doc: dict[str, Any] | None, point: Point) -> bool:
    """Whether ``doc`` records this point as finished under the experiment's current fingerprint."""
    return (
        doc is not None
        and doc.get("status") in FINISHED
        and doc.get("fingerprint") == config.fingerprint(point)
    )
