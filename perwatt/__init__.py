"""perwatt: measure and raise tokens per joule, from one GPU kernel to a grid-connected site."""

from perwatt.errors import PerwattError
from perwatt.meter import Measurement, Meter

__version__ = "0.1.0"

__all__ = ["Measurement", "Meter", "PerwattError", "__version__"]
