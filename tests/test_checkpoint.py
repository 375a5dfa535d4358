import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from physgrad.errors import CheckpointError
from physgrad.training import load_checkpoint, save_checkpoint


@settings(max_examples=25, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8), st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=5)), max_size=5),
       st.lists(st.floats(-1e3, 1e3, allow_nan=False), max_size=10))
def test_round_trip(tmp_path_factory, meta, values):
    path = tmp_path_factory.mktemp("ck") / "c.pt"
    state = {"meta": meta, "tensor": torch.tensor(values, dtype=torch.float64), "gen": torch.Generator().manual_seed(3).get_state()}
    save_checkpoint(path, state)
    back = load_checkpoint(path)
    assert back["meta"] == meta and torch.equal(back["tensor"], state["tensor"]) and torch.equal(back["gen"], state["gen"])


def test_corrupt_missing_and_foreign_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "none.pt")
    save_checkpoint(tmp_path / "c.pt", {"x": torch.ones(100)})
    raw = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "c.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "c.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a physgrad checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_no_temporary_files_left_behind(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"x": 1})
    save_checkpoint(tmp_path / "c.pt", {"x": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"] and load_checkpoint(tmp_path / "c.pt")["x"] == 2
