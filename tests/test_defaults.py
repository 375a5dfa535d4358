"""The recommended-defaults table and its global learning-rate rule."""

import pytest

from physgrad.methods.defaults import DEFAULTS, default_lr


def test_table_has_every_scope_and_setting():
    for scope in ("global", "local"):
        d = DEFAULTS[scope]
        assert {"num_pairs", "delta", "optimizer", "momentum", "schedule"} <= set(d)
        assert d["num_pairs"] >= 1 and 0 < d["delta"] < 1
    assert DEFAULTS["global"]["optimizer"] == "sgd" and DEFAULTS["global"]["momentum"] == 0.9
    assert DEFAULTS["global"]["delta"] == DEFAULTS["local"]["delta"]  # one delta for PGT and TrainConfig


def test_global_rate_scales_like_k_over_d_plus_k():
    c, k = DEFAULTS["global"]["lr_constant"], DEFAULTS["global"]["num_pairs"]
    assert default_lr("global", 100) == pytest.approx(c * k / (100 + k))
    assert default_lr("global", 1000, 32) == pytest.approx(c * 32 / 1032)
    assert default_lr("global", 10_000) < default_lr("global", 100)
    assert default_lr("local") == DEFAULTS["local"]["lr"]
    with pytest.raises(ValueError):
        default_lr("global")
    with pytest.raises(ValueError):
        default_lr("sideways", 10)
