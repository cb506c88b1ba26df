from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from perwatt.errors import DataFormatError
from perwatt.facility.traces import diurnal, load_azure_trace

SAMPLE = Path(__file__).parents[2] / "perwatt/facility/data/azure_llm_sample_synthetic.csv"


def test_shipped_sample_is_labelled_and_loads() -> None:
    assert "SYNTHETIC" in SAMPLE.read_text().splitlines()[0]
    t = load_azure_trace(SAMPLE)
    assert t.duration_s == 1800
    assert t.input_tok_s.sum() > t.output_tok_s.sum() > 0


def _csv(tmp_path: Path, rows: list[str]) -> Path:
    p = tmp_path / "t.csv"
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(rows) + "\n")
    return p


def test_unsorted_and_gaps_are_errors_with_line(tmp_path: Path) -> None:
    p = _csv(tmp_path, ["2023-11-16 18:15:46.6805900,10,5", "2023-11-16 18:15:45.0,10,5"])
    with pytest.raises(DataFormatError, match=r"t\.csv:3: timestamps are not sorted"):
        load_azure_trace(p)
    p = _csv(tmp_path, ["2023-11-16 18:00:00,10,5", "2023-11-16 19:00:00,10,5"])
    with pytest.raises(DataFormatError, match=r"t\.csv:3: gap of 3600 s"):
        load_azure_trace(p)
    p = _csv(tmp_path, ["2023-11-16 18:00:00,ten,5"])
    with pytest.raises(DataFormatError, match=r"t\.csv:2: bad row"):
        load_azure_trace(p)


def test_bins_tokens_per_second(tmp_path: Path) -> None:
    p = _csv(
        tmp_path,
        ["2023-11-16 18:00:00.1,10,5", "2023-11-16 18:00:00.9,20,1", "2023-11-16 18:00:02.5,7,3"],
    )
    t = load_azure_trace(p)
    np.testing.assert_array_equal(t.input_tok_s, [30, 0, 7])
    np.testing.assert_array_equal(t.output_tok_s, [6, 0, 3])


def test_diurnal_peaks_in_the_afternoon_and_resamples() -> None:
    t = diurnal(noise=0.0)
    assert int(np.argmax(t.output_tok_s)) // 3600 == 14
    _inp, out, loops = t.resample(48, 3600.0)
    assert loops == 2 and len(out) == 48
    assert out[14] == pytest.approx(out[38])
