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


# ---------------------------------------------------------------- the global scope's back-off
import torch  # noqa: E402

from physgrad.methods.defaults import BACKOFF, LossBackoff, default_schedule  # noqa: E402


def _opt(lr=0.8):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=lr, momentum=0.9)


def _feed(sched, losses):
    for v in losses:
        sched.step(v)


def test_backoff_rise_rule_halves_on_a_significant_rise_only_and_then_measures_from_there():
    opt = _opt()
    sched = LossBackoff(opt, window=4, z=2.0, patience=0)
    _feed(sched, [1.0] * 4)                     # mean 1.0: the best
    _feed(sched, [1.0, 1.2, 1.0, 1.2])          # mean 1.1, standard error 0.0577: 0.1 < 2 × 0.0577, not a rise
    assert opt.param_groups[0]["lr"] == 0.8 and sched.num_bad_epochs == 0
    _feed(sched, [1.2, 1.4, 1.2, 1.4])          # mean 1.3: 0.3 > 2 × 0.0577, a rise -> halve
    assert opt.param_groups[0]["lr"] == pytest.approx(0.4) and sched.backoffs == 1 and sched.best == pytest.approx(1.3)
    _feed(sched, [1.25, 1.35] * 6)              # staying at the new level is not a rise: no second halving
    assert opt.param_groups[0]["lr"] == pytest.approx(0.4) and sched.backoffs == 1
    _feed(sched, [0.5] * 4)                      # a fall is never bad
    assert opt.param_groups[0]["lr"] == pytest.approx(0.4) and sched.best == 0.5
    patient = LossBackoff(_opt(), window=2, z=2.0, patience=1)
    _feed(patient, [1.0, 1.0, 3.0, 3.0])         # one bad window: patience 1 waits for a second
    assert patient.backoffs == 0
    _feed(patient, [3.0, 3.0])
    assert patient.backoffs == 1


def test_backoff_plateau_rule_is_pytorchs_reduce_on_plateau():
    """With z=None the windows go to ReduceLROnPlateau unchanged: a plateau counts as bad too."""
    opt = _opt()
    sched = LossBackoff(opt, window=4, z=None, patience=1)
    _feed(sched, [2.0, 2.0, 2.0, 2.0])          # window 1: mean 2.0, the best
    _feed(sched, [1.0, 3.0, 1.0, 3.0])          # window 2: mean 2.0, no improvement (1 bad)
    assert opt.param_groups[0]["lr"] == 0.8 and sched.backoffs == 0
    _feed(sched, [1.5, 1.5, 1.5])               # a window in progress is not judged
    assert opt.param_groups[0]["lr"] == 0.8
    _feed(sched, [1.5])                          # window 3: mean 1.5 improves: the count restarts
    _feed(sched, [1.6] * 4 + [9.0] * 3)          # window 4 bad; window 5 still filling
    assert opt.param_groups[0]["lr"] == 0.8
    _feed(sched, [9.0])                          # window 5 bad: second bad window -> halve
    assert opt.param_groups[0]["lr"] == pytest.approx(0.4) and sched.backoffs == 1
    assert sched.get_last_lr() == [pytest.approx(0.4)]


def test_backoff_ignores_non_finite_losses_and_stops_at_its_floor():
    opt = _opt(lr=1.0)
    sched = LossBackoff(opt, window=2, z=None, patience=0, min_lr_fraction=0.25)
    _feed(sched, [1.0, float("nan"), 1.0])       # the NaN is not a loss of the window: one window, mean 1.0
    assert sched.last_epoch == 1 and sched.best == 1.0
    _feed(sched, [5.0] * 20)                     # ten bad windows
    assert opt.param_groups[0]["lr"] == pytest.approx(0.25) and sched.backoffs == 2  # 1 -> 0.5 -> 0.25, floor


def test_backoff_state_round_trips_through_a_checkpoint_dict():
    opt, opt2 = _opt(), _opt()
    a, b = LossBackoff(opt, window=3, patience=0), LossBackoff(opt2, window=3, patience=0)
    _feed(a, [1.0, 1.0, 1.0, 2.0])                # one window judged, one loss of the next pending
    b.load_state_dict(a.state_dict())
    opt2.load_state_dict(opt.state_dict())
    for s in (a, b):
        _feed(s, [2.0, 2.0])
    assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"] == pytest.approx(0.4)


def test_default_schedule_is_the_backoff_for_the_global_scope_only():
    assert DEFAULTS["global"]["schedule"] == "backoff" and DEFAULTS["local"]["schedule"] == "constant"
    sched = default_schedule(_opt(), "global")
    assert isinstance(sched, LossBackoff) and sched.window == BACKOFF["window"] and sched.patience == BACKOFF["patience"]
    assert sched.factor == BACKOFF["factor"] and sched.z == BACKOFF["z"]
    assert default_schedule(_opt(), "local") is None and default_schedule(_opt(), "backprop") is None
    with pytest.raises(ValueError, match="schedule must be one of"):
        default_schedule(_opt(), "global", "cosine")
    with pytest.raises(ValueError, match="window must be an integer >= 1"):
        LossBackoff(_opt(), window=0)
    with pytest.raises(ValueError, match="z must be None or a finite number >= 0"):
        LossBackoff(_opt(), z=-1.0)


def test_trainer_feeds_the_backoff_every_steps_loss():
    from physgrad.data.datasets import Dataset
    from physgrad.methods import Backprop
    from physgrad.training import Trainer

    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = LossBackoff(opt, window=3)
    Trainer(model, Backprop(), opt, batch_size=8, scheduler=sched, progress=False).fit(
        Dataset("toy", x, y, x, y, 2, (2, 2)), 2)
    # 16 steps: five windows judged, one loss pending
    assert sched.last_epoch == 5 and len(sched._window_losses) == 1
