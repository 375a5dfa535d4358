import json

from physgrad.cli import main
from physgrad.training import read_metrics


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
    assert "unknown value 'magic'" in capsys.readouterr().err
    assert main(["train", "--dataset", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "dataset" in capsys.readouterr().err


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
