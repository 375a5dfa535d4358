import json

import pytest

from physgrad.errors import ConfigError
from physgrad.experiments import TrainConfig, build
from physgrad.methods import PGT, Backprop


def test_defaults_build_a_pgt_local_run():
    cfg = TrainConfig()
    data, model, method, opt = build(cfg)
    assert isinstance(method, PGT) and method.scope == "local" and method.num_pairs == cfg.num_pairs
    assert model.encoder.in_features == 64 and model.readout.out_features == 10
    assert opt.param_groups[0]["lr"] == 3e-3
    assert TrainConfig(scope="global").learning_rate == 1e-3
    assert isinstance(build(TrainConfig(method="backprop"), data)[2], Backprop)


@pytest.mark.parametrize(
    "data, match",
    [
        ({"methd": "pgt"}, "unknown config key"),
        ({"method": "magic"}, "unknown value 'magic'"),
        ({"dataset": "imagenet"}, "dataset"),
        ({"epochs": "ten"}, "'epochs' must be int"),
        ({"epochs": 0}, "'epochs' must be >= 1"),
        ({"dropout": 1.5}, "dropout"),
        ({"delta": float("nan")}, "delta"),
        ({"momentum": 1.0}, "'momentum' must be in"),
        ({"momentum": 0.9}, "applies to optimizer 'sgd' only, not 'adam'"),
        ([1, 2], "JSON object"),
    ],
)
def test_broken_configs_are_refused_with_the_key_named(data, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict(data)


def test_sgd_momentum_reaches_the_optimizer():
    cfg = TrainConfig.from_dict({"scope": "global", "optimizer": "sgd", "momentum": 0.9, "lr": 3e-3})
    opt = build(cfg)[3]
    assert type(opt).__name__ == "SGD" and opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["lr"] == 3e-3
    assert build(TrainConfig(optimizer="sgd"))[3].param_groups[0]["momentum"] == 0.0


def test_config_files(tmp_path):
    (tmp_path / "ok.json").write_text(json.dumps({"method": "spsa", "epochs": 3}))
    assert TrainConfig.from_file(tmp_path / "ok.json").method == "spsa"
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        TrainConfig.from_file(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="not found"):
        TrainConfig.from_file(tmp_path / "missing.json")


def test_the_ring_can_be_named_as_the_reservoir():
    from physgrad.systems import AutoOscillationRing

    data, model, _, _ = build(TrainConfig(reservoir="ring", reservoir_size=40))
    assert isinstance(model.reservoir.system, AutoOscillationRing)
    assert model(data.x_test[:3]).shape == (3, 10)
