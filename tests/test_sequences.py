"""Sequence datasets and reservoir benchmark tasks."""

from pathlib import Path

import pytest
import torch

from physgrad.data import load_dataset
from physgrad.data.sequences import (
    as_rows,
    marked_tokens,
    memory_capacity,
    memory_inputs,
    narma10,
    nrmse,
    ridge_fit,
    ridge_predict,
    row_sequences,
)
from physgrad.errors import ConfigError, ShapeError

ROW_SETS = ["digits"] + (["fashion-mnist"] if Path("/usr/share/datasets/fashion-mnist").exists() else [])


@pytest.mark.parametrize("name", ROW_SETS)
def test_row_sequences_are_the_images_read_by_rows(name):
    flat = load_dataset(name, download=False)
    rows = row_sequences(name, download=False)
    h, w = flat.image_shape
    assert rows.x_train.shape == (len(flat.y_train), h, w)
    assert rows.image_shape == (h, w)
    assert torch.equal(rows.x_test[3, 2], flat.x_test[3, 2 * w : 3 * w])
    assert torch.equal(rows.y_train, flat.y_train)


def test_as_rows_rejects_non_flat_images():
    rows = row_sequences("digits")
    with pytest.raises(ShapeError, match="flat images"):
        as_rows(rows)


@pytest.mark.parametrize("task", ["parity", "majority"])
def test_marked_tokens_labels_follow_the_rule(task):
    data = marked_tokens(300, 100, length=12, marked=3, task=task, seed=1)
    assert data.x_train.shape == (300, 12, 2)
    values, markers = data.x_train[..., 0], data.x_train[..., 1]
    assert torch.all(markers.sum(1) == 3)
    ones = ((values > 0) & (markers > 0)).sum(1)
    expected = ones % 2 if task == "parity" else (ones >= 2).long()
    assert torch.equal(data.y_train, expected)
    assert 0.35 < data.y_train.float().mean() < 0.65
    # reproducible from its seed
    assert torch.equal(marked_tokens(300, 100, length=12, marked=3, task=task, seed=1).y_train, data.y_train)


def test_marked_tokens_bad_config():
    with pytest.raises(ConfigError, match="odd"):
        marked_tokens(10, 10, marked=2, task="majority")
    with pytest.raises(ConfigError, match="task"):
        marked_tokens(10, 10, task="sum")
    with pytest.raises(ConfigError, match="marked"):
        marked_tokens(10, 10, length=4, marked=5)


def test_narma10_follows_its_recursion_and_is_reproducible():
    u, y = narma10(500, seed=3)
    u2, y2 = narma10(500, seed=3)
    assert torch.equal(u, u2) and torch.equal(y, y2)
    assert 0 <= u.min() and u.max() <= 0.5
    t = 100
    expected = 0.3 * y[t] + 0.05 * y[t] * y[t - 9 : t + 1].sum() + 1.5 * u[t - 9] * u[t] + 0.1
    assert y[t + 1] == pytest.approx(float(expected))
    with pytest.raises(ConfigError, match="length"):
        narma10(5)


def test_nrmse_of_the_mean_is_one_and_of_the_truth_zero():
    y = torch.randn(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert nrmse(y, y) == 0.0
    assert nrmse(torch.full_like(y, float(y.mean())), y) == pytest.approx(1.0, rel=1e-2)
    with pytest.raises(ShapeError):
        nrmse(y[:10], y)


def test_ridge_recovers_a_linear_map():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g, dtype=torch.float64)
    w = torch.randn(5, 2, generator=g, dtype=torch.float64)
    y = x @ w + 0.7
    assert torch.allclose(ridge_predict(x, ridge_fit(x, y, ridge=1e-10)), y, atol=1e-6)


def test_memory_capacity_of_an_ideal_delay_line_counts_its_taps():
    """States that hold exactly u(t−1..t−10) have MC = 10 (one per tap) and nothing beyond."""
    u = memory_inputs(2000, seed=0)
    states = torch.stack([u.roll(k) for k in range(1, 11)], dim=1)
    mc, r2 = memory_capacity(states, u, max_delay=15, washout=20, train=1500)
    assert mc == pytest.approx(10.0, abs=0.1)
    assert r2[:10].min() > 0.999 and r2[10:].max() < 0.02
    with pytest.raises(ConfigError, match="washout"):
        memory_capacity(states, u, max_delay=15, washout=5, train=1500)
    with pytest.raises(ShapeError, match="u must be"):
        memory_capacity(states, u[:-1], max_delay=15, washout=20, train=1500)
