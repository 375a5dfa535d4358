"""The dopant network processing unit (DNPU): seven electrodes, one output current.

A DNPU is a small region of doped silicon contacted by eight electrodes: one is the output, whose
current (nA) is a nonlinear function of the seven others' voltages. Some electrodes carry data
(inputs), the rest are *control* electrodes whose voltages are the trainable parameters (Chen et
al., Nature 577, 2020; Boon et al., arXiv 2105.11233, Nat. Commun. 2025, who train the controls
by homodyne gradient extraction). Every electrode has its own safe voltage range.

The device is simulated by a *surrogate model*: a small MLP trained on hours of measurements of a
real device, ``I = amplification · net(V)`` with ``V`` the seven voltages in electrode order. Three
sources:

* :meth:`DNPU.from_npz` — the project's shared format (``meta`` JSON with electrode names,
  ``voltage_min``/``voltage_max``, ``amplification``, ``activation``; ``weight0``/``bias0``, … in
  ``nn.Linear`` layout; see ``shared/data/dnpu/README.md``);
* :meth:`DNPU.from_checkpoint` — a brains-py torch checkpoint (a state dict with ``…N.weight`` /
  ``…N.bias`` linear layers and, where present, an ``info`` dict giving voltage ranges and
  amplification), read with ``torch.load(weights_only=True)`` and none of brains-py's code;
* :meth:`DNPU.synthetic` — a built-in, seeded stand-in (smooth tanh network with a saturating,
  asymmetric output stage, scaled like the real surrogates: tens to hundreds of nA, slopes of
  a few to tens of nA/V) so everything runs without the shared files.

Inputs are in volts, one per input electrode, each checked against its own range; the control
parameter ``"controls"`` has one voltage per control electrode with per-element bounds.
:meth:`simulate` is differentiable (the backpropagation oracle); :meth:`measure` is not.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ...errors import ConfigError, DataNotFoundError
from ..base import ParameterSpec, PhysicalSystem
from .dnpu_files import (  # noqa: F401 - the loaders' limits and layouts are part of this module's API
    ACTIVATION_PATHS,
    AMPLIFICATION_PATHS,
    MAX_ARRAY_BYTES,
    MAX_CHECKPOINT_BYTES,
    MAX_META_BYTES,
    MAX_TOTAL_BYTES,
    OFFSET_AMPLITUDE_PATHS,
    RANGE_PATHS,
    _build,
    _find,
    _first,
    _info_amplification,
    _info_ranges,
    _linear_chain,
    _numbers,
    _read_npy,
    _scalar,
    _torch_load,
    MAX_LAYERS,
)

N_ELECTRODES = 7
ACTIVATIONS = ("relu", "tanh")
SHARED_DIR = Path(__file__).resolve().parents[4] / "shared" / "data" / "dnpu"


class DNPU(PhysicalSystem):
    """A DNPU surrogate: ``I (nA) = amplification · net(V)``, ``V`` the 7 electrode voltages.

    Parameters
    ----------
    weights, biases:
        The network's linear layers in order (``nn.Linear`` layout ``out × in``); the activation
        acts between layers, never after the last.
    voltage_min, voltage_max:
        Safe range of each of the 7 electrodes (V), in electrode order.
    amplification:
        Output of the network times this = current in nA.
    input_electrodes:
        Indices of the electrodes that carry data; the others are controls.
    activation:
        ``"relu"`` or ``"tanh"``.
    saturation:
        If given, the output passes ``s·tanh(I/s)`` (nA): the amplifier-like soft saturation of
        the synthetic device.
    electrodes:
        Names of the 7 electrodes (for messages and docs).
    kwargs:
        Passed to :class:`PhysicalSystem` (guard, noise, seconds_per_query, seed).
    """

    differentiable = True

    def __init__(
        self,
        weights: Sequence[torch.Tensor],
        biases: Sequence[torch.Tensor],
        voltage_min: Sequence[float],
        voltage_max: Sequence[float],
        amplification: float = 1.0,
        *,
        input_electrodes: Sequence[int] = (3, 4),
        activation: str = "relu",
        saturation: float | None = None,
        electrodes: Sequence[str] | None = None,
        name: str = "dnpu",
        **kwargs,
    ) -> None:
        weights = [torch.as_tensor(w, dtype=torch.float32) for w in weights]
        biases = [torch.as_tensor(b, dtype=torch.float32) for b in biases]
        _check_layers(weights, biases, name)
        if activation not in ACTIVATIONS:
            raise ConfigError(f"{name}: activation must be one of {ACTIVATIONS}, got {activation!r}")
        vmin = torch.as_tensor(voltage_min, dtype=torch.float32).reshape(-1)
        vmax = torch.as_tensor(voltage_max, dtype=torch.float32).reshape(-1)
        if vmin.numel() != N_ELECTRODES or vmax.numel() != N_ELECTRODES:
            raise ConfigError(f"{name}: need {N_ELECTRODES} voltage_min and voltage_max values, got {vmin.numel()}, {vmax.numel()}")
        if not (torch.isfinite(vmin).all() and torch.isfinite(vmax).all() and (vmin < vmax).all()):
            raise ConfigError(f"{name}: voltage ranges must be finite with voltage_min < voltage_max, got {vmin.tolist()}, {vmax.tolist()}")
        amplification = float(amplification)
        if not (np.isfinite(amplification) and amplification != 0):
            raise ConfigError(f"{name}: amplification must be a finite non-zero number, got {amplification!r}")
        inputs = [int(i) for i in input_electrodes]
        if len(set(inputs)) != len(inputs) or not inputs or any(not 0 <= i < N_ELECTRODES for i in inputs):
            raise ConfigError(f"{name}: input_electrodes must be distinct indices in 0..6, got {list(input_electrodes)}")
        if len(inputs) >= N_ELECTRODES:
            raise ConfigError(f"{name}: at least one electrode must be a control, got inputs {inputs}")
        controls = [i for i in range(N_ELECTRODES) if i not in inputs]
        self.weights, self.biases = weights, biases
        self.activation = activation
        self.saturation = None if saturation is None else float(saturation)
        self.amplification = amplification
        self.voltage_min, self.voltage_max = vmin, vmax
        self.input_electrodes, self.control_electrodes = inputs, controls
        self.electrodes = list(electrodes) if electrodes is not None else [f"e{i}" for i in range(N_ELECTRODES)]
        self.name = name
        # columns of [inputs, controls] -> electrode order
        self._order = torch.argsort(torch.tensor(inputs + controls))
        centre = (vmin[controls] + vmax[controls]) / 2
        spec = ParameterSpec("controls", (len(controls),), vmin[controls], vmax[controls], default=centre, unit="V")
        super().__init__((len(inputs),), (1,), [spec], **kwargs)

    # ----------------------------------------------------------------------------- loaders
    @classmethod
    def load(cls, path: str | os.PathLike, **kwargs) -> "DNPU":
        """A surrogate from ``.npz`` (shared format) or ``.pt``/``.pth`` (brains-py checkpoint)."""
        suffix = Path(path).suffix.lower()
        if suffix == ".npz":
            return cls.from_npz(path, **kwargs)
        if suffix in (".pt", ".pth", ".ckpt"):
            return cls.from_checkpoint(path, **kwargs)
        raise ConfigError(f"unknown DNPU surrogate format {suffix!r} of {path}; expected .npz or .pt")

    @classmethod
    def from_npz(cls, path: str | os.PathLike, **kwargs) -> "DNPU":
        """Read the shared ``.npz`` surrogate format.

        Hostile files are expected (issue 12): only ``meta``, ``weight<i>`` and ``bias<i>`` are read
        (no other entry is decompressed), each entry's declared size is checked against a cap
        before anything is read (:data:`MAX_ARRAY_BYTES`, :data:`MAX_META_BYTES`), no pickle is
        loaded, weights must be real numbers (complex ones are refused, never truncated), and
        every failure is a :class:`ConfigError` naming the file and the problem.
        """
        path = _existing(path)
        try:
            with zipfile.ZipFile(path) as zf:
                members = {Path(n).stem: n for n in zf.namelist() if n.endswith(".npy")}
                if "meta" not in members:
                    raise ConfigError(f"DNPU surrogate {path} has no 'meta' entry (keys: {sorted(members)[:20]})")
                meta_array = _read_npy(zf, members["meta"], path, MAX_META_BYTES, text=True)
                n = 0
                while f"weight{n}" in members and n < MAX_LAYERS:
                    n += 1
                if n == 0 or any(f"bias{i}" not in members for i in range(n)):
                    raise ConfigError(
                        f"DNPU surrogate {path}: expected weight0/bias0, weight1/bias1, ... (keys: {sorted(members)[:20]})"
                    )
                budget = [MAX_TOTAL_BYTES]
                weights = [_read_npy(zf, members[f"weight{i}"], path, MAX_ARRAY_BYTES, budget=budget) for i in range(n)]
                biases = [_read_npy(zf, members[f"bias{i}"], path, MAX_ARRAY_BYTES, budget=budget) for i in range(n)]
        except ConfigError:
            raise
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, KeyError, RuntimeError) as exc:
            raise ConfigError(f"DNPU surrogate {path} is corrupt or not an .npz archive: {exc}") from exc
        try:
            meta = json.loads(str(meta_array.reshape(-1)[0]) if meta_array.size else "")
        except (json.JSONDecodeError, RecursionError) as exc:
            raise ConfigError(f"DNPU surrogate {path}: 'meta' is not valid JSON ({exc})") from exc
        if not isinstance(meta, dict):
            raise ConfigError(f"DNPU surrogate {path}: 'meta' must be a JSON object, got {type(meta).__name__}")
        for key in ("voltage_min", "voltage_max", "amplification"):
            if key not in meta:
                raise ConfigError(f"DNPU surrogate {path}: meta lacks {key!r}")
        electrodes = meta.get("electrodes")
        if electrodes is not None and not (isinstance(electrodes, list) and all(isinstance(e, str) for e in electrodes)):
            raise ConfigError(f"DNPU surrogate {path}: meta 'electrodes' must be a list of names")
        kwargs.setdefault("name", path.stem)
        return _build(
            path, weights, biases, _numbers(meta["voltage_min"], "voltage_min", path),
            _numbers(meta["voltage_max"], "voltage_max", path), _scalar(meta["amplification"], "amplification", path),
            activation=meta.get("activation", "relu"), electrodes=electrodes, **kwargs,
        )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        voltage_min: Sequence[float] | None = None,
        voltage_max: Sequence[float] | None = None,
        amplification: float | None = None,
        activation: str | None = None,
        **kwargs,
    ) -> "DNPU":
        """Read a brains-py / brainspy-smg torch checkpoint with ``torch.load(weights_only=True)``.

        Layers are the tensors named ``<prefix><i>.weight`` / ``<prefix><i>.bias`` (the longest
        such chain, ordered by ``i``: e.g. ``raw_model.0.weight``), at the top level or under
        ``model_state_dict`` / ``state_dict``. Voltage ranges and amplification are read from the
        checkpoint's ``info`` dict in every layout the brains-py and brainspy-smg histories use
        (:data:`AMPLIFICATION_PATHS`, :data:`RANGE_PATHS`); arguments override them. Files over
        :data:`MAX_CHECKPOINT_BYTES` are refused before reading; complex tensors are refused; every
        failure is a :class:`ConfigError` naming the file.
        """
        path = _existing(path)
        size = path.stat().st_size
        if size > MAX_CHECKPOINT_BYTES:
            raise ConfigError(f"DNPU checkpoint {path} is {size} bytes, over the {MAX_CHECKPOINT_BYTES}-byte cap")
        state = _torch_load(path)
        try:
            if not isinstance(state, Mapping):
                raise ConfigError(f"DNPU checkpoint {path} holds a {type(state).__name__}, expected a state dict")
            info = state.get("info") if isinstance(state.get("info"), Mapping) else {}
            tensors = state.get("model_state_dict", state.get("state_dict", state))
            if not isinstance(tensors, Mapping):
                raise ConfigError(f"DNPU checkpoint {path}: its state dict is a {type(tensors).__name__}")
            weights, biases = _linear_chain(tensors, path)
            if voltage_min is None or voltage_max is None:
                ranges = _info_ranges(info, path)
                if ranges is None:
                    raise ConfigError(
                        f"DNPU checkpoint {path} does not give electrode voltage ranges; pass voltage_min= and voltage_max="
                    )
                voltage_min, voltage_max = ranges
            if amplification is None:
                amplification = _info_amplification(info, path)
                if amplification is None:
                    raise ConfigError(f"DNPU checkpoint {path} does not give the amplification; pass amplification=")
            if activation is None:
                activation = _first(info, ACTIVATION_PATHS) or "relu"
            if not isinstance(activation, str):
                raise ConfigError(f"DNPU checkpoint {path}: activation must be a name, got {type(activation).__name__}")
        except ConfigError:
            raise
        except (TypeError, ValueError, AttributeError, IndexError, KeyError, RuntimeError, RecursionError) as exc:
            raise ConfigError(f"DNPU checkpoint {path} is malformed: {type(exc).__name__}: {exc}") from exc
        kwargs.setdefault("name", path.stem)
        return _build(path, weights, biases, voltage_min, voltage_max, amplification, activation=activation, **kwargs)

    @classmethod
    def synthetic(cls, seed: int = 0, *, hidden: int = 24, **kwargs) -> "DNPU":
        """The built-in seeded stand-in DNPU (no files needed).

        A tanh network ``7 → hidden → hidden → 1`` on voltages normalised to ``[−1, 1]`` per
        electrode, with weights drawn from a seeded generator, followed by the asymmetric,
        saturating output stage of a hopping-conduction device::

            I = 300 nA · tanh( 1.1 nA · (exp(1.2 z) − exp(−1.6 z)) / 300 nA ),   z the standardised net output

        (exponential, asymmetric growth away from a near-zero region and saturation at both ends:
        a few nA around the median, tens of nA in the tails, up to ~300 nA; slopes of a few to
        tens of nA/V) over the ranges of the real devices,
        −1.2…0.6 V for five electrodes and −0.7…0.3 V for two). The normalisation and
        standardisation are folded into the first and last linear layers, so the result is an
        ordinary surrogate.
        """
        g = torch.Generator().manual_seed(seed)
        vmin = torch.tensor([-1.2, -1.2, -1.2, -1.2, -1.2, -0.7, -0.7])
        vmax = torch.tensor([0.6, 0.6, 0.6, 0.6, 0.6, 0.3, 0.3])
        centre, half = (vmax + vmin) / 2, (vmax - vmin) / 2
        w0 = torch.randn(hidden, N_ELECTRODES, generator=g) * 1.3
        b0 = torch.randn(hidden, generator=g) * 0.5
        w1 = torch.randn(hidden, hidden, generator=g) * (1.5 / hidden ** 0.5)
        b1 = torch.randn(hidden, generator=g) * 0.3
        w2 = torch.randn(1, hidden, generator=g) / hidden ** 0.5
        # fold the per-electrode normalisation v -> (v - centre)/half into the first layer
        w0v = w0 / half
        b0v = b0 - w0v @ centre
        # standardise the network output over a seeded reference sample of the box
        ref = centre + half * (2 * torch.rand(4096, N_ELECTRODES, generator=g) - 1)
        z = torch.tanh(torch.tanh(ref @ w0v.T + b0v) @ w1.T + b1) @ w2.T
        mu, sd = z.mean(), z.std()
        w2s, b2s = w2 / sd, (-mu / sd).reshape(1)
        kwargs.setdefault("name", f"synthetic-{seed}")
        return _SyntheticDNPU(
            [w0v, w1, w2s], [b0v, b1, b2s], vmin, vmax, 1.0, activation="tanh", saturation=300.0, **kwargs,
        )

    # ----------------------------------------------------------------------------- declared
    def input_bounds(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Safe voltage range of each input electrode, ``([n_in], [n_in])``."""
        idx = self.input_electrodes
        return self.voltage_min[idx].to(dtype), self.voltage_max[idx].to(dtype)

    def electrode_voltages(self, controls: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Assemble ``[K, B, 7]`` electrode voltages from ``controls [K, C]`` and ``inputs [K, B, n_in]``."""
        k, b = inputs.shape[:2]
        c = controls.to(inputs.dtype).unsqueeze(1).expand(k, b, controls.shape[-1])
        return torch.cat([inputs, c], dim=-1)[..., self._order]

    def net(self, v: torch.Tensor) -> torch.Tensor:
        """The surrogate's network on electrode voltages ``[..., 7]``; returns nA ``[..., 1]``."""
        act = torch.relu if self.activation == "relu" else torch.tanh
        h = v
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = h @ w.to(h.dtype).T + b.to(h.dtype)
            if i < last:
                h = act(h)
        return self._output_stage(h) * self.amplification

    def _output_stage(self, h: torch.Tensor) -> torch.Tensor:
        if self.saturation is None:
            return h
        return self.saturation * torch.tanh(h / self.saturation)

    def response(self, params: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        return self.net(self.electrode_voltages(params["controls"], inputs))

    def _checked(self, params: Mapping[str, torch.Tensor], inputs: torch.Tensor):
        params, inputs, k, b = super()._checked(params, inputs)
        low, high = self.input_bounds(inputs.dtype)
        inputs = self.guard("inputs (electrode voltages)", inputs, low, high)
        return params, inputs, k, b

    def __repr__(self) -> str:
        return (
            f"DNPU({self.name!r}, inputs={[self.electrodes[i] for i in self.input_electrodes]}, "
            f"controls={[self.electrodes[i] for i in self.control_electrodes]}, layers={len(self.weights)})"
        )


class _SyntheticDNPU(DNPU):
    """The built-in DNPU: the output stage is ``1.1·(exp(1.2z) − exp(−1.6z))`` before the soft saturation."""

    def _output_stage(self, h: torch.Tensor) -> torch.Tensor:
        z = h.clamp(-8.0, 8.0)
        current = 1.1 * (torch.exp(1.2 * z) - torch.exp(-1.6 * z))
        return self.saturation * torch.tanh(current / self.saturation)


def shared_surrogates() -> list[Path]:
    """The real surrogate files in ``shared/data/dnpu/`` next to the checkout (may be empty)."""
    if not SHARED_DIR.is_dir():
        return []
    return sorted(SHARED_DIR.glob("*.npz"))


def load_dnpu(spec: str | os.PathLike | None, **kwargs) -> DNPU:
    """``None`` or ``"synthetic"``: the built-in device; otherwise a surrogate file."""
    if spec is None or str(spec) == "synthetic":
        return DNPU.synthetic(**kwargs)
    return DNPU.load(spec, **kwargs)


# --------------------------------------------------------------------------------- helpers
def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(
            f"DNPU surrogate file {path} not found. The project does not ship surrogates of real devices: "
            "use DNPU.synthetic() or point to a file in the shared format (see docs/devices/dnpu.md)"
        )
    return path


def _check_layers(weights: list[torch.Tensor], biases: list[torch.Tensor], name: str) -> None:
    if not weights or len(weights) != len(biases):
        raise ConfigError(f"{name}: need as many biases as weights (got {len(weights)}, {len(biases)})")
    width = N_ELECTRODES
    for i, (w, b) in enumerate(zip(weights, biases)):
        if w.dim() != 2 or b.dim() != 1 or w.shape[0] != b.shape[0] or w.shape[1] != width:
            raise ConfigError(
                f"{name}: layer {i} has weight {tuple(w.shape)} and bias {tuple(b.shape)}; expected [out, {width}] and [out]"
            )
        if not (torch.isfinite(w).all() and torch.isfinite(b).all()):
            raise ConfigError(f"{name}: layer {i} contains NaN/inf weights (corrupt surrogate)")
        width = w.shape[0]
    if width != 1:
        raise ConfigError(f"{name}: the last layer has {width} outputs; a DNPU surrogate has one output current")


def time_domain_dnpu(
    spec: str | os.PathLike | DNPU | None = None,
    *,
    fs: float = 10_000.0,
    bandwidth_hz: float | None = 1_000.0,
    delay_s: float = 2e-4,
    white_psd: float = 1e-5,
    flicker_psd_1hz: float = 0.0,
    clip: tuple[float, float] | None = (-1000.0, 1000.0),
    adc_bits: int | None = 16,
    dac_ramp_s: float = 1e-3,
    sample_s: float = 0.01,
    seed: int = 0,
    **dnpu_kwargs,
):
    """A DNPU in the time domain with the homodyne-gradient paper's measurement settings.

    Defaults: sampled at 10 kHz (the paper: 2–10 kHz), white output noise of 10⁻⁵ nA²/Hz (the
    paper's figure), a 1 kHz first-order bandwidth and 0.2 ms delay (so the modulation phase
    matters), an amplifier range of ±1 µA (the real surrogates reach −480 nA at the corners of their
    voltage box) digitised by a 16-bit ADC, 1 ms DAC ramps, and static
    measurements averaged over 10 ms. ``spec``: ``None``/"synthetic" (built-in), a path, or a DNPU.
    """
    from ..wrappers.timedomain import TimeDomainDevice, TimeDomainNoise

    device = spec if isinstance(spec, DNPU) else load_dnpu(spec, **dnpu_kwargs)
    adc_step = None
    if adc_bits and clip is not None:
        adc_step = (clip[1] - clip[0]) / 2 ** int(adc_bits)
    return TimeDomainDevice(
        device, fs, bandwidth_hz=bandwidth_hz, delay_s=delay_s, noise=TimeDomainNoise(white_psd, flicker_psd_1hz),
        clip=clip, adc_step=adc_step, dac_ramp_s=dac_ramp_s, sample_s=sample_s, seed=seed,
    )
