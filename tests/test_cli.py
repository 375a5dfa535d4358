import json
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from physgrad.cli import main
from physgrad.methods.registry import method_names
from physgrad.systems.registry import device_names
from physgrad.training import read_metrics

ROOT = Path(__file__).resolve().parent.parent


def test_train_writes_metrics_with_accuracy_and_queries(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--method", "pgt", "--scope", "local", "--dataset", "digits", "--epochs", "2", "--seed", "1",
                 "--num-pairs", "4", "--train-samples", "300", "--test-samples", "100", "--out", str(out)])
    assert code == 0
    last = read_metrics(out / "metrics.jsonl")[-1]
    assert 0.3 < last["test_accuracy"] <= 1.0 and last["queries"] > 0
    assert json.loads((out / "config.json").read_text())["seed"] == 1
    assert "test accuracy" in capsys.readouterr().out


def test_unknown_names_give_a_clear_error(tmp_path, capsys):
    assert main(["train", "--method", "magic", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--method: unknown value 'magic'" in err and "'hge'" in err and "'aeqprop'" in err
    assert main(["train", "--dataset", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "dataset" in capsys.readouterr().err
    assert main(["train", "--device", "teapot", "--out", str(tmp_path / "x")]) == 2
    assert "unknown device 'teapot'; choose one of ['reservoir'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--lr", "-1"], "--lr must be > 0.0 and <= 10.0, got -1.0"),
    (["--delta", "0"], "--delta must be > 0"),
    (["--method", "hge", "--method-options", '{"window": 1}'], "method 'hge' has no option(s) ['window']; its options are"),
    (["--method", "hge", "--method-options", '{"window_s": -1}'], "window_s must be a finite number > 0"),
    (["--device", "reservoir", "--device-args", '{"colour": 1}'], "takes no argument(s) ['colour']"),
])
def test_bad_flags_name_the_flag(tmp_path, capsys, argv, message):
    assert main(["train", *argv, "--epochs", "1", "--out", str(tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x" / "metrics.jsonl").exists()  # nothing ran


def test_bad_json_flag_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--method-options", "[1]", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--method-options: must be a JSON object" in capsys.readouterr().err


@pytest.mark.parametrize("method", method_names())
def test_train_every_method_with_no_other_flag(tmp_path, method):
    """The acceptance contract: ``physgrad train --method M --epochs 1 --out DIR`` (each method's own device and data)."""
    out = tmp_path / method
    assert main(["train", "--method", method, "--epochs", "1", "--out", str(out)]) == 0
    last = read_metrics(out / "metrics.jsonl")[-1]
    assert 0.0 <= last["test_accuracy"] <= 1.0 and last["queries"] > 0
    assert json.loads((out / "config.json").read_text())["method"] == method


def test_methods_and_devices_list_one_name_per_line(capsys):
    assert main(["methods"]) == 0
    assert capsys.readouterr().out.split() == method_names()
    assert main(["devices"]) == 0
    assert capsys.readouterr().out.split() == device_names()


def test_check_device_passes_and_fails_by_exit_code(capsys):
    assert main(["check-device", "tests._user_device:Rig", "--device-args", '{"outputs": 2}']) == 0
    assert "conforms" in capsys.readouterr().out
    assert main(["check-device", "tests._user_device:Float64Rig"]) == 1
    assert "float32 probes got float64 answers" in capsys.readouterr().err
    assert main(["check-device", "dnpu-time"]) == 0
    assert main(["check-device", "tests._user_device:Nope"]) == 2
    assert "has no attribute 'Nope'" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_a_user_device_and_train_it_over_tcp(tmp_path, capsys):
    """``physgrad serve --device tests._user_device:Rig`` in a subprocess, ``physgrad train --device tcp://...`` here."""
    token = tmp_path / "token"
    token.write_text(secrets.token_urlsafe(32))  # the server refuses short or repetitive tokens
    token.chmod(0o600)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen(
        [sys.executable, "-m", "physgrad.cli", "serve", "--device", "tests._user_device:Rig", "--device-args",
         '{"noise": 0.001}', "--token-file", str(token), "--port", str(port), "--duration", "90"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        line = server.stdout.readline()  # "serving ... at tcp://127.0.0.1:PORT"
        assert f"127.0.0.1:{port}" in line, line + server.stdout.read() if server.poll() is not None else line
        out = tmp_path / "remote"
        code = main(["train", "--device", f"tcp://127.0.0.1:{port}", "--token-file", str(token), "--epochs", "1",
                     "--train-samples", "96", "--test-samples", "48", "--num-pairs", "2", "--out", str(out)])
        assert code == 0, capsys.readouterr().err
        last = read_metrics(out / "metrics.jsonl")[-1]
        assert last["queries"] > 0 and 0.0 <= last["test_accuracy"] <= 1.0
        assert main(["check-device", f"tcp://127.0.0.1:{port}", "--token-file", str(token)]) == 0, capsys.readouterr().err
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_run_and_report(tmp_path, capsys):
    cfgs = []
    for name, method in [("bp", "backprop"), ("spsa", "spsa")]:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"method": method, "scope": "local", "epochs": 1, "train_samples": 200, "test_samples": 50, "num_pairs": 2}))
        cfgs.append(str(path))
    assert main(["run", *cfgs, "--out", str(tmp_path / "runs")]) == 0
    assert main(["report", str(tmp_path / "runs" / "bp"), str(tmp_path / "runs" / "spsa"), "--out", str(tmp_path / "rep")]) == 0
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "backprop (bp)" in report and "spsa-local (spsa)" in report
    assert (tmp_path / "rep" / "accuracy.png").stat().st_size > 1000
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "rep2")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


def test_demo_quick_prints_the_comparison(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for label in ("backprop", "pgt-local", "pgt-global"):
        assert f"| {label} |" in out
    assert (tmp_path / "report.md").exists()


def test_train_without_out_writes_runs_label_and_run_gives_each_config_its_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--method", "backprop", "--epochs", "1", "--train-samples", "32", "--test-samples", "16"]) == 0
    assert read_metrics(tmp_path / "runs" / "backprop" / "metrics.jsonl")[-1]["queries"] > 0
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "same.json").write_text(json.dumps({"method": "spsa", "num_pairs": 2}))
    assert main(["run", "a/same.json", "b/same.json", "--epochs", "1", "--train-samples", "32", "--test-samples", "16",
                 "--out", "R"]) == 0
    assert (tmp_path / "R" / "same-0" / "metrics.jsonl").exists() and (tmp_path / "R" / "same-1" / "metrics.jsonl").exists()
    assert main(["run", "missing.json", "--out", "R"]) == 2
    assert "config file missing.json not found" in capsys.readouterr().err


@pytest.mark.parametrize("scope", [None, "global"])
def test_train_with_no_setting_flags_uses_the_shipped_defaults(tmp_path, monkeypatch, scope):
    """``physgrad train`` with no optimizer/lr/K/δ/batch flag: what it builds is DEFAULTS (read from the
    trainer's method, optimizer and scheduler, not restated)."""
    import torch

    from physgrad.experiments import config as config_module
    from physgrad.methods.defaults import DEFAULTS, LossBackoff, default_lr

    built = []

    class Spy(config_module.Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(config_module, "Trainer", Spy)
    argv = ["train", "--epochs", "1", "--train-samples", "64", "--test-samples", "32", "--out", str(tmp_path / "run")]
    assert main(argv + (["--scope", scope] if scope else [])) == 0
    trainer = built[0]
    row = DEFAULTS[scope or "local"]
    assert (trainer.method.num_pairs, trainer.method.delta) == (row["num_pairs"], row["delta"])
    assert trainer.batch_size == DEFAULTS["batch_size"]
    group = trainer.optimizer.param_groups[0]
    if scope == "global":
        d = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        assert isinstance(trainer.optimizer, torch.optim.SGD) and group["momentum"] == row["momentum"]
        assert group["lr"] == pytest.approx(default_lr("global", d, row["num_pairs"]))
        assert isinstance(trainer.scheduler, LossBackoff)
    else:
        assert isinstance(trainer.optimizer, torch.optim.Adam) and group["lr"] == row["lr"]
        assert trainer.scheduler is None
    steps = 2  # 64 samples in batches of 32
    extra = 1  # the forward pass (local) or the loss at θ (global)
    assert read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]["queries"] == steps * (2 * row["num_pairs"] + extra)
