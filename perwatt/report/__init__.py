"""HTML reports and SVG plots over bench results (reads result documents only)."""
