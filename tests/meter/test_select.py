"""--select: label matchers, indices, UUIDs and device labels; PromQL out, client-side matching."""

from __future__ import annotations

import pytest

from perwatt.errors import ConfigError
from perwatt.meter.select import parse_selection

NODE1_GPU0 = {"Hostname": "node1", "gpu": "0", "UUID": "GPU-aaaa-0001"}
NODE2_GPU1 = {
    "Hostname": "node2",
    "gpu": "1",
    "UUID": "GPU-bbbb-0002",
    "namespace": "llm",
    "pod": "vllm-0",
}


def test_label_matchers_all_must_hold() -> None:
    sel = parse_selection('Hostname=~"node[12]", gpu!="0"')
    assert not sel.matches(NODE1_GPU0, "node1/gpu0")
    assert sel.matches(NODE2_GPU1, "node2/gpu1")
    assert sel.promql() == 'Hostname=~"node[12]",gpu!="0"'


def test_regex_is_anchored_and_missing_label_is_empty() -> None:
    assert not parse_selection('Hostname=~"node"').matches(NODE1_GPU0, "node1/gpu0")
    assert parse_selection('pod=""').matches(NODE1_GPU0, "node1/gpu0")  # PromQL semantics
    assert parse_selection('pod!~"vllm-.*"').matches(NODE1_GPU0, "node1/gpu0")
    assert not parse_selection('pod!~"vllm-.*"').matches(NODE2_GPU1, "node2/gpu1")


def test_kubernetes_labels() -> None:
    sel = parse_selection('namespace="llm",pod=~"vllm-.*"')
    assert sel.matches(NODE2_GPU1, "node2/gpu1")
    assert not sel.matches(NODE1_GPU0, "node1/gpu0")


def test_indices_uuids_and_device_labels() -> None:
    sel = parse_selection("0, GPU-bbbb-0002")
    assert sel.indices == ("0",) and sel.uuids == ("GPU-bbbb-0002",)
    assert sel.matches(NODE1_GPU0, "node1/gpu0") and sel.matches(NODE2_GPU1, "node2/gpu1")
    assert sel.promql() == 'gpu=~"0",UUID=~"GPU\\-bbbb\\-0002"'
    dev = parse_selection("node2/gpu1")
    assert dev.devices == ("node2/gpu1",) and dev.promql() == ""
    assert dev.matches(NODE2_GPU1, "node2/gpu1") and not dev.matches(NODE1_GPU0, "node1/gpu0")
    both = parse_selection('Hostname="node1",0')
    assert both.matches(NODE1_GPU0, "node1/gpu0")
    assert both.promql() == 'Hostname="node1",gpu=~"0"'


def test_braces_commas_in_values_and_escapes() -> None:
    sel = parse_selection('{pod=~"a,b|c", container="x\\"y"}')
    assert [m.value for m in sel.matchers] == ["a,b|c", 'x"y']
    assert sel.promql() == 'pod=~"a,b|c",container="x\\"y"'


@pytest.mark.parametrize("bad", ["", "   ", "Hostname=node1", 'gpu=~"["', "node one"])
def test_bad_selections_are_one_line_errors(bad: str) -> None:
    with pytest.raises(ConfigError, match="--select"):
        parse_selection(bad)
