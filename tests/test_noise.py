import pytest
import torch

from physgrad.systems import MeasurementNoise


def test_noise_statistics_and_quantization():
    g = torch.Generator().manual_seed(0)
    y = torch.full((20000,), 2.0)
    add = MeasurementNoise(additive=0.1).apply(y, g)
    assert float(add.std()) == pytest.approx(0.1, rel=0.05) and float(add.mean()) == pytest.approx(2.0, abs=0.005)
    mul = MeasurementNoise(multiplicative=0.1).apply(y, g)
    assert float(mul.std()) == pytest.approx(0.2, rel=0.05)
    q = MeasurementNoise(quantization=0.25).apply(torch.tensor([0.1, 0.2, 0.9]), g)
    assert torch.equal(q, torch.tensor([0.0, 0.25, 1.0]))
    assert not MeasurementNoise().enabled


def test_noise_rejects_negative_or_nan_levels():
    with pytest.raises(ValueError, match="additive"):
        MeasurementNoise(additive=-1.0)
    with pytest.raises(ValueError, match="quantization"):
        MeasurementNoise(quantization=float("nan"))
