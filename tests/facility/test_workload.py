from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from perwatt.errors import ConfigError, DataFormatError
from perwatt.facility.workload import Job, load_workload, mixed_inference, training_phase


def test_flex_tiers_and_share_or_racks() -> None:
    with pytest.raises(ConfigError, match="flex must be one of"):
        Job(name="j", kind="batch", share=0.5, flex=0.3)
    with pytest.raises(ConfigError, match="exactly one of share or racks"):
        Job(name="j", kind="batch", share=0.5, racks=2)


def test_shares_cannot_exceed_the_site() -> None:
    from perwatt.facility.workload import Workload

    with pytest.raises(ConfigError, match=r"add up to 1\.2"):
        Workload(
            name="w",
            jobs=(Job(name="a", kind="batch", share=0.6), Job(name="b", kind="batch", share=0.6)),
        )


def test_load_workload_errors_name_file_and_job(tmp_path: Path) -> None:
    p = tmp_path / "w.json"
    p.write_text(
        json.dumps(
            {
                "schema": "perwatt.workload/1",
                "jobs": [{"name": "chat", "kind": "inference", "share": 0.5, "tpot_ms": -1}],
            }
        )
    )
    with pytest.raises(DataFormatError, match=r"w\.json: job 'chat': tpot_ms must be > 0"):
        load_workload(p)
    p.write_text(
        json.dumps(
            {
                "schema": "perwatt.workload/1",
                "jobs": [
                    {
                        "name": "chat",
                        "kind": "inference",
                        "share": 0.5,
                        "trace": "azure:missing.csv",
                    }
                ],
            }
        )
    )
    with pytest.raises(DataFormatError, match=r"w\.json: .*missing\.csv"):
        load_workload(p)


def test_round_trip(tmp_path: Path) -> None:
    w = mixed_inference()
    p = tmp_path / "w.json"
    p.write_text(json.dumps(w.to_dict()))
    assert load_workload(p).jobs == w.jobs


def test_training_waveform_duty_and_checkpoints() -> None:
    j = Job(
        name="t",
        kind="training",
        share=1.0,
        period_s=10,
        compute_fraction=0.8,
        checkpoint_every_s=1000,
        checkpoint_s=50,
    )
    ph = training_phase(j, np.arange(1000.0))
    assert np.all(ph[950:] == 2)
    assert np.mean(ph[:950] == 1) == pytest.approx(0.8, abs=0.02)
