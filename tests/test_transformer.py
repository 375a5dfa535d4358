"""The transformer with a reservoir feed-forward layer."""

import pytest
import torch
import torch.nn.functional as F

from physgrad.data.sequences import marked_tokens, row_sequences
from physgrad.errors import ConfigError, ShapeError
from physgrad.methods import PGT, Backprop
from physgrad.models import ReservoirTransformer
from physgrad.models.physical_layer import physical_layers
from physgrad.systems import AutoOscillationRing, RandomReservoir
from physgrad.training import Trainer


def small_model(seed=0, nodes=16):
    ring = AutoOscillationRing(8, nodes, mode="static", seed=seed)
    return ReservoirTransformer(8, 8, 10, ring, d_model=16, heads=2, blocks=2, seed=seed)


def test_shapes_flat_and_token_inputs_agree():
    model = small_model()
    x = torch.rand(5, 8, 8)
    assert model(x).shape == (5, 10)
    assert torch.equal(model(x), model(x.reshape(5, 64)))
    assert len(list(physical_layers(model))) == 1


def test_each_token_is_one_device_sample():
    model = small_model()
    ring = model.blocks[-1].ffn.reservoir.system
    model(torch.rand(3, 8, 8))
    assert ring.queries == 1 and ring.samples == 24


def test_bad_input_and_config():
    model = small_model()
    with pytest.raises(ShapeError, match="expects"):
        model(torch.rand(5, 7, 8))
    seq_ring = AutoOscillationRing(8, 16, mode="sequence", seq_len=8)
    with pytest.raises(ShapeError, match="flat-vector device"):
        ReservoirTransformer(8, 8, 10, seq_ring)
    with pytest.raises(ConfigError, match="divisible"):
        ReservoirTransformer(8, 8, 10, RandomReservoir(8, 16), d_model=10, heads=4)
    with pytest.raises(ConfigError, match="block index"):
        ReservoirTransformer(8, 8, 10, RandomReservoir(8, 16), blocks=2, reservoir_block=2)


def test_local_pgt_gradient_agrees_with_backprop():
    """Autograd is exact around the device; the device's VJP is estimated: the average agrees with backprop."""
    model = small_model(nodes=12)
    x, y = torch.rand(8, 8, 8), torch.randint(0, 10, (8,))
    Backprop().backward(model, F.cross_entropy, x, y)
    exact = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    PGT(512, 1e-3, scope="local", seed=0).backward(model, F.cross_entropy, x, y)
    # parameters upstream of the device: their gradient flows through the estimated VJP
    for name in ("embed.weight", "blocks.1.ffn.inp.weight"):
        cos = F.cosine_similarity(exact[name].reshape(-1), model.get_parameter(name).grad.reshape(-1), dim=0)
        assert cos > 0.9, name
    # parameters downstream are exact
    assert torch.allclose(exact["head.weight"], model.head.weight.grad, atol=1e-5)


def test_global_pgt_costs_2k_plus_1_queries_per_step():
    model = small_model()
    method = PGT(6, 1e-3, scope="global")
    method.backward(model, F.cross_entropy, torch.rand(4, 8, 8), torch.randint(0, 10, (4,)))
    assert method.last_cost.queries == 13
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_trains_on_sequential_digits_with_local_pgt():
    data = row_sequences("digits").subset(train=320, test=200, seed=0)
    model = small_model()
    trainer = Trainer(model, PGT(16, 1e-2, scope="local"), torch.optim.Adam(model.parameters(), lr=1e-2),
                      batch_size=32, seed=0, progress=False)
    loss0, _ = trainer.evaluate(data.x_test, data.y_test)
    records = trainer.fit(data, 8)
    assert records[-1]["test_loss"] < loss0
    assert records[-1]["test_accuracy"] > 0.6  # chance 0.1


def test_backprop_learns_the_long_range_marked_token_task():
    data = marked_tokens(512, 256, length=8, marked=3, task="majority", seed=0)
    ring = AutoOscillationRing(8, 16, mode="static")
    model = ReservoirTransformer(2, 8, 2, ring, d_model=16, heads=2, blocks=1, seed=0)
    trainer = Trainer(model, Backprop(), torch.optim.Adam(model.parameters(), lr=1e-2), batch_size=32, seed=0,
                      progress=False)
    records = trainer.fit(data, 4)
    assert records[-1]["test_accuracy"] > 0.75  # chance 0.5
