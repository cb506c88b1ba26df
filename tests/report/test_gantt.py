"""The simulate report: well-formed self-contained HTML with Gantt charts and the frontier."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from perwatt.report.gantt import (
    colour,
    frontier_svg,
    gantt_svg,
    nice_ticks,
    render_html,
    write_html,
)
from perwatt.train.simulate import SimulationReport, Timeline, TimelineBar

SVG = "{http://www.w3.org/2000/svg}"


def _timeline(freqs: list[int], label: str) -> Timeline:
    # Two stages, one microbatch: F on stage 0, F on 1, B on 1, B on 0.
    seq = [(0, "forward"), (1, "forward"), (1, "backward"), (0, "backward")]
    bars, t = [], 0.0
    for (s, inst), f in zip(seq, freqs, strict=True):
        d = (0.01 if inst == "forward" else 0.02) * 1410 / f
        bars.append(
            TimelineBar(
                stage=s,
                instruction=inst,
                microbatch=0,
                chunk=0,
                start_s=t,
                duration_s=d,
                freq_mhz=f,
                energy_j=d * f / 5,
            )
        )
        t += d
    busy = [sum(b.duration_s for b in bars if b.stage == s) for s in (0, 1)]
    return Timeline(
        label=label,
        num_stages=2,
        bars=tuple(bars),
        p_block_w=(50.0, 50.0),
        iteration_time_s=t,
        compute_energy_j=sum(b.energy_j for b in bars),
        blocking_energy_j=sum(50.0 * (t - b) for b in busy),
    )


def _report() -> SimulationReport:
    before = _timeline([1410, 1410, 1410, 1410], "all max clock")
    after = _timeline([1005, 1410, 1410, 1200], "plan")
    return SimulationReport(
        profile_path="<tiny & test>",
        schedule_name="1f1b",
        num_stages=2,
        num_microbatches=1,
        p_block_w=(50.0, 50.0),
        target="straggler ratio 1.2",
        before=before,
        after=after,
        frontier=((0.06, 30.0), (0.065, 27.0), (0.07, 26.5)),
        chosen=(0.065, 27.0),
        planner_replay=(after.iteration_time_s, after.energy_j),
        baseline_replay=(before.iteration_time_s, before.energy_j),
        time_limit_s=0.072,
        horizon_s=0.072,
    )


def test_html_is_self_contained_and_well_formed(tmp_path: Path) -> None:
    path = write_html(_report(), tmp_path / "r.html")
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert "<script" not in text and "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    assert "src=" not in text and "<link" not in text
    assert "&lt;tiny &amp; test&gt;" in text  # escaped user text
    assert "simulated" in text
    svgs = re.findall(r"<svg.*?</svg>", text, re.S)
    assert len(svgs) == 7  # 2 colour bars, 4 Gantt charts, 1 frontier
    for s in svgs:
        ET.fromstring(s)  # each one parses as XML
    assert not (tmp_path / "r.html.tmp").exists()


def test_gantt_bars_placed_and_coloured() -> None:
    tl = _timeline([1005, 1410, 1410, 1200], "plan")
    root = ET.fromstring(gantt_svg(tl, colour_by="freq", width=1000, value_range=(1005, 1410)))
    bars = [r for r in root.iter(f"{SVG}rect") if r.get("class") in ("f", "b")]
    assert len(bars) == 4
    tips = [r.find(f"{SVG}title").text for r in bars]  # type: ignore[union-attr]
    assert "stage 0 forward mb 0: 1005 MHz" in tips[0]
    # Lowest clock → the map's first colour, highest → its last.
    assert bars[0].get("fill") == colour(0.0) == "#440154"
    assert bars[1].get("fill") == colour(1.0) == "#fde725"
    # Bars are in time order and never overlap on a stage.
    xs = [float(b.get("x")) for b in bars]  # type: ignore[arg-type]
    assert xs == sorted(xs)
    # The iteration fills the plot width (left margin 70, right 20).
    last = bars[-1]
    assert float(last.get("x")) + float(last.get("width")) == pytest.approx(1000 - 20, abs=0.02)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="colour_by"):
        gantt_svg(tl, colour_by="energy")


def test_shared_time_axis_shows_slowdown() -> None:
    r = _report()
    t_max = max(r.before.iteration_time_s, r.after.iteration_time_s)
    fast = ET.fromstring(gantt_svg(r.before, t_max_s=t_max, width=1000))
    ends = [ln for ln in fast.iter(f"{SVG}line") if ln.get("class") == "end"]
    # The faster run ends before the right edge of the shared axis.
    assert float(ends[0].get("x1")) < 1000 - 20 - 1  # type: ignore[arg-type]


def test_frontier_plot_marks_points() -> None:
    svg = frontier_svg(
        [(1.0, 10.0), (2.0, 8.0), (3.0, 7.5)],
        chosen=(2.0, 8.0),
        baseline=(1.0, 12.0),
        time_limit_s=2.5,
    )
    root = ET.fromstring(svg)
    path = next(p for p in root.iter(f"{SVG}path") if p.get("class") == "front")
    assert path.get("d", "").count("L") == 2
    chosen = [c for c in root.iter(f"{SVG}circle") if c.get("class") == "chosen"]
    assert chosen and "chosen: 2.0000 s, 8.0 J" in chosen[0].find(f"{SVG}title").text  # type: ignore[union-attr, operator]
    assert any(ln.get("class") == "limit" for ln in root.iter(f"{SVG}line"))


def test_helpers() -> None:
    assert nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(2.8, 3.4)[0] >= 2.8
    assert nice_ticks(1, 1) == [1]
    assert colour(-5) == colour(0) and colour(7) == colour(1)
    assert colour(float("nan")) == colour(0)
    assert render_html(_report()).count("<h2>") == 4


def test_stage_table() -> None:
    from perwatt.report.gantt import stage_table_html

    r = _report()
    table = stage_table_html(r)
    assert table.count("<tr>") == 3  # header + 2 stages
    # Stage 0 ran at 1005 and 1200 MHz in the plan.
    assert "<td>1005–1200</td>" in table
    total_before = sum(
        sum(b.energy_j for b in r.before.bars if b.stage == s)
        + 50.0 * (r.before.iteration_time_s - r.before.busy_s(s))
        for s in (0, 1)
    )
    assert total_before == pytest.approx(r.before.energy_j)


def test_interleaved_chunks_and_recompute_are_drawn() -> None:
    # Gantt of the plans `perwatt train simulate --schedule interleaved --chunks 2 --recompute`
    # replays: every bar labelled with its chunk, odd chunks outlined, recomputation explained.
    from perwatt.train import interleaved_one_f_one_b, load_profile
    from perwatt.train.simulate import all_max_plan, simulate_plan

    profile = load_profile(Path(__file__).resolve().parents[1] / "train/data/tiny_profile.csv")
    sched = interleaved_one_f_one_b(2, 2, 2, recompute=True)
    tl = simulate_plan(sched, profile, all_max_plan(sched, profile), p_block_w=10.0)
    svg = gantt_svg(tl, width=4000)
    labels = re.findall(r'class="bar"[^>]*>([^<]+)</text>', svg)
    assert sorted(labels) == sorted(b.tag(2) for b in tl.bars)
    assert {"F0c0", "F0c1", "B1c0", "B1c1"} <= set(labels)
    assert svg.count('class="f odd"') == svg.count('class="b odd"') == 4  # chunk 1: 2 x 2 mb
    assert svg.count("chunk 0") == svg.count("chunk 1") == 8
    assert svg.count("(re-runs its forward first)") == 8  # every backward bar
    report = replace(_report(), chunks=2, recompute=True)
    text = render_html(report)
    assert (
        "model chunk <i>k</i> of 2 per GPU" in text and "includes the forward it recomputes" in text
    )
    assert "model chunk" not in render_html(_report())
