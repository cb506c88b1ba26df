"""The site power policies, by name; each implements :class:`perwatt.facility.policy.Policy`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from perwatt.errors import ConfigError
from perwatt.facility.policies.polca import TwoThreshold
from perwatt.facility.policies.realloc import Reallocate
from perwatt.facility.policies.static import StaticNameplate
from perwatt.facility.policies.thunderbolt import Thunderbolt
from perwatt.facility.policies.uniform import UniformCap
from perwatt.facility.policy import Policy

POLICIES: Final[Mapping[str, Callable[..., Policy]]] = {
    "static": StaticNameplate,
    "uniform": UniformCap,
    "polca": TwoThreshold,
    "thunderbolt": Thunderbolt,
    "realloc": Reallocate,
}


def make_policy(name: str, **params: Any) -> Policy:
    """A fresh policy object by name (parameters as keyword arguments)."""
    f = POLICIES.get(name)
    if f is None:
        raise ConfigError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    try:
        return f(**params)
    except TypeError as e:
        raise ConfigError(f"policy {name!r}: {e}") from None


__all__ = [
    "POLICIES",
    "Reallocate",
    "StaticNameplate",
    "Thunderbolt",
    "TwoThreshold",
    "UniformCap",
    "make_policy",
]
