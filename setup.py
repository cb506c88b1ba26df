"""Build configuration that pyproject.toml cannot state without experimental keys: the one C
extension, the compiled frontier sweep (perwatt/train/_sweep.c, plain C99, no NumPy headers).

It is optional: without a C compiler the install still succeeds and perwatt.train falls back
to the NumPy/SciPy sweep (same frontier, slower); `perwatt env` says which one is in use.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("perwatt.train._sweep", sources=["perwatt/train/_sweep.c"], optional=True),
    ]
)
