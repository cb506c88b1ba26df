from __future__ import annotations

import pytest

from perwatt.errors import ConfigError
from perwatt.facility.presets import dgx_h100, eight_rack
from perwatt.facility.topology import Element, Topology, expand


def rack(name: str = "r", count: int = 1, nodes: int = 4) -> Element:
    return Element(
        name=name,
        kind="rack",
        capacity_w=nodes * 10_200.0,
        count=count,
        children=(dgx_h100(f"{name}-n", count=nodes),),
    )


def test_children_over_parent_needs_declared_oversubscription() -> None:
    with pytest.raises(ConfigError, match=r"element 'pdu'.*1\.200x.*oversubscription"):
        Element(name="pdu", kind="pdu", capacity_w=2 * 40_800.0 / 1.2, children=(rack(count=2),))
    ok = Element(
        name="pdu",
        kind="pdu",
        capacity_w=2 * 40_800.0 / 1.2,
        oversubscription=1.25,
        children=(rack(count=2),),
    )
    t = Topology(name="t", root=Element(name="f", kind="feed", capacity_w=1e6, children=(ok,)))
    assert t.oversubscription()["pdu"] == pytest.approx(1.2)


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"capacity_w": -1.0}, "capacity_w must be > 0"),
        ({"capacity_w": float("nan")}, "finite"),
        ({"efficiency": 1.2}, "efficiency"),
        ({"redundancy": "3N"}, "redundancy"),
        ({"count": 0}, "count"),
        ({"kind": "substation"}, "unknown kind"),
    ],
)
def test_bad_elements_name_themselves(kw: dict, msg: str) -> None:
    base = {"name": "rack-7", "kind": "rack", "capacity_w": 50_000.0, "children": (dgx_h100(),)}
    with pytest.raises(ConfigError, match=f"rack-7.*{msg}|{msg}"):
        Element(**{**base, **kw})


def test_kind_order_prevents_cycles_and_upside_down_trees() -> None:
    with pytest.raises(ConfigError, match="cannot sit under"):
        Element(
            name="r",
            kind="rack",
            capacity_w=1e5,
            children=(Element(name="p", kind="pdu", capacity_w=2e4, children=(dgx_h100(),)),),
        )


def test_node_nameplate_must_fit_its_capacity() -> None:
    with pytest.raises(ConfigError, match="nameplate"):
        Element(name="n", kind="node", capacity_w=5000.0, gpu="H100-SXM", gpus=8)


def test_unknown_gpu_is_one_line() -> None:
    with pytest.raises(ConfigError, match="unknown GPU SKU 'X1'"):
        Element(name="n", kind="node", capacity_w=5000.0, gpu="X1", gpus=1)


def test_redundancy_reserve() -> None:
    e = Element(name="u", kind="ups", capacity_w=1e6, redundancy="2N", children=(rack(),))
    assert e.firm_capacity_w == 5e5 and e.reserve_w == 5e5
    e = Element(
        name="u", kind="ups", capacity_w=1e6, redundancy="N+1", modules=4, children=(rack(),)
    )
    assert e.firm_capacity_w == pytest.approx(7.5e5)


def test_flat_tree_multiplicities_and_gains() -> None:
    t = eight_rack()
    fl = t.flat()
    assert fl.leaf_gpus.sum() == t.gpu_count == 256
    # the root's gain is 1; a node's self gain is 1/(feed eff x pdu eff)
    assert fl.gain[0] == 1.0
    assert fl.self_gain[fl.leaves[0]] == pytest.approx(1 / (0.99 * 0.985))


def test_expand_keeps_everything_but_counts() -> None:
    t = eight_rack()
    e = expand(t)
    assert e.gpu_count == t.gpu_count
    assert e.nameplate_w == pytest.approx(t.nameplate_w)
    assert all(x.count == 1 for x in e.root.walk())


def test_duplicate_names_are_refused() -> None:
    r = rack("same")
    with pytest.raises(ConfigError, match="appears twice"):
        Topology(name="t", root=Element(name="same", kind="feed", capacity_w=1e6, children=(r,)))
