import math

from physgrad.training import MetricsLog, read_metrics


def test_records_are_appended_and_truncated_back(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    log.write({"step": 1, "loss": 0.5})
    offset = log.offset
    log.write({"step": 2, "loss": math.nan})
    assert read_metrics(tmp_path / "m.jsonl")[1]["loss"] is None  # NaN written as null: valid JSON
    log.truncate(offset)
    assert read_metrics(tmp_path / "m.jsonl") == [{"step": 1, "loss": 0.5}] == log.records


def test_a_torn_last_line_is_ignored(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\n{"a": 2')
    assert read_metrics(path) == [{"a": 1}]
