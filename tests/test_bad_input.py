"""Bad input ends in a clear error naming the problem, every time (configs, CLI, checkpoints, folders)."""

import pytest

from physgrad.cli import main
from physgrad.errors import ConfigError
from physgrad.experiments.config import TrainConfig


@pytest.mark.parametrize("key,value", [
    ("reservoir_size", 10**12), ("seed", 2**64), ("train_samples", -5), ("lr", -1.0), ("epochs", 10**9),
    ("batch_size", 0), ("delta", 0.0), ("num_pairs", 10**9), ("noise", float("inf")), ("device_seed", -1),
])
def test_every_config_field_is_bounded_and_named(key, value):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        TrainConfig.from_dict({key: value})


def test_a_config_too_big_for_this_machine_is_refused():
    with pytest.raises(ConfigError, match="reservoir_size.*memory"):
        TrainConfig.from_dict({"reservoir_size": 1_000_000, "reservoir_inputs": 100_000})


def test_cli_messages_name_the_problem(tmp_path, capsys):
    assert main(["train", "--dataset", "mnist", "--data-root", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "--data-root" in err and "root=" not in err and "dataset-mnist" not in err
    assert not (tmp_path / "r" / "metrics.jsonl").exists()  # a failed run leaves no empty metrics file
    assert main(["train", "--lr", "-1", "--out", str(tmp_path / "r")]) == 2
    assert "--lr must be > 0" in capsys.readouterr().err  # the flag the user typed, named
    assert main(["report", str(tmp_path / "nothing"), "--out", "/proc/forbidden"]) == 2
    assert main(["train", "--epochs", "1", "--train-samples", "64", "--test-samples", "32", "--out", "/proc/forbidden/x"]) == 2
    capsys.readouterr()
    run = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--train-samples", "64", "--test-samples", "32", "--num-pairs", "2", "--out", str(run)]) == 0
    (run / "checkpoint.pt").write_bytes(b"\x80\x02garbage")
    assert main(["train", "--epochs", "1", "--train-samples", "64", "--test-samples", "32", "--num-pairs", "2", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "--no-resume" in err and "weights_only" not in err
