"""Reading DNPU surrogate files that may be hostile: the shared ``.npz`` format and brains-py checkpoints.

Used by :meth:`physgrad.systems.devices.dnpu.DNPU.from_npz` / ``from_checkpoint``. Only the entries
a surrogate needs are read, each size checked before reading; no pickle beyond numpy's array
reconstruction is ever loaded; every failure is a :class:`~physgrad.errors.ConfigError` naming the
file (issue 12). :data:`AMPLIFICATION_PATHS` and :data:`RANGE_PATHS` list where the brains-py
(2019–2022) and brainspy-smg histories keep the amplification and voltage ranges (issue 11 §6).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ...errors import ConfigError


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as first:
        # brains-py info dicts often hold numpy arrays: allow exactly numpy's array reconstruction
        allowed = _numpy_globals()
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - report the original refusal too
            raise ConfigError(
                f"DNPU checkpoint {path} cannot be read as weights only (it holds objects other than tensors, "
                f"numbers, strings, containers and numpy arrays): {first}"
            ) from exc
    except Exception as exc:  # noqa: BLE001 - any failure of a hostile file is a named error
        raise ConfigError(f"DNPU checkpoint {path} is corrupt or not a torch file: {type(exc).__name__}: {exc}") from exc


def _numpy_globals() -> list:
    core = getattr(np, "_core", None) or np.core
    allowed = [core.multiarray._reconstruct, np.ndarray, np.dtype]
    allowed += [type(np.dtype(t)) for t in ("float32", "float64", "int64", "int32", "bool")]
    scalar = getattr(core.multiarray, "scalar", None)
    if scalar is not None:
        allowed.append(scalar)
    return allowed


_LAYER = re.compile(r"^(.*?)(\d+)\.(weight|bias)$")
MAX_LAYERS = 64
MAX_ARRAY_BYTES = 64 * 2**20  # one weight matrix (a real surrogate: < 1 MiB)
MAX_TOTAL_BYTES = 256 * 2**20
MAX_META_BYTES = 2**20
MAX_CHECKPOINT_BYTES = 256 * 2**20

# Where brains-py (2019-2022) and brainspy-smg keep the amplification and the voltage ranges in a
# checkpoint's ``info`` dict, newest layout first (read from their public histories; none of their code is used).
AMPLIFICATION_PATHS = (
    ("electrode_info", "output_electrodes", "amplification"),  # brains-py >= 2021 (SurrogateModel)
    ("data_info", "processor", "driver", "amplification"),  # brains-py 2020 (processor with a driver)
    ("data_info", "processor", "amplification"),  # brains-py 2019-20 (processor without a driver)
    ("sampling_configs", "driver", "amplification"),  # brainspy-smg (sampling configs copied into info)
    ("data_info", "sampling_configs", "driver", "amplification"),  # brainspy-smg, via the dataset's info dict
    ("amplification",),  # the oldest SkyNEt-era models (info['amplification'])
)
RANGE_PATHS = (
    ("electrode_info", "activation_electrodes", "voltage_ranges"),  # [[low, high]] * 7
    ("sampling_configs", "driver", "instruments_setup", "activation_voltage_ranges"),
    ("data_info", "processor", "driver", "instruments_setup", "activation_voltage_ranges"),
)
OFFSET_AMPLITUDE_PATHS = (  # ranges as offset ± amplitude
    ("data_info", "input_data"),
    ("sampling_configs", "input_data"),
    ("data_info", "sampling_configs", "input_data"),
    (),  # the oldest: info['offset'], info['amplitude']
)
ACTIVATION_PATHS = (
    ("model_structure", "activation"),
    ("smg_configs", "processor", "torch_model_dict", "activation"),
    ("smg_configs", "model_structure", "activation"),
    ("data_info", "processor", "torch_model_dict", "activation"),
)


def _read_npy(zf: zipfile.ZipFile, member: str, path: Path, cap: int, *, text: bool = False,
              budget: list[int] | None = None) -> np.ndarray:
    """One ``.npy`` entry, its header checked (dtype, shape, size) before any data is read."""
    info = zf.getinfo(member)
    name = Path(member).stem
    if info.file_size > cap:
        raise ConfigError(f"DNPU surrogate {path}: entry {name!r} would decompress to {info.file_size} bytes (cap {cap})")
    with zf.open(member) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ConfigError(f"DNPU surrogate {path}: entry {name!r} has an unknown .npy version {version}")
        if dtype.hasobject:
            raise ConfigError(f"DNPU surrogate {path}: entry {name!r} holds Python objects (pickles are never loaded)")
        if text:
            if dtype.kind not in "US":
                raise ConfigError(f"DNPU surrogate {path}: entry {name!r} must be a JSON string, got dtype {dtype}")
        elif dtype.kind == "c":
            raise ConfigError(f"DNPU surrogate {path}: entry {name!r} has complex weights ({dtype}); a surrogate is real")
        elif dtype.kind not in "fiu" or dtype.itemsize > 8:
            raise ConfigError(f"DNPU surrogate {path}: entry {name!r} has dtype {dtype}, expected real numbers")
        count = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
        nbytes = count * dtype.itemsize
        if count < 0 or nbytes > cap or nbytes > info.file_size:
            raise ConfigError(f"DNPU surrogate {path}: entry {name!r} declares shape {shape} ({nbytes} bytes), "
                              f"inconsistent with its {info.file_size}-byte entry or over the cap {cap}")
        if budget is not None:
            budget[0] -= nbytes
            if budget[0] < 0:
                raise ConfigError(f"DNPU surrogate {path}: the layers exceed {MAX_TOTAL_BYTES} bytes in total")
        data = fh.read(nbytes)
        if len(data) != nbytes:
            raise ConfigError(f"DNPU surrogate {path}: entry {name!r} is truncated")
    arr = np.frombuffer(data, dtype=dtype)
    return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)


def _build(path: Path, weights, biases, voltage_min, voltage_max, amplification, **kwargs) -> "DNPU":
    """The constructor, its refusals restated with the file's name."""
    from .dnpu import DNPU  # the device module imports this one

    try:
        weights = [_real_tensor(w, f"weight{i}", path) for i, w in enumerate(weights)]
        biases = [_real_tensor(b, f"bias{i}", path) for i, b in enumerate(biases)]
        return DNPU(weights, biases, voltage_min, voltage_max, amplification, **kwargs)
    except ConfigError as exc:
        if str(path) in str(exc):
            raise
        raise ConfigError(f"DNPU surrogate {path}: {exc}") from exc
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"DNPU surrogate {path} is malformed: {type(exc).__name__}: {exc}") from exc


