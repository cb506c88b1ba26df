"""perwatt: measure and raise tokens per joule, from one GPU kernel to a grid-connected site."""

from typing import TYPE_CHECKING, Any

from perwatt.errors import PerwattError

if TYPE_CHECKING:
    from perwatt.meter.meter import Measurement, Meter

__version__ = "0.1.0"

__all__ = ["Measurement", "Meter", "PerwattError", "__version__"]


def __getattr__(name: str) -> Any:
    # lazy: `perwatt --version` and every command start here; the meter loads when first used
    if name in ("Measurement", "Meter"):
        from perwatt.meter import meter

        return getattr(meter, name)
    raise AttributeError(f"module 'perwatt' has no attribute {name!r}")
