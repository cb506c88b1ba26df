"""The Prometheus text-format parser: real dcgm-exporter pages, escapes, and every malformed case."""

from __future__ import annotations

import math

import pytest

from perwatt.errors import DataFormatError
from perwatt.meter.prom_text import parse_text, parse_value

# Shaped like a dcgm-exporter 3.x/4.x page (HELP/TYPE before each family, Hostname and
# DCGM_FI_DRIVER_VERSION labels, values printed by Go's %f or as integers).
DCGM_PAGE = """\
# HELP DCGM_FI_DEV_SM_CLOCK SM clock frequency (in MHz).
# TYPE DCGM_FI_DEV_SM_CLOCK gauge
DCGM_FI_DEV_SM_CLOCK{gpu="0",UUID="GPU-5b4e07f6-3a86-4340-039d-25f2a83cdc43",pci_bus_id="00000000:00:07.0",device="nvidia0",modelName="NVIDIA H100 80GB HBM3",Hostname="node1",DCGM_FI_DRIVER_VERSION="550.54.15"} 1980
# HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W).
# TYPE DCGM_FI_DEV_POWER_USAGE gauge
DCGM_FI_DEV_POWER_USAGE{gpu="0",UUID="GPU-5b4e07f6-3a86-4340-039d-25f2a83cdc43",pci_bus_id="00000000:00:07.0",device="nvidia0",modelName="NVIDIA H100 80GB HBM3",Hostname="node1",DCGM_FI_DRIVER_VERSION="550.54.15"} 312.457000
# HELP DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION Total energy consumption since boot (in mJ).
# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter
DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="0",UUID="GPU-5b4e07f6-3a86-4340-039d-25f2a83cdc43",pci_bus_id="00000000:00:07.0",device="nvidia0",modelName="NVIDIA H100 80GB HBM3",Hostname="node1",DCGM_FI_DRIVER_VERSION="550.54.15"} 1.234e+09
"""


def test_dcgm_page_parses_with_types_help_and_labels() -> None:
    doc = parse_text(DCGM_PAGE, source="http://node1:9400/metrics")
    assert len(doc.samples) == 3
    energy = doc.select("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION")
    assert len(energy) == 1
    assert energy[0].value == 1.234e9
    assert energy[0].labels["modelName"] == "NVIDIA H100 80GB HBM3"
    assert energy[0].labels["Hostname"] == "node1"
    assert energy[0].line == 9
    assert doc.types["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"] == "counter"
    assert doc.types["DCGM_FI_DEV_POWER_USAGE"] == "gauge"
    assert doc.help["DCGM_FI_DEV_POWER_USAGE"] == "Power draw (in W)."
    assert doc.select("DCGM_FI_DEV_POWER_USAGE")[0].value == pytest.approx(312.457)


def test_old_exporter_spacing_and_trailing_comma() -> None:
    doc = parse_text('DCGM_FI_DEV_SM_CLOCK{gpu="0", UUID="GPU-604ac76c",} 139\n')
    (s,) = doc.samples
    assert dict(s.labels) == {"gpu": "0", "UUID": "GPU-604ac76c"}
    assert s.value == 139.0


def test_escapes_in_label_values_and_help() -> None:
    text = (
        "# HELP m line one\\nline two \\\\ done\n"
        'm{a="say \\"hi\\"",b="C:\\\\path",c="two\\nlines",d=""} 1\n'
    )
    doc = parse_text(text)
    (s,) = doc.samples
    assert s.labels["a"] == 'say "hi"'
    assert s.labels["b"] == "C:\\path"
    assert s.labels["c"] == "two\nlines"
    assert s.labels["d"] == ""
    assert doc.help["m"] == "line one\nline two \\ done"


def test_label_value_may_contain_braces_commas_and_equals() -> None:
    (s,) = parse_text('m{job="a,b}=c"} 2\n').samples
    assert s.labels["job"] == "a,b}=c"


def test_special_values_timestamps_comments_and_blank_lines() -> None:
    text = "\n".join(
        [
            "# a free comment",
            "#",
            "",
            "a NaN",
            "b +Inf 1700000000000",
            "c -Inf",
            "d\t-1.5e-3\t42",
            "e 9223372036854775794",  # dcgm-exporter's "blank" sentinel, a valid float
            "   ",
            "# EOF",
        ]
    )
    doc = parse_text(text)
    by_name = {s.name: s for s in doc.samples}
    assert math.isnan(by_name["a"].value)
    assert by_name["b"].value == math.inf and by_name["b"].timestamp_ms == 1700000000000
    assert by_name["c"].value == -math.inf
    assert by_name["d"].value == -1.5e-3 and by_name["d"].timestamp_ms == 42
    assert by_name["e"].value == 9223372036854775794.0
    assert by_name["a"].line == 4


def test_crlf_line_endings() -> None:
    doc = parse_text('# TYPE m gauge\r\nm 1\r\nn{x="y"} 2\r\n')
    assert [s.value for s in doc.samples] == [1.0, 2.0]


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('m{gpu="0"', "expected ',' or '}'"),
        ('m{gpu="0} 1', "unterminated label value"),
        ("m{gpu=0} 1", "opening a label value"),
        ('m{0gpu="0"} 1', "label name"),
        ('m{gpu="0" UUID="x"} 1', "expected ',' or '}'"),
        ('m{gpu="\\q"} 1', "unknown escape"),
        ('m{gpu="0",gpu="1"} 1', "repeated"),
        ("m", "space before the value"),
        ("m   ", "space before the value"),  # trailing blanks are not a value
        ("m one", "not a number"),
        ("m 1 2 3", "after the timestamp"),
        ("m 1 1.5", "timestamp"),
        ("9metric 1", "metric name"),
        ("m 1_000", "not a number"),
        ("m infinity", "not a number"),
        ('m{gpu="0"}1', "space before the value"),
        ("<html><body>404</body></html>", "metric name"),
    ],
)
def test_malformed_sample_lines_name_the_line(line: str, fragment: str) -> None:
    text = f"# TYPE ok gauge\nok 1\n{line}\n"
    with pytest.raises(DataFormatError) as ei:
        parse_text(text, source="http://h:9400/metrics")
    msg = str(ei.value)
    assert msg.startswith("http://h:9400/metrics:3: "), msg
    assert fragment in msg


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("# TYPE m kounter", "unknown metric type"),
        ("# TYPE 1m gauge", "bad metric name"),
        ("# TYPE m gauge\n# TYPE m counter", "second # TYPE"),
    ],
)
def test_malformed_type_lines(line: str, fragment: str) -> None:
    with pytest.raises(DataFormatError, match=fragment):
        parse_text(line + "\n")


def test_parse_value_rejects_what_go_would_not_print() -> None:
    assert parse_value("1.234e+09") == 1.234e9
    assert math.isnan(parse_value("NaN"))
    for bad in ("", " 1", "1 ", "0x", "1e"):
        with pytest.raises(ValueError):
            parse_value(bad)


def test_empty_page_is_empty_not_an_error() -> None:
    doc = parse_text("")
    assert doc.samples == ()
    assert doc.names == frozenset()
