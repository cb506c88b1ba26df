"""Precision plans: which dtype and kernel a precision gets on a device."""

from __future__ import annotations

import pytest
import torch

from perwatt.errors import ConfigError


def test_bf16_on_a_pre_ampere_gpu_names_fp16(monkeypatch: pytest.MonkeyPatch) -> None:
    import perwatt.engine.precision as G

    monkeypatch.setattr(G, "_capability", lambda _dev: (7, 5))  # a T4
    with pytest.raises(ConfigError, match=r"this GPU is sm_75; use --precision fp16"):
        G.plan_precision("bf16", torch.device("cpu"))
    assert G.plan_precision("fp16", torch.device("cpu")).emulated is False
