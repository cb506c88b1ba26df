"""Read a site from a file: perwatt's own JSON (or the same in YAML), or NVIDIA DPS topology JSON
(``dcpower_0.1``).

**perwatt's format** (``"schema": "perwatt.site/1"``)::

    {"schema": "perwatt.site/1", "name": "my-site",
     "root": {"name": "feed", "kind": "feed", "capacity_w": 9.6e7, "efficiency": 0.995,
              "children": [
                {"name": "ups", "kind": "ups", "capacity_w": 5e6, "efficiency": 0.96,
                 "redundancy": "2N", "count": 20, "oversubscription": 1.2,
                 "children": [
                   {"name": "rack", "kind": "rack", "capacity_w": 1.4e5, "count": 30,
                    "children": [{"name": "tray", "kind": "node", "capacity_w": 7600,
                                  "count": 18, "gpu": "GB300", "gpus": 4,
                                  "other_power_w": 1800}]}]}]}}

Fields: ``name`` (unique), ``kind`` (feed, switchboard, ups, pdu, rpp, rack, node: top down),
``capacity_w`` (> 0: watts at the element's output in normal operation), ``efficiency``
(output/input, default 1), ``redundancy`` (N, N+1 with ``modules``, 2N), ``oversubscription``
(allowed children's capacity / own capacity, default 1), ``count`` (identical copies, default 1),
``children``; a node has ``gpu`` (a key of :data:`perwatt.facility.skus.SKUS`), ``gpus`` and
``other_power_w`` (CPUs, NICs, switches, fans at full load).

**NVIDIA DPS topology JSON.** DPS (Dynamic Power Software) describes a site in Redfish terms:
a flat list of ``Entities`` (each with a ``Name``, a ``Type`` and a ``PowerDomain`` whose
``Constraints`` hold ``PowerValue {Value, Type}`` and whose ``PowerFactor`` converts apparent to
real power) and a ``Topology {Name, Entities: [{Name, Children: [...]}]}`` that nests them by
name. NVIDIA has not published the full schema; perwatt reads exactly these fields, reads
``PowerValue.Type`` as the unit (W, kW, MW, or VA, kVA, MVA, multiplied by ``PowerFactor``),
maps ``Type`` onto perwatt's kinds (table :data:`DPS_KINDS`) and takes the perwatt-only fields a
DPS file lacks (``Efficiency``, ``Redundancy``, ``Count``, ``GPU``, ``GPUCount``,
``OtherPowerW``, ``Oversubscription``) from the entity when present. Any other schema version is
refused in one line. If a real DPS file does not load, the message names the field it missed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from perwatt.errors import ConfigError, DataFormatError
from perwatt.facility.files import read_document
from perwatt.facility.topology import Element, Topology, element_from_dict

PERWATT_SCHEMA: Final = "perwatt.site/1"
DPS_SCHEMAS: Final = ("dcpower_0.1",)

#: DPS / Redfish entity types → perwatt kinds (case-insensitive).
DPS_KINDS: Final[Mapping[str, str]] = {
    "feed": "feed",
    "powerfeed": "feed",
    "utility": "feed",
    "site": "feed",
    "switchgear": "switchboard",
    "switchboard": "switchboard",
    "powershelf": "ups",
    "ups": "ups",
    "pdu": "pdu",
    "powerdistributionunit": "pdu",
    "floorpdu": "pdu",
    "rpp": "rpp",
    "rackpdu": "rpp",
    "rack": "rack",
    "chassis": "rack",
    "node": "node",
    "server": "node",
    "computersystem": "node",
    "computetray": "node",
}
_UNITS: Final = {"w": 1.0, "kw": 1e3, "mw": 1e6, "va": 1.0, "kva": 1e3, "mva": 1e6}


def load_site(path: str | Path) -> Topology:
    """Load a site file, detecting the format; errors name the file and the element."""
    p = Path(path)
    doc = read_document(p, "site file")
    try:
        return site_from_dict(doc, source=str(p))
    except ConfigError as e:
        msg = str(e)
        raise DataFormatError(msg if msg.startswith(str(p)) else f"{p}: {msg}") from None


def site_from_dict(doc: Any, *, source: str = "<dict>") -> Topology:
    """A :class:`Topology` from a parsed perwatt or DPS document."""
    if not isinstance(doc, Mapping):
        raise ConfigError("a site file holds one JSON object")
    if "Topology" in doc or "Entities" in doc:
        return dps_from_dict(doc, source=source)
    schema = doc.get("schema")
    if schema != PERWATT_SCHEMA:
        raise ConfigError(
            f"unknown site schema {schema!r}; expected {PERWATT_SCHEMA!r} or a DPS file "
            f"({', '.join(DPS_SCHEMAS)})"
        )
    if "root" not in doc:
        raise ConfigError("missing root")
    root = element_from_dict(doc["root"])
    return Topology(name=str(doc.get("name", root.name)), root=root, source=source)


def _dps_watts(ent: Mapping[str, Any], name: str) -> float:
    dom = ent.get("PowerDomain")
    if not isinstance(dom, Mapping):
        raise ConfigError(f"entity {name!r}: missing PowerDomain")
    cons = dom.get("Constraints")
    if not isinstance(cons, list) or not cons:
        raise ConfigError(f"entity {name!r}: PowerDomain has no Constraints")
    pf = dom.get("PowerFactor", 1.0)
    if isinstance(pf, bool) or not isinstance(pf, int | float) or not 0 < pf <= 1:
        raise ConfigError(f"entity {name!r}: PowerFactor must be in (0, 1], got {pf!r}")
    watts: list[float] = []
    for c in cons:
        pv = c.get("PowerValue") if isinstance(c, Mapping) else None
        if not isinstance(pv, Mapping) or "Value" not in pv:
            raise ConfigError(f"entity {name!r}: a constraint has no PowerValue.Value")
        unit = str(pv.get("Type", "W")).lower()
        if unit not in _UNITS:
            raise ConfigError(
                f"entity {name!r}: PowerValue.Type {pv.get('Type')!r} is not one of "
                "W, kW, MW, VA, kVA, MVA"
            )
        v = pv["Value"]
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ConfigError(f"entity {name!r}: PowerValue.Value must be a number")
        w = float(v) * _UNITS[unit] * (float(pf) if unit.endswith("va") else 1.0)
        watts.append(w)
    return min(watts)  # the binding constraint


def dps_from_dict(doc: Mapping[str, Any], *, source: str = "<dict>") -> Topology:
    """A :class:`Topology` from an NVIDIA DPS topology document (see the module docstring)."""
    version = doc.get("SchemaVersion", doc.get("Version"))
    if version not in DPS_SCHEMAS:
        raise ConfigError(
            f"unsupported DPS schema version {version!r}; perwatt reads {', '.join(DPS_SCHEMAS)}"
        )
    ents = doc.get("Entities")
    if not isinstance(ents, list):
        raise ConfigError("DPS file has no Entities list")
    by_name: dict[str, Mapping[str, Any]] = {}
    for e in ents:
        if not isinstance(e, Mapping) or not isinstance(e.get("Name"), str):
            raise ConfigError("every DPS entity needs a Name")
        if e["Name"] in by_name:
            raise ConfigError(f"entity {e['Name']!r} appears twice in Entities")
        by_name[e["Name"]] = e
    topo = doc.get("Topology")
    if not isinstance(topo, Mapping) or not isinstance(topo.get("Entities"), list):
        raise ConfigError("DPS file has no Topology.Entities")
    roots = topo["Entities"]
    if len(roots) != 1:
        raise ConfigError(f"Topology.Entities must hold one root (the feed), got {len(roots)}")

    def build(ref: Any, path: tuple[str, ...]) -> Element:
        if not isinstance(ref, Mapping) or not isinstance(ref.get("Name"), str):
            raise ConfigError(f"a Topology entry under {path[-1] if path else 'root'} has no Name")
        name = ref["Name"]
        if name in path:
            raise ConfigError(f"entity {name!r}: cycle in Topology ({' > '.join((*path, name))})")
        ent = by_name.get(name)
        if ent is None:
            raise ConfigError(f"entity {name!r} is in Topology but not in Entities")
        kind = DPS_KINDS.get(str(ent.get("Type", "")).lower())
        if kind is None:
            raise ConfigError(
                f"entity {name!r}: Type {ent.get('Type')!r} is not one of {', '.join(DPS_KINDS)}"
            )
        kids = ref.get("Children", [])
        if not isinstance(kids, list):
            raise ConfigError(f"entity {name!r}: Children must be a list")
        return Element(
            name=name,
            kind=kind,
            capacity_w=_dps_watts(ent, name),
            efficiency=ent.get("Efficiency", 1.0),
            redundancy=ent.get("Redundancy", "N"),
            modules=ent.get("Modules", 2),
            oversubscription=ent.get("Oversubscription", 1.0),
            count=ent.get("Count", 1),
            children=tuple(build(k, (*path, name)) for k in kids),
            gpu=ent.get("GPU"),
            gpus=ent.get("GPUCount", 0),
            other_power_w=ent.get("OtherPowerW", 0.0),
        )

    root = build(roots[0], ())
    return Topology(name=str(topo.get("Name", root.name)), root=root, source=source)


def to_dps(topology: Topology) -> dict[str, Any]:
    """Write a topology as a DPS ``dcpower_0.1`` document (the fields perwatt reads back)."""
    ents: list[dict[str, Any]] = []
    kind_to_type = {
        "feed": "PowerFeed",
        "switchboard": "Switchgear",
        "ups": "UPS",
        "pdu": "PDU",
        "rpp": "RPP",
        "rack": "Rack",
        "node": "ComputerSystem",
    }

    def walk(e: Element) -> dict[str, Any]:
        ent: dict[str, Any] = {
            "Name": e.name,
            "Type": kind_to_type[e.kind],
            "PowerDomain": {
                "Constraints": [{"PowerValue": {"Value": e.capacity_w, "Type": "W"}}],
                "PowerFactor": 1.0,
            },
            "Efficiency": e.efficiency,
            "Redundancy": e.redundancy,
            "Modules": e.modules,
            "Oversubscription": e.oversubscription,
            "Count": e.count,
        }
        if e.kind == "node":
            ent.update(GPU=e.gpu, GPUCount=e.gpus, OtherPowerW=e.other_power_w)
        ents.append(ent)
        return {"Name": e.name, "Children": [walk(c) for c in e.children]}

    tree = walk(topology.root)
    return {
        "SchemaVersion": DPS_SCHEMAS[0],
        "Entities": ents,
        "Topology": {"Name": topology.name, "Entities": [tree]},
    }


__all__ = [
    "DPS_KINDS",
    "DPS_SCHEMAS",
    "PERWATT_SCHEMA",
    "dps_from_dict",
    "load_site",
    "site_from_dict",
    "to_dps",
]
