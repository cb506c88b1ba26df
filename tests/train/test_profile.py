"""Stage profile loading and validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from perwatt.errors import DataFormatError
from perwatt.train.profile import StageProfile, combine_ranks, load_profile

DATA = Path(__file__).resolve().parent / "data"
PERSEUS = Path(__file__).resolve().parents[2] / "data/perseus-sosp24"
HEADER = "stage,instruction,frequency,time,energy\n"


def _write(tmp_path: Path, body: str, header: str = HEADER) -> Path:
    p = tmp_path / "p.csv"
    p.write_text(header + body)
    return p


def test_load_tiny_profile() -> None:
    prof = load_profile(DATA / "tiny_profile.csv")
    assert prof.num_stages == 2
    ip = prof[(1, "backward")]
    assert ip.freq_mhz.tolist() == [1400, 1200, 1000, 800]  # sorted descending
    assert ip.max_freq_mhz == 1400
    assert ip.time_s[0] == pytest.approx(0.024)
    assert prof.frequencies(0) == [1400, 1200, 1000, 800]


def test_load_perseus_profile() -> None:
    path = PERSEUS / "stage_profile/gpt3-175b+a100_sxm_bf16.csv"
    prof = load_profile(path)
    assert prof.num_stages == 8
    assert len(prof[(0, "forward")].freq_mhz) == 38
    assert prof[(0, "forward")].energy_j[0] == pytest.approx(23.805472)


def test_rows_in_any_order(tmp_path: Path) -> None:
    body = (
        "0,backward,800,0.02,2\n0,forward,800,0.01,1\n0,forward,1000,0.008,1.2\n"
        "0,backward,1000,0.016,2.4\n"
    )
    prof = load_profile(_write(tmp_path, body))
    assert prof[(0, "forward")].freq_mhz.tolist() == [1000, 800]


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("0,forward,1000,nan,1\n0,backward,1000,0.1,1\n", "NaN|nan"),
        ("0,forward,1000,0.1,1\n0,forward,1000,0.1,1\n0,backward,1000,0.1,1\n", "duplicate"),
        (
            "0,forward,1000,0.1,1\n0,backward,1000,0.1,1\n2,forward,1000,0.1,1\n"
            "2,backward,1000,0.1,1\n",
            r"missing stage\(s\) \[1\]",
        ),
        ("0,forward,1000,0.1,1\n", "no backward"),
        ("0,forward,1000,0.1,1\n0,forward,900,0.2,1\n0,backward,1000,0.1,1\n", "only one"),
        ("0,forward,1000,-0.1,1\n0,backward,1000,0.1,1\n", "> 0"),
        ("0,forward,1000,0.1,abc\n0,backward,1000,0.1,1\n", "not a number"),
        ("0,sideways,1000,0.1,1\n", "unknown instruction"),
        ("0.5,forward,1000,0.1,1\n", "stage must be"),
        ("0,forward,999.5,0.1,1\n", "frequency must be"),
        ("", "no rows"),
    ],
)
def test_bad_profiles(tmp_path: Path, body: str, match: str) -> None:
    with pytest.raises(DataFormatError, match=match):
        load_profile(_write(tmp_path, body))


def test_missing_column(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="missing column"):
        load_profile(_write(tmp_path, "0,forward,1000,0.1\n", "stage,instruction,frequency,time\n"))


def test_binary_file_and_short_row(tmp_path: Path) -> None:
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"\xff\xfe\x00bin\n")
    with pytest.raises(DataFormatError, match="not a UTF-8 CSV profile"):
        load_profile(binary)
    with pytest.raises(DataFormatError, match=r":2: row has no time column"):
        load_profile(_write(tmp_path, "0,forward,1000\n"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="cannot read"):
        load_profile(tmp_path / "nope.csv")


def test_supported_frequencies() -> None:
    prof = load_profile(DATA / "tiny_profile.csv")
    prof.check_supported([1400, 1200, 1000, 800, 600])
    prof.check_supported({0: [1400, 1200, 1000, 800], 1: [1400, 1200, 1000, 800]})
    with pytest.raises(DataFormatError, match=r"\[800\] MHz are not supported"):
        prof.check_supported([1400, 1200, 1000])
    with pytest.raises(DataFormatError, match="stage 1"):
        prof.check_supported({0: [1400, 1200, 1000, 800]})


def test_combine_ranks_takes_max_time_and_sums_energy() -> None:
    a = load_profile(DATA / "tiny_profile.csv")
    rows = []
    for (s, inst), ip in a.entries.items():
        for f, t, e in zip(ip.freq_mhz, ip.time_s, ip.energy_j, strict=True):
            # a second rank that is slower at the top clock only
            rows.append((s, inst, int(f), float(t) * (1.1 if f == 1400 else 0.9), float(e)))
    b = StageProfile.from_rows(rows)
    c = combine_ranks([a, b])
    ip_a, ip_c = a[(0, "forward")], c[(0, "forward")]
    assert ip_c.time_s[0] == pytest.approx(ip_a.time_s[0] * 1.1)
    assert ip_c.time_s[1] == pytest.approx(ip_a.time_s[1])
    assert np.allclose(ip_c.energy_j, 2 * ip_a.energy_j)


def test_combine_ranks_rejects_mismatched_clocks() -> None:
    a = load_profile(DATA / "tiny_profile.csv")
    rows = [
        (s, inst, int(f) - 5, float(t), float(e))
        for (s, inst), ip in a.entries.items()
        for f, t, e in zip(ip.freq_mhz, ip.time_s, ip.energy_j, strict=True)
    ]
    with pytest.raises(DataFormatError, match="different clocks"):
        combine_ranks([a, StageProfile.from_rows(rows)])
    with pytest.raises(DataFormatError, match="at least one"):
        combine_ranks([])


def test_heterogeneous_stages_may_differ_in_clocks(tmp_path: Path) -> None:
    body = (
        "0,forward,1410,0.01,3\n0,backward,1410,0.02,6\n"
        "1,forward,1740,0.012,3\n1,backward,1740,0.024,6\n"
    )
    prof = load_profile(_write(tmp_path, body))
    assert prof.frequencies(0) == [1410] and prof.frequencies(1) == [1740]


def test_byte_order_mark_is_not_part_of_the_header(tmp_path: Path) -> None:
    # Issue 9: a CSV saved by Excel starts with a UTF-8 BOM, which gave "missing column 'stage'".
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (DATA / "tiny_profile.csv").read_bytes())
    assert load_profile(path).num_stages == load_profile(DATA / "tiny_profile.csv").num_stages
