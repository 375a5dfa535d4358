"""The validation task suite: offline, disjoint tuning and held-out sets, varied sizes and kinds."""

from __future__ import annotations

import pytest
import torch

from physgrad.data import suite
from physgrad.errors import ConfigError


def test_sets_are_disjoint_varied_and_not_the_benchmarks_tasks():
    assert len(suite.TUNING) >= 6 and len(suite.HELD_OUT) >= 6
    assert not set(suite.TUNING) & set(suite.HELD_OUT)
    assert not {"digits", "fashion-mnist", "mnist"} & set(suite.TUNING + suite.HELD_OUT)
    for names in (suite.TUNING, suite.HELD_OUT):
        assert {suite.KINDS[n] for n in names} == {"tabular", "image", "sequence"}


@pytest.mark.parametrize("name", suite.TUNING + suite.HELD_OUT)
def test_each_task_is_a_clean_split(name):
    d = suite.task(name)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert d.x_train.shape[1] == d.x_test.shape[1] == d.image_shape[0] * d.image_shape[1]
    assert set(d.y_train.tolist()) == set(range(d.num_classes)) == set(d.y_test.tolist())
    assert torch.isfinite(d.x_train).all() and torch.isfinite(d.x_test).all()
    assert d.x_train.mean(0).abs().max() < 1e-4  # standardised on the training part
    again = suite.task(name)
    assert torch.equal(d.x_train, again.x_train) and torch.equal(d.y_test, again.y_test)  # deterministic


def test_sizes_and_class_counts_differ():
    ds = suite.tasks("all")
    assert len({d.num_features for d in ds}) >= 6
    assert len({d.num_classes for d in ds}) >= 3


def test_unknown_names_are_refused():
    with pytest.raises(ConfigError):
        suite.task("digits")
    with pytest.raises(ConfigError):
        suite.tasks("everything")
