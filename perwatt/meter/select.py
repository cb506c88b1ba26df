"""Which remote GPUs to meter: the ``--select`` expression of ``dcgm:`` and ``prometheus:`` sources.

A cluster's telemetry names every GPU of every node. A benchmark of one server must meter that
server's GPUs only, so both remote sources take a selection, written the way the telemetry is
labelled (dcgm-exporter's labels, as Prometheus stores them)::

    Hostname="node1"                      PromQL label matchers: =  !=  =~  !~
    Hostname=~"node[12]",gpu!="3"         several matchers: all must hold
    namespace="llm",pod=~"vllm-.*"        Kubernetes labels dcgm-exporter adds to allocated GPUs
    0,2                                   GPU indices (the ``gpu`` label)
    GPU-5b4e07f6-3a86-4340-039d-25f2a83cdc43    a GPU UUID (the ``UUID`` label)
    node1/gpu0                            a device label as perwatt prints it

Items are separated by commas (commas inside quotes belong to the value). A GPU is metered when
it matches every label matcher and, if indices, UUIDs or device labels are given, one of them.
Regular expressions are anchored at both ends, as in PromQL (RE2; Python's ``re`` agrees on the
common syntax).

For ``prometheus:`` the matchers go into the query itself (and indices/UUIDs become ``gpu=~``/
``UUID=~`` matchers), so only the metered series travel; for ``dcgm:`` they filter the exporter
page.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from perwatt.errors import ConfigError

_MATCHER = re.compile(
    r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)', re.DOTALL
)
_DEVICE = re.compile(r"[^\s,/]+/gpu\d+")
_UUID = re.compile(r"(GPU|MIG)-[0-9A-Za-z-]+")


@dataclass(frozen=True, slots=True)
class Matcher:
    """One PromQL label matcher, ``name op "value"``."""

    name: str
    op: str
    value: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        got = labels.get(self.name, "")  # PromQL: a missing label matches the empty string
        if self.op == "=":
            return got == self.value
        if self.op == "!=":
            return got != self.value
        hit = re.fullmatch(self.value, got, re.DOTALL) is not None
        return hit if self.op == "=~" else not hit

    def promql(self) -> str:
        value = self.value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.name}{self.op}"{value}"'


@dataclass(frozen=True, slots=True)
class Selection:
    """A parsed ``--select``: label matchers plus GPU indices, UUIDs and device labels."""

    text: str = ""
    matchers: tuple[Matcher, ...] = ()
    indices: tuple[str, ...] = ()
    uuids: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.matchers or self.indices or self.uuids or self.devices)

    def matches(self, labels: Mapping[str, str], device: str) -> bool:
        """Whether the series with ``labels`` (perwatt label ``device``) is selected."""
        if not all(m.matches(labels) for m in self.matchers):
            return False
        if not (self.indices or self.uuids or self.devices):
            return True
        return (
            labels.get("gpu", "") in self.indices
            or labels.get("UUID", "") in self.uuids
            or device in self.devices
        )

    def promql(self) -> str:
        """The matchers for a PromQL selector (without braces). Device labels cannot be
        expressed (the host part may be an ``instance``), so they are filtered client-side."""
        parts = [m.promql() for m in self.matchers]
        if self.indices:
            parts.append('gpu=~"' + "|".join(re.escape(i) for i in self.indices) + '"')
        if self.uuids:
            parts.append('UUID=~"' + "|".join(re.escape(u) for u in self.uuids) + '"')
        return ",".join(parts)


def parse_selection(text: str | None) -> Selection:
    """Parse a ``--select`` expression; a malformed one raises :class:`ConfigError`."""
    if text is None:
        return Selection()
    raw = text.strip()
    if raw.startswith("{") and raw.endswith("}"):
        raw = raw[1:-1].strip()
    matchers: list[Matcher] = []
    indices: list[str] = []
    uuids: list[str] = []
    devices: list[str] = []
    pos = 0
    while pos < len(raw):
        m = _MATCHER.match(raw, pos)
        if m is not None:
            name, op, value = m.group(1), m.group(2), m.group(3)
            value = re.sub(r"\\(.)", r"\1", value)
            if op in ("=~", "!~"):
                try:
                    re.compile(value)
                except re.error as e:
                    raise ConfigError(
                        f"--select {text!r}: bad regular expression {value!r}: {e}"
                    ) from None
            matchers.append(Matcher(name, op, value))
            pos = m.end()
            continue
        end = raw.find(",", pos)
        item = (raw[pos:] if end < 0 else raw[pos:end]).strip()
        pos = len(raw) if end < 0 else end + 1
        if not item:
            continue
        if item.isdigit():
            indices.append(item)
        elif _UUID.fullmatch(item):
            uuids.append(item)
        elif _DEVICE.fullmatch(item):
            devices.append(item)
        else:
            raise ConfigError(
                f"--select {text!r}: cannot read {item!r}; use label matchers like "
                "'Hostname=\"node1\"' or 'pod=~\"vllm-.*\"', GPU indices (0,2), GPU UUIDs or "
                "device labels (node1/gpu0)"
            )
    sel = Selection(text.strip(), tuple(matchers), tuple(indices), tuple(uuids), tuple(devices))
    if sel.empty:
        raise ConfigError(f"--select {text!r} selects nothing; e.g. --select 'Hostname=\"node1\"'")
    return sel
