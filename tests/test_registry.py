"""The one device registry (systems/registry.py) and the method registry's API."""

import pytest
import torch

from physgrad.errors import ConfigError
from physgrad.methods.defaults import DEFAULTS
from physgrad.methods.registry import make_method, method_entry, method_names
from physgrad.systems import PhysicalSystem
from physgrad.systems.registry import device_names, make_device


def test_every_builtin_device_is_built_by_name():
    for name in device_names():
        device = make_device(name)
        assert isinstance(device, PhysicalSystem), name
    assert {"reservoir", "ring", "esn", "dnpu", "dnpu-time", "hopfield", "resistive", "blackbox"} <= set(device_names())


def test_builtin_arguments_reach_the_device_and_unknown_ones_are_named():
    assert make_device("reservoir", input_size=5, size=7).output_shape == (7,)
    assert make_device("hopfield", sizes=[4, 3, 2]).output_shape == (2,)
    assert make_device("reservoir", noise=0.1).noise.additive == 0.1
    with pytest.raises(ConfigError, match=r"takes no argument\(s\) \['colour'\]"):
        make_device("reservoir", colour="red")


def test_user_devices_by_module_class_or_factory():
    rig = make_device("tests._user_device:Rig", outputs=2)
    assert type(rig).__name__ == "Rig" and rig.output_shape == (2,)
    assert make_device("tests._user_device:make_rig", size=5).output_shape == (5,)


@pytest.mark.parametrize("spec, match", [
    ("teapot", r"unknown device 'teapot'; choose one of \['reservoir'"),
    ("no_such_module_xyz:Rig", "cannot import module 'no_such_module_xyz'"),
    ("tests._user_device:Nope", "has no attribute 'Nope'"),
    ("torch:nn", "not a class or a function"),
    ("tests._user_device:_NoGuard", "not a physgrad PhysicalSystem"),
])
def test_bad_device_specs_say_what_is_wrong(spec, match):
    with pytest.raises(ConfigError, match=match):
        make_device(spec)


def test_server_builds_devices_through_the_registry():
    from physgrad.systems.remote.server import build_device

    assert build_device("mlp").input_shape == (7,)  # the server's old name still works
    assert type(build_device("tests._user_device:Rig")).__name__ == "Rig"


def test_method_registry_api():
    assert method_names() == ["pgt", "spsa", "es", "fd", "backprop", "hge", "eqprop", "aeqprop", "pat", "twin_cv",
                              "twin_guided", "cma", "nevergrad"]
    kinds = {n: method_entry(n).kind for n in method_names()}
    assert kinds["hge"] == "waveform" and kinds["eqprop"] == kinds["aeqprop"] == "energy" and kinds["backprop"] == "oracle"
    entry = method_entry("pgt")
    assert entry.options["num_pairs"] is None and "scope" in entry.options  # None: the scope's shipped default
    for name in ("pgt", "spsa", "es"):
        for scope in ("global", "local"):
            built = make_method(name, scope=scope)
            assert (built.num_pairs, built.delta) == (DEFAULTS[scope]["num_pairs"], DEFAULTS[scope]["delta"])
    assert entry.default_device in device_names() and method_entry("hge").default_device == "dnpu-time"
    assert make_method("spsa", num_pairs=3).num_pairs == 3
    with pytest.raises(ConfigError, match=r"no option\(s\) \['pairs'\]"):
        make_method("pgt", pairs=3)
    with pytest.raises(ConfigError, match="unknown method 'magic'; choose one of"):
        make_method("magic")
    for name in method_names():
        make_method(name)
