"""The conformance checker (physgrad.testing): passes on every built-in device and a user's, names each failure."""

import pytest

from physgrad.systems.registry import device_names, make_device
from physgrad.testing import assert_conforms, check_device
from tests._user_device import Float64Rig, MixedUpRig, Rig, Unguarded


@pytest.mark.parametrize("name", device_names())
def test_every_builtin_device_conforms(name):
    assert check_device(make_device(name)) == []


def test_a_device_defined_in_a_test_file_conforms_with_and_without_noise():
    assert_conforms(Rig())
    assert_conforms(Rig(noise=0.01))


@pytest.mark.parametrize("device, expected", [
    (Float64Rig(), "dtypes: float32 probes got float64 answers"),
    (MixedUpRig(), "batching: probe 1 of 3 in one call differs"),
    (Unguarded(), "ranges: setting 'gain' beyond its safe range was applied"),
    (Unguarded(), "a NaN setting of 'gain' must be refused with RangeError"),
])
def test_broken_devices_fail_with_the_failure_named(device, expected):
    failures = check_device(device)
    assert any(expected in f for f in failures), failures
    with pytest.raises(AssertionError, match="does not conform"):
        assert_conforms(device)


def test_not_a_device_at_all():
    assert "not a physgrad.systems.PhysicalSystem" in check_device(object())[0]
