from __future__ import annotations

import numpy as np
import pytest

from perwatt.errors import ConfigError
from perwatt.facility.allocate import AllocTree
from perwatt.facility.policies import POLICIES, make_policy
from perwatt.facility.policy import Policy, Snapshot


def snap(util: float, *, ok: bool = True, t: float = 0.0) -> Snapshot:
    # one feed over two cohorts of 10 GPUs: high priority (2) and low (0)
    tree = AllocTree(parent=np.array([-1]), depth=np.array([0]), capacity=np.array([10_000.0]))
    # 20 GPUs x 700 W = 14 kW at nameplate > 10 kW: the feed is oversubscribed
    return Snapshot(
        time_s=t,
        tree=tree,
        element=np.array([0, 0]),
        gpus=np.array([10, 10]),
        gain=np.ones(2),
        min_w=np.array([200.0, 200.0]),
        max_w=np.array([700.0, 700.0]),
        request_w=np.array([700.0, 700.0]),
        power_w=np.array([700.0, 700.0]),
        floor_w=np.array([700.0, 300.0]),
        priority=np.array([2, 0]),
        active=np.array([True, True]),
        element_util=np.array([util]),
        telemetry_ok=ok,
    )


@pytest.mark.parametrize("name", list(POLICIES))
def test_every_policy_implements_the_interface(name: str) -> None:
    p = make_policy(name)
    assert isinstance(p, Policy)
    caps = p.allocate(snap(0.5))
    assert caps.shape == (2,)


def test_uniform_splits_the_feed_equally() -> None:
    np.testing.assert_allclose(make_policy("uniform").allocate(snap(0.5)), [500.0, 500.0])


def test_realloc_serves_priority_first() -> None:
    np.testing.assert_allclose(make_policy("realloc").allocate(snap(0.5)), [700.0, 300.0])


def test_polca_thresholds_hysteresis_and_brake() -> None:
    p = make_policy("polca")
    assert list(p.allocate(snap(0.5))) == [700.0, 700.0]
    c = p.allocate(snap(0.91))  # above t1: only low priority capped
    assert c[0] == 700.0 and c[1] < 700.0
    c = p.allocate(snap(0.88))  # inside the hysteresis band: still capped
    assert c[1] < 700.0
    c = p.allocate(snap(0.80))  # released
    assert c[1] == 700.0
    c = p.allocate(snap(0.97))  # above t2: everyone capped
    assert c[0] < 700.0
    c = p.allocate(snap(1.01))  # brake
    assert list(c) == [200.0, 200.0]


def test_thunderbolt_decreases_multiplicatively_and_falls_back() -> None:
    p = make_policy("thunderbolt", release_prob=1.0)
    c1 = p.allocate(snap(0.99))
    assert c1[0] == 700.0 and c1[1] == pytest.approx(700 * 0.85)
    c2 = p.allocate(snap(0.99))
    assert c2[1] == pytest.approx(700 * 0.85**2)
    c3 = p.allocate(snap(0.5))
    assert c3[1] == 700.0  # released (probability 1)
    # telemetry lost: caps held, then the safe uniform cap after the timeout
    assert list(p.allocate(snap(0.5, ok=False, t=100))) == list(c3)
    c4 = p.allocate(snap(0.5, ok=False, t=111))
    np.testing.assert_allclose(c4, [500.0, 500.0])


def test_unknown_policy_or_parameter() -> None:
    with pytest.raises(ConfigError, match="unknown policy"):
        make_policy("magic")
    with pytest.raises(ConfigError, match="policy 'polca'"):
        make_policy("polca", t9=1)


def test_threshold_policies_ignore_elements_that_cannot_overload() -> None:
    s = snap(0.99)
    roomy = Snapshot(
        **{
            **{f: getattr(s, f) for f in Snapshot.__dataclass_fields__},
            "tree": AllocTree(
                parent=np.array([-1]), depth=np.array([0]), capacity=np.array([20_000.0])
            ),
        }
    )
    assert list(make_policy("polca").allocate(roomy)) == [700.0, 700.0]
    assert list(make_policy("thunderbolt").allocate(roomy)) == [700.0, 700.0]
