"""Per-request attribution: shares follow the work in flight and always sum to the measurement."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perwatt.bench.experiment.attribution import RequestSpan, attribute, attribute_result
from perwatt.bench.result import example_result


def _span(start: float, ttft: float, end: float, n_in: float, n_out: float) -> RequestSpan:
    return RequestSpan(
        start_s=start, ttft_s=ttft, end_s=end, prompt_tokens=n_in, output_tokens=n_out
    )


def test_two_identical_requests_share_equally_and_sum_exactly() -> None:
    reqs = [_span(0.0, 0.5, 4.0, 100, 50), _span(0.0, 0.5, 4.0, 100, 50)]
    att = attribute(
        reqs,
        total_energy_j=123.456,
        timeline_t_s=[0, 1, 2, 3, 4],
        timeline_power_w=[30, 30, 30, 30, 30],
        duration_s=4.0,
    )
    assert att.energy_j[0] == pytest.approx(att.energy_j[1], rel=1e-12)
    assert math.fsum(att.energy_j) == 123.456


def test_a_slice_goes_to_the_requests_in_flight() -> None:
    # A runs alone in [0, 1] at 100 W; B alone in [1, 2] at 300 W (constant power per slice,
    # one token per 0.1 s each): A gets the first slice's energy, B the second's.
    reqs = [_span(0.0, 0.0, 1.0, 0, 10), _span(1.0, 0.0, 2.0, 0, 10)]
    att = attribute(
        reqs,
        total_energy_j=400.0,
        timeline_t_s=[0.0, 0.999, 1.0, 2.0],
        timeline_power_w=[100.0, 100.0, 300.0, 300.0],
        duration_s=2.0,
    )
    a, b = att.energy_j
    # Slices: [0, 0.999] 99.9 J and the ramp [0.999, 1] 0.2 J (only A in flight), [1, 2] 300 J
    # (only B); the timeline's 400.1 J are scaled to the measured 400 J.
    assert a == pytest.approx((99.9 + 0.2) * 400 / 400.1, rel=1e-9)
    assert b == pytest.approx(300.0 * 400 / 400.1, rel=1e-9)
    assert a + b == pytest.approx(400.0, abs=1e-9)


def test_idle_energy_is_spread_by_work_and_nothing_is_dropped() -> None:
    # Nothing in flight in [2, 4]: that energy follows total work (B did three times A's).
    reqs = [_span(0.0, 0.0, 1.0, 0, 10), _span(1.0, 0.0, 2.0, 0, 30)]
    att = attribute(
        reqs,
        total_energy_j=80.0,
        timeline_t_s=[0.0, 1.0, 2.0, 4.0],
        timeline_power_w=[20.0, 20.0, 20.0, 20.0],
        duration_s=4.0,
    )
    assert att.energy_j[0] == pytest.approx(20.0 + 40.0 * 10 / 40)
    assert att.energy_j[1] == pytest.approx(20.0 + 40.0 * 30 / 40)
    assert math.fsum(att.energy_j) == 80.0


def test_no_timeline_splits_by_work() -> None:
    reqs = [_span(0.0, 0.1, 1.0, 10, 10), _span(0.0, 0.1, 1.0, 30, 30)]
    att = attribute(reqs, total_energy_j=8.0, timeline_t_s=[], timeline_power_w=[], duration_s=1)
    assert att.energy_j == pytest.approx((2.0, 6.0))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0, 10),
            st.floats(0, 2),
            st.floats(0, 5),
            st.integers(0, 500),
            st.integers(0, 200),
        ),
        min_size=1,
        max_size=30,
    ),
    st.floats(0, 1e6),
    st.integers(0, 50),
)
def test_sum_is_the_measured_total(
    raw: list[tuple[float, float, float, int, int]], total: float, n_samples: int
) -> None:
    reqs = [_span(s, t, s + t + d, i, o) for s, t, d, i, o in raw]
    t = np.linspace(0.0, 17.0, n_samples).tolist()
    p = (50 + 10 * np.sin(np.arange(n_samples))).tolist()
    att = attribute(reqs, total_energy_j=total, timeline_t_s=t, timeline_power_w=p, duration_s=17)
    assert math.fsum(att.energy_j) == pytest.approx(total, rel=1e-12, abs=1e-9)
    assert all(x >= -1e-9 * max(total, 1.0) for x in att.energy_j)
    assert math.fsum(att.slice_energy_j) == pytest.approx(total, rel=1e-9, abs=1e-9)


def test_csv_column_sums_to_the_document_figure(tmp_path: Path) -> None:
    doc = dict(example_result())
    total = doc["energy"]["whole_run"]["total_energy_j"]
    path = tmp_path / "r.requests.csv"
    cols = ["index", "start_s", "ttft_ms", "e2el_ms", "prompt_tokens", "output_tokens", "x"]
    rows = [[i, 0.3 * i, 50.0, 800.0 + 10 * i, 100 + i, 64, "keep"] for i in range(12)]
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([cols, *rows])
    att = attribute_result(doc, path)
    assert att is not None
    with path.open(newline="") as f:
        back = list(csv.DictReader(f))
    assert [r["x"] for r in back] == ["keep"] * 12
    assert {r["attributed_energy_source"] for r in back} == {
        f"attributed ({doc['energy']['source']})"
    }
    assert math.fsum(float(r["attributed_energy_j"]) for r in back) == pytest.approx(
        total, rel=1e-15
    )
    # Re-attributing replaces the columns instead of adding a second pair.
    attribute_result(doc, path)
    with path.open(newline="") as f:
        header = next(csv.reader(f))
    assert header.count("attributed_energy_j") == 1
