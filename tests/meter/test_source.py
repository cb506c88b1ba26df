"""Energy-source labels (perwatt/meter/source.py): built, split and judged in one place."""

from __future__ import annotations

import pytest

from perwatt.meter.source import is_measured, label_parts, mixed_label


def test_mixed_label_is_the_common_label_or_a_sorted_mixed_one() -> None:
    assert mixed_label(["rapl", "rapl"]) == "rapl"
    assert mixed_label(["simulated", "nvml-counter", "simulated"]) == (
        "mixed(nvml-counter,simulated)"
    )
    with pytest.raises(ValueError):
        mixed_label([])


def test_label_parts_split_what_mixed_label_built() -> None:
    built = mixed_label(["replay(rapl)", "replay(simulated)"])
    assert label_parts(built) == ["replay(rapl)", "replay(simulated)"]
    assert label_parts("rapl") == ["rapl"]
    assert label_parts("mixed()") == []
    assert is_measured(mixed_label(["rapl", "nvml-counter"]))
    assert not is_measured(mixed_label(["rapl", "simulated"]))
