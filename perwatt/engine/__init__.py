"""perwatt's built-in inference engine: a small, fast PyTorch decoder in the spirit of gpt-fast.

Shapes (:mod:`~perwatt.engine.config`), the model with its slot KV cache
(:mod:`~perwatt.engine.model`), weights (:mod:`~perwatt.engine.weights`), quantization
(:mod:`~perwatt.engine.quant`), generation (:mod:`~perwatt.engine.generate`) and the accuracy
guard (:mod:`~perwatt.engine.accuracy`).

The names below are imported lazily: ``import perwatt.engine.batcher`` (pure Python) works without
PyTorch, and touching a torch-backed name without PyTorch installed raises a one-line
:class:`~perwatt.errors.ConfigError` naming the fix.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from perwatt.engine.config import (
        ModelConfig,
        RopeScaling,
        active_params,
        bandwidth_ceiling_tok_s,
        decode_bytes_per_step,
        energy_ceiling_tok_per_j,
        flops_per_token,
        get_config,
        list_configs,
        total_params,
    )
    from perwatt.engine.generate import (
        Engine,
        GenerationResult,
        load_engine,
        resolve_device,
        sample,
    )
    from perwatt.engine.precision import PRECISIONS, PrecisionPlan, plan_precision

_CONFIG_NAMES = (
    "ModelConfig",
    "RopeScaling",
    "active_params",
    "bandwidth_ceiling_tok_s",
    "decode_bytes_per_step",
    "energy_ceiling_tok_per_j",
    "flops_per_token",
    "get_config",
    "list_configs",
    "total_params",
)
_GENERATE_NAMES = (
    "Engine",
    "GenerationResult",
    "load_engine",
    "resolve_device",
    "sample",
)
_PRECISION_NAMES = ("PRECISIONS", "PrecisionPlan", "plan_precision")


def __getattr__(name: str) -> Any:
    if name in _CONFIG_NAMES:
        module = "perwatt.engine.config"  # shape arithmetic: no torch needed
    elif name in _GENERATE_NAMES:
        module = "perwatt.engine.generate"
    elif name in _PRECISION_NAMES:
        module = "perwatt.engine.precision"
    else:
        raise AttributeError(f"module 'perwatt.engine' has no attribute {name!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as e:
        if e.name != "torch":
            raise
        from perwatt.errors import ConfigError

        raise ConfigError("the built-in engine needs PyTorch: pip install 'perwatt[engine]'") from e


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
