"""perwatt's built-in inference engine: a small, fast PyTorch decoder in the spirit of gpt-fast.

Shapes (:mod:`~perwatt.engine.config`), the model with its slot KV cache
(:mod:`~perwatt.engine.model`), weights (:mod:`~perwatt.engine.weights`), precisions
(:mod:`~perwatt.engine.precision`), quantization (:mod:`~perwatt.engine.quant`, and
:mod:`~perwatt.engine.quantized_dir` for ``perwatt quantize``), generation
(:mod:`~perwatt.engine.generate`) and the accuracy guard (:mod:`~perwatt.engine.accuracy`).

The names in ``__all__`` load lazily, from the first of :data:`_HOMES` that defines them:
``import perwatt.engine`` and ``import perwatt.engine.batcher`` (pure Python) work without
PyTorch, the shape arithmetic of :mod:`~perwatt.engine.config` needs no torch either, and
touching a torch-backed name without PyTorch installed raises a one-line
:class:`~perwatt.errors.ConfigError` naming the fix.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from perwatt.errors import ConfigError as _ConfigError

# OpenMP threads wait passively (sleep) between parallel regions, unless the user chose
# otherwise. PyTorch's CPU kernels run on libgomp, which by default spin-waits after every
# parallel region (OMP_WAIT_POLICY unset: GOMP_SPINCOUNT, ~3e5 spins) -- except that it
# throttles the spinning once it manages more threads than there are CPUs. A decode step is
# hundreds of small parallel regions: on cores shared with other work, the spinning team
# member competes with the thread that has work, and a step took 52-213 ms on the thread that
# loaded the model (``perwatt bench``) but ~5 ms on a second thread (``perwatt serve``'s engine
# thread, whose extra team happened to trigger the throttle). See BENCHMARKS.md and
# benchmarks/engine_paths.py. The runtime reads this once, when torch loads, which is why it is
# set here: every engine module imports this package before it imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Where the names live, torch-free first: a config name never loads torch.
_HOMES = ("perwatt.engine.config", "perwatt.engine.precision", "perwatt.engine.generate")

__all__ = [
    "PRECISIONS",
    "Engine",
    "GenerationResult",
    "ModelConfig",
    "PrecisionPlan",
    "RopeScaling",
    "active_params",
    "bandwidth_ceiling_tok_s",
    "decode_bytes_per_step",
    "energy_ceiling_tok_per_j",
    "flops_per_token",
    "get_config",
    "list_configs",
    "load_engine",
    "plan_precision",
    "resolve_device",
    "sample",
    "total_params",
]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'perwatt.engine' has no attribute {name!r}")
    for home in _HOMES:
        try:
            module = importlib.import_module(home)
        except ModuleNotFoundError as e:
            if e.name != "torch":
                raise
            raise _ConfigError(
                "the built-in engine needs PyTorch: pip install 'perwatt[engine]'"
            ) from e
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module 'perwatt.engine' has no attribute {name!r}")  # a bad __all__