def _real_tensor(value, what: str, path: Path) -> torch.Tensor:
    t = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.array(value, copy=True))
    if t.is_complex():
        raise ConfigError(f"DNPU surrogate {path}: {what} has complex values ({t.dtype}); a surrogate is real")
    if not (t.is_floating_point() or t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise ConfigError(f"DNPU surrogate {path}: {what} has dtype {t.dtype}, expected real numbers")
    return t.to(torch.float32)


def _numbers(value, what: str, path: Path) -> list[float]:
    arr = np.asarray(value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value)
    if arr.dtype.kind == "c":
        raise ConfigError(f"DNPU surrogate {path}: {what} has complex values")
    if arr.dtype.kind not in "fiub" or arr.size > 1024:
        raise ConfigError(f"DNPU surrogate {path}: {what} must be a short list of numbers, got {str(value)[:80]!r}")
    return arr.astype(np.float64).reshape(-1).tolist()


def _scalar(value, what: str, path: Path) -> float:
    numbers = _numbers(value, what, path)
    if len(numbers) != 1:
        raise ConfigError(f"DNPU surrogate {path}: {what} must be one number, got {len(numbers)}")
    return numbers[0]


def _linear_chain(tensors: Mapping, path: Path) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    groups: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    for key, value in tensors.items():
        m = _LAYER.match(str(key))
        if m and isinstance(value, torch.Tensor):
            if value.is_complex():
                raise ConfigError(f"DNPU checkpoint {path}: {key} has complex values ({value.dtype}); a surrogate is real")
            groups.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[m.group(3)] = value
    chains = {p: layers for p, layers in groups.items() if all("weight" in v and "bias" in v for v in layers.values())}
    chains = {p: layers for p, layers in chains.items() if all(v["weight"].dim() == 2 for v in layers.values())}
    if not chains:
        raise ConfigError(f"DNPU checkpoint {path} has no linear layers named '<prefix><i>.weight' / '<prefix><i>.bias'")
    prefix = max(chains, key=lambda p: len(chains[p]))
    layers = chains[prefix]
    if len(layers) > MAX_LAYERS:
        raise ConfigError(f"DNPU checkpoint {path} has {len(layers)} layers (cap {MAX_LAYERS})")
    order = sorted(layers)
    return [layers[i]["weight"].float() for i in order], [layers[i]["bias"].float() for i in order]


def _find(info: Mapping, keys: tuple[str, ...]):
    node = info
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _first(info: Mapping, paths) -> object:
    for keys in paths:
        value = _find(info, keys)
        if value is not None:
            return value
    return None


def _info_ranges(info: Mapping, path: Path | str = "checkpoint") -> tuple[list[float], list[float]] | None:
    """Voltage ranges from any brains-py / brainspy-smg layout (``[[low, high]] * 7`` or offset ± amplitude)."""
    ranges = _first(info, RANGE_PATHS)
    if ranges is not None:
        arr = np.asarray(_numbers(ranges, "voltage_ranges", Path(str(path))), dtype=np.float64)
        if arr.size % 2:
            raise ConfigError(f"DNPU checkpoint {path}: voltage_ranges must be [low, high] pairs")
        arr = arr.reshape(-1, 2)
        return arr[:, 0].tolist(), arr[:, 1].tolist()
    for keys in OFFSET_AMPLITUDE_PATHS:
        node = _find(info, keys) if keys else info
        if isinstance(node, Mapping) and node.get("offset") is not None and node.get("amplitude") is not None:
            o = np.asarray(_numbers(node["offset"], "offset", Path(str(path))))
            a = np.asarray(_numbers(node["amplitude"], "amplitude", Path(str(path))))
            if o.shape != a.shape:
                raise ConfigError(f"DNPU checkpoint {path}: offset and amplitude have different lengths")
            return (o - np.abs(a)).tolist(), (o + np.abs(a)).tolist()
    return None


def _info_amplification(info: Mapping, path: Path | str = "checkpoint") -> float | None:
    """The amplification from any brains-py / brainspy-smg layout (a number or a one-element list/array)."""
    value = _first(info, AMPLIFICATION_PATHS)
    if value is None:
        return None
    return _scalar(value, "amplification", Path(str(path)))
