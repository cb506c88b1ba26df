"""HTML reports and SVG plots over bench results (reads result documents only, measures nothing).

``write_html_report(["a.json", "b.json"], "report.html")`` writes one self-contained file (inline
CSS and SVG, no scripts) that opens offline; see :mod:`perwatt.report.html`. The plot primitives
are in :mod:`perwatt.report.svg`; ``perwatt compare``'s terminal tables in
:mod:`perwatt.report.compare`.
"""

from perwatt.report.html import (
    dedupe_results,
    pareto_front,
    render_html_report,
    write_html_report,
)

__all__ = ["dedupe_results", "pareto_front", "render_html_report", "write_html_report"]
