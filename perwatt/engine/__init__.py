"""perwatt's built-in inference engine: a small, fast PyTorch decoder in the spirit of gpt-fast.

Shapes (:mod:`~perwatt.engine.config`), the model with its slot KV cache
(:mod:`~perwatt.engine.model`), weights (:mod:`~perwatt.engine.weights`), quantization
(:mod:`~perwatt.engine.quant`), generation (:mod:`~perwatt.engine.generate`) and the accuracy
guard (:mod:`~perwatt.engine.accuracy`). Needs ``torch`` (the ``engine`` extra); importing this
package without it raises a one-line error naming the fix.
"""

from __future__ import annotations

try:
    import torch as _torch  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without torch
    from perwatt.errors import ConfigError

    raise ConfigError("the built-in engine needs PyTorch: pip install 'perwatt[engine]'") from e

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
    PRECISIONS,
    Engine,
    GenerationResult,
    PrecisionPlan,
    load_engine,
    plan_precision,
    resolve_device,
    sample,
)

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
