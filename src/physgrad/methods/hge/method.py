"""Homodyne gradient extraction (HGE): every parameter wobbles at its own frequency; lock-in reads the gradient.

Boon, Cassola, Ruiz Euler, Chen, van de Ven, Alegre Ibarra, Bobbert, van der Wiel, "Gradient
descent in materia through homodyne gradient extraction", arXiv 2105.11233 (Nat. Commun. 2025).

Each channel (control parameter, optionally each input) is modulated by its own sinusoid,
``θ_i(t) = θ_i + a_i sin(2π f_i t)``. To first order the output is

    I(t) ≈ I(θ) + Σ_i a_i ∂I/∂θ_i · |H_i(f_i)| sin(2π f_i t + φ_i)

where ``H_i(f) = |H_i| e^{iφ_i}`` is the transfer of the path channel ``i``'s modulation travels
(electrode, device, amplifier bandwidth and delay). The lock-in (:mod:`.lockin`) gives
``Z_i = X_i + iY_i = (a_i/2) ∂I/∂θ_i H_i(f_i)``, so ``∂I/∂θ_i = 2 Re(Z_i / H_i(f_i)) / a_i``
(``phase="calibrated"``: ``H_i`` measured per channel by :mod:`.calibration`) or the paper's
``2X_i/a_i`` (``phase="none"``). The authors' code takes ``2|Z_i|/a_i`` with the sign from the phase
(``sign_from_phase=True``). ``mode="parallel"``: all channels in one window; ``"sequential"``: one
window per channel, all in one waveform. Frequencies: :mod:`.plan`.

The three verbs (issue 10): ``ask`` is pure — it returns waveform probes and, while the method's
state has no calibration for ``system.identity``, the calibration's probes in front of them;
``answer``/a carrier plays them (the only contact with a device); ``tell`` reads the calibration
(stored in :meth:`state_dict`, keyed by identity, so a resumed run never recalibrates) and the
gradient, with ``Estimate.cost`` equal to what the device counted (DAC ramps and calibration
included). Every failed or non-finite reading is a :class:`MeasurementError`; a sample on an
amplifier rail (seen in the device's own recorded samples) too.

Scopes: ``local`` estimates one device's vector–Jacobian product (controls and, when needed,
inputs); ``global`` modulates every trainable parameter of the model and plays the network as one
waveform, each channel divided by the transfer of its own path (:mod:`.routes`).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Mapping, Sequence

import torch
from torch import nn

from ...cost import Cost
from ...errors import ConfigError, MeasurementError, ShapeError
from ...models.physical_layer import gradient_path, systems_of
from ...systems.base import PhysicalSystem
from ..base import Estimate, GradientMethod, LossFn, accumulate_grads, flatten_with_bounds, unflatten
from .calibration import Calibration, CalibrationProbes, calibration_waveform, read_calibration, reference_frequencies
from .globalscope import check_time_domain, control_offsets, midpoint_inputs, model_probes
from .lockin import demodulate, railed
from .plan import FrequencyPlan, check_frequencies, modulation_amplitudes, plan_frequencies
from .probes import CalibratedProbes, GlobalAnswers, ModelProbes, WaveformProbes, centre_and_amplitude, sines
from .settings import DEFAULT_SETTLE_S, SETTING_NAMES, HGESettings

Bounds = Mapping[str, tuple[torch.Tensor, torch.Tensor]]


class HGE(GradientMethod):
    """Homodyne gradient extraction (see module docstring).

    ``HGE(window_s=0.1, *, settings=None, scope="global", seed=0, carrier=None, **options)``: every option is a
    field of :class:`~physgrad.methods.hge.settings.HGESettings` (the old keyword arguments), given
    either one by one or as ``settings=``; options override the fields of ``settings``.
    """

    name = "hge"
    kind = "waveform"

    @staticmethod
    def extra_options() -> dict:
        """The settings a constructor keyword may set (name → default), for the method registry."""
        defaults = HGESettings()
        return {name: getattr(defaults, name) for name in SETTING_NAMES}

    def __init__(self, window_s: float | None = None, *, settings: HGESettings | None = None, scope: str = "global",
                 seed: int = 0, carrier=None, **options) -> None:
        super().__init__(scope, seed, carrier=carrier)
        unknown = sorted(set(options) - set(SETTING_NAMES))
        if unknown:
            raise ConfigError(f"HGE got unknown option(s) {unknown}; the settings are {list(SETTING_NAMES)}")
        if window_s is not None:
            options["window_s"] = window_s
        self.settings = replace(settings or HGESettings(), **options)
        if self.settings.loss_signal and scope == "local":
            raise ConfigError("loss_signal=True demodulates the whole loss: it needs scope='global'")
        self.calibrations: dict[str, Calibration] = {}
        self.calibration_cost = Cost()
        self._plans: dict[tuple, FrequencyPlan] = {}

    def __getattr__(self, name: str):
        settings = self.__dict__.get("settings")
        if settings is not None and name in SETTING_NAMES:
            return getattr(settings, name)
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    # ------------------------------------------------------------------ plan
    def settle_for(self, system: PhysicalSystem) -> float:
        """Wait before each window: stated (``settle_s``), else measured by this device's calibration, else 10 ms."""
        if self.settings.settle_s is not None:
            return self.settings.settle_s
        cal = self.calibrations.get(system.identity)
        return cal.settle_s if cal is not None else DEFAULT_SETTLE_S

    def plan(self, channels: int, system: PhysicalSystem) -> FrequencyPlan:
        """The frequency plan for ``channels`` channels on ``system`` (validated; cached)."""
        s = self.settings
        fs, settle_s = float(system.fs), self.settle_for(system)
        key = (channels, fs, settle_s)
        if key in self._plans:
            return self._plans[key]
        n = s.window_s * fs
        if abs(n - round(n)) > 1e-6 * max(1.0, n):
            raise ConfigError(f"window {s.window_s} s at fs={fs} Hz is {n:g} samples, not a whole number")
        need = channels if s.mode == "parallel" else 1
        if s.frequencies is not None:
            if len(s.frequencies) < need:
                raise ConfigError(f"{len(s.frequencies)} frequencies given for {need} channel(s)")
            freqs = list(s.frequencies[:need])
        else:
            freqs = plan_frequencies(need, fs, s.window_s, f_max=s.bandwidth_hz, **s.plan_options)
        bins = check_frequencies(freqs, fs, s.window_s, order=s.order, f_max=s.bandwidth_hz, guard_bins=s.guard_bins)
        if s.mode == "sequential":
            freqs, bins = [freqs[0]] * channels, [bins[0]] * channels
        settle = int(math.ceil(settle_s * fs - 1e-9))
        plan = FrequencyPlan(fs, int(round(n)), settle, tuple(freqs), tuple(bins), s.mode)
        self._plans[key] = plan
        return plan

    def _base_amplitudes(self, low: torch.Tensor, high: torch.Tensor, fraction: float) -> torch.Tensor:
        span = high - low
        s = self.settings
        if s.amplitude_abs is not None:
            return torch.full_like(span, s.amplitude_abs)
        return torch.where(torch.isfinite(span), fraction * span, torch.full_like(span, 0.01))

    def _rule(self, base: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        s = self.settings
        return modulation_amplitudes(base, freqs.tolist(), rule=s.amplitude_rule, bandwidth_hz=s.bandwidth_hz,
                                     white_psd=s.white_psd, flicker_psd_1hz=s.flicker_psd_1hz)

    # ------------------------------------------------------------------ ask
    def needs_calibration(self, system: PhysicalSystem) -> bool:
        return self.settings.phase == "calibrated" and system.identity not in self.calibrations

    def ask(
        self,
        theta: Mapping[str, torch.Tensor],
        inputs: torch.Tensor | None = None,
        bounds: Bounds | None = None,
        input_bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
        *,
        targets=None,
        system: PhysicalSystem | None = None,
        input_grad: bool = False,
    ) -> WaveformProbes | CalibratedProbes:
        """Waveforms for one gradient at ``theta`` on ``system`` (inputs modulated if ``input_grad``). Pure.

        Returns :class:`WaveformProbes`, or :class:`CalibratedProbes` (the device's transfer
        calibration first) while no calibration for ``system.identity`` is known. Play them with
        ``answers = probes.answer(system)`` (or any carrier) and pass ``answers`` to :meth:`tell`.
        """
        check_time_domain(system)
        theta = {n: torch.as_tensor(t).detach() for n, t in theta.items()}
        bounds = system.parameter_bounds() if bounds is None else bounds
        if input_grad:
            if inputs is None:
                raise ShapeError("input_grad=True needs the inputs to modulate")
            if input_bounds is None:
                input_bounds = system.input_bounds(inputs.dtype)
        offsets = control_offsets(system)
        routes: list = []
        for name, t in theta.items():
            start = offsets.get(name)
            routes += [None if start is None else start + i for i in range(t.numel())]
        n_controls = sum(spec.numel for spec in system.parameter_specs.values())
        if input_grad:
            routes += [n_controls + e for e in range(math.prod(system.input_shape))]
        probes = self._waveform_probes(theta, bounds, system, inputs, input_bounds if input_grad else None,
                                       input_grad, tuple(routes))
        if self.needs_calibration(system):
            return CalibratedProbes(self.calibration_probes(system, theta, inputs), probes)
        return probes

    def _waveform_probes(self, theta, bounds, system, inputs, input_bounds, input_grad, routes) -> WaveformProbes:
        s = self.settings
        flat, low, high, shapes = flatten_with_bounds(theta, bounds)
        p = flat.numel()
        channels = p
        if input_grad:
            b = inputs.shape[0]
            x = inputs.detach().reshape(b, -1)
            if input_bounds is None:
                lo_in, hi_in = torch.full_like(x[0], -math.inf), torch.full_like(x[0], math.inf)
            else:
                lo_in, hi_in = (torch.as_tensor(v, dtype=x.dtype).reshape(-1) for v in input_bounds)
            lo_in, hi_in = lo_in.expand_as(x), hi_in.expand_as(x)
            channels += x.shape[1]
        plan = self.plan(channels, system)
        freqs = plan.channel_freqs()
        amp0 = self._rule(self._base_amplitudes(low, high, s.amplitude), freqs[:p])
        centre, amp = centre_and_amplitude(flat, low, high, amp0, s.at_bound, "parameter")
        wave = sines(plan)
        waves = centre.to(torch.float64) + amp.to(torch.float64) * wave[:, :p]
        # rounding only: centre ± amp is inside the range by construction
        waves = torch.maximum(torch.minimum(waves, high.to(torch.float64)), low.to(torch.float64)).to(flat.dtype)
        probe_inputs, in_amp = inputs, None
        if input_grad:
            a_in = self._rule(self._base_amplitudes(lo_in[0], hi_in[0], s.input_amplitude), freqs[p:]).expand_as(x)
            in_centre, in_amp = centre_and_amplitude(x, lo_in, hi_in, a_in, s.at_bound, "input")
            x_wave = in_centre.to(torch.float64) + in_amp.to(torch.float64) * wave[:, None, p:]  # [N, B, n_in]
            x_wave = torch.maximum(torch.minimum(x_wave, hi_in.to(torch.float64)), lo_in.to(torch.float64))
            probe_inputs = x_wave.to(inputs.dtype).reshape(plan.total_samples, *inputs.shape)
        return WaveformProbes(
            unflatten(waves, shapes), probe_inputs, plan, amp, in_amp, routes, system.identity, shapes,
            None if inputs is None else tuple(inputs.shape), system.clip, system.ramp_samples,
        )

    def calibration_probes(self, system: PhysicalSystem, params=None, inputs=None) -> CalibrationProbes:
        """The calibration's own probes at ``(params, the first data point)`` (see :mod:`.calibration`). Pure."""
        check_time_domain(system)
        s = self.settings
        full = system.initial_parameters()
        for name, value in (params or {}).items():
            if name in full:
                full[name] = torch.as_tensor(value).detach().reshape(full[name].shape).to(full[name].dtype)
        flat, low, high, shapes = flatten_with_bounds(full, system.parameter_bounds())
        n_controls = flat.numel()
        in_bounds = system.input_bounds()
        x0 = midpoint_inputs(system) if inputs is None else inputs.detach()[:1].reshape(1, *system.input_shape)
        centre, amp = centre_and_amplitude(flat, low, high, self._base_amplitudes(low, high, s.amplitude), "shrink",
                                           "parameter")
        if in_bounds is not None:
            lo_in, hi_in = (b.reshape(-1).to(x0.dtype) for b in in_bounds)
            xin = torch.minimum(torch.maximum(x0.reshape(-1), lo_in), hi_in)
            c_in, a_in = centre_and_amplitude(xin, lo_in, hi_in, self._base_amplitudes(lo_in, hi_in, s.input_amplitude),
                                              "shrink", "input")
            centre, amp = torch.cat([centre, c_in.to(centre.dtype)]), torch.cat([amp, a_in.to(amp.dtype)])
            low, high = torch.cat([low, lo_in.to(low.dtype)]), torch.cat([high, hi_in.to(high.dtype)])
        channels = centre.numel()
        fs = float(system.fs)
        if s.frequencies is not None and len(s.frequencies) >= channels:
            fast = list(s.frequencies[:channels])
        else:
            fast = plan_frequencies(channels, fs, s.window_s, f_max=s.bandwidth_hz, **s.plan_options)
        window = s.calibration_window
        ref = reference_frequencies(channels, fs, window)
        settle = int(math.ceil(s.calibration_settle_s * fs - 1e-9))
        segment = settle + int(round(window * fs))
        waves = calibration_waveform(centre, amp, fast, ref, fs, segment)
        waves = torch.maximum(torch.minimum(waves, high.to(torch.float64)), low.to(torch.float64))
        params_w = unflatten(waves[:, :n_controls].to(flat.dtype), shapes)
        if in_bounds is not None:
            probe_inputs = waves[:, n_controls:].to(x0.dtype).reshape(waves.shape[0], 1, *system.input_shape)
        else:
            probe_inputs = x0
        return CalibrationProbes(params_w, probe_inputs, fs, segment, settle, tuple(fast), tuple(ref),
                                 system.ramp_samples, n_controls, system.identity)

    # ------------------------------------------------------------------ tell
    def tell(self, probes, answers, cotangent: torch.Tensor | None = None) -> Estimate:
        """Turn the played answers into a gradient estimate (and store any calibration they carry).

        ``answers`` of waveform probes: the outputs ``[N, B, *out]`` with ``cotangent [B, *out]``
        (the vector–Jacobian product ``vᵀJ``), or a loss signal ``[N]`` without one.
        """
        if isinstance(probes, CalibratedProbes):
            cal_answers, answers = answers
            self._store(probes.calibration.identity,
                        read_calibration(probes.calibration, self._finite(cal_answers), self.settings.calibration_snr,
                                         self.settings.per_channel))
            est = self.tell(probes.gradient, answers, cotangent)
            return Estimate(est.grads, est.input_grad, probes.cost)
        if isinstance(probes, CalibrationProbes):
            self._store(probes.identity, read_calibration(probes, self._finite(answers), self.settings.calibration_snr,
                                                          self.settings.per_channel))
            return Estimate({}, None, probes.cost)
        if isinstance(answers, GlobalAnswers):
            for signal, clip in zip(answers.device_signals, answers.clips):
                self._check_rails(signal, clip)
            answers = answers.signal
        else:
            answers = torch.as_tensor(answers)
            self._check_rails(answers, probes.clip if isinstance(probes, WaveformProbes) else None)
        answers = self._finite(answers)
        if answers.shape[0] != probes.window_samples:
            raise ShapeError(f"tell expects {probes.window_samples} samples along axis 0, got {tuple(answers.shape)}")
        jac = self.jacobian(probes, answers)  # [*rest, C]
        p = probes.amplitudes.numel()
        input_grad = None
        if cotangent is None:
            if answers.dim() != 1:
                raise ShapeError("answers with a batch need a cotangent (the vector of the vector–Jacobian product)")
            flat = jac[:p]
        else:
            if tuple(cotangent.shape) != tuple(answers.shape[1:]):
                raise ShapeError(f"cotangent shape {tuple(cotangent.shape)} does not match answers {tuple(answers.shape)}")
            v = cotangent.to(torch.float64).unsqueeze(-1)
            weighted = (v * jac).reshape(answers.shape[1], -1, jac.shape[-1]).sum(1)  # [B, C]
            flat = weighted[:, :p].sum(0)
            if probes.input_amplitudes is not None:
                input_grad = weighted[:, p:].reshape(probes.input_shape)
        dtype = next(iter(probes.params.values())).dtype
        grads = {n: g.to(dtype) for n, g in unflatten(flat.unsqueeze(0), probes.shapes).items()}
        grads = {n: g[0] for n, g in grads.items()}
        return Estimate(grads, None if input_grad is None else input_grad.to(dtype), probes.cost)

    def transfer(self, probes: WaveformProbes | ModelProbes) -> torch.Tensor:
        """``H`` of every channel along the path its modulation travels (1 for ``phase="none"``)."""
        freqs = probes.plan.channel_freqs().tolist()
        if self.settings.phase == "none":
            return torch.ones(len(freqs), dtype=torch.complex128)
        cal = self.calibrations.get(probes.identity)
        if cal is None:
            raise ConfigError(
                f"hge: no transfer calibration for device {probes.identity!r}: play the probes ask() returned (they "
                "include it), call HGE.calibrate(system), or use phase='none'"
            )
        out = []
        for route, f in zip(probes.routes, freqs):
            if route is None:
                out.append(1.0 + 0j)
            elif route == "inputs":
                out.append(cal.inputs_at(f))
            else:
                out.append(cal.at(int(route), f))
        return torch.tensor(out, dtype=torch.complex128)

    def jacobian(self, probes: WaveformProbes | ModelProbes, answers: torch.Tensor) -> torch.Tensor:
        """Per-element derivative estimates ``[*answers.shape[1:], C]`` (float64), channels last."""
        z = demodulate(answers.to(torch.float64), probes.plan, self.settings.demodulation)  # [*rest, C]
        h = self.transfer(probes).to(z.dtype)
        if self.settings.sign_from_phase:
            val = z.abs() / h.abs() * torch.sign(torch.cos(torch.angle(z) - torch.angle(h)))
        else:
            val = (z / h).real
        amps = probes.amplitudes.to(torch.float64)
        if probes.input_amplitudes is not None:
            b = probes.input_amplitudes.shape[0]
            a = torch.cat([amps.expand(b, -1), probes.input_amplitudes.reshape(b, -1).to(torch.float64)], dim=1)
            a = a.reshape(b, *([1] * (val.dim() - 2)), a.shape[-1])
        else:
            a = amps
        return 2.0 * val / a

    @staticmethod
    def _finite(answers) -> torch.Tensor:
        answers = torch.as_tensor(answers)
        if not torch.isfinite(answers).all():
            raise MeasurementError(f"hge: {int((~torch.isfinite(answers)).sum())} non-finite answer sample(s); no estimate made")
        return answers

    @staticmethod
    def _check_rails(samples: torch.Tensor, clip) -> None:
        count = railed(torch.as_tensor(samples), clip)
        if count:
            raise MeasurementError(
                f"hge: {count} recorded sample(s) sit on the amplifier rails {clip}: a clipped signal has spurious "
                "harmonics and a wrong gradient. Reduce the modulation amplitude, the amplifier gain, or move the "
                "operating point"
            )

    def _store(self, identity: str, cal: Calibration) -> None:
        self.calibrations[identity] = cal
        self.calibration_cost = self.calibration_cost + cal.cost
        self._plans.clear()  # the measured settling may change the plan's settle

    # ------------------------------------------------------------------ calibration
    def calibrate(self, system: PhysicalSystem, params=None, inputs=None, freqs: Sequence[float] | None = None) -> torch.Tensor:
        """Measure the device's per-channel transfer now (ask → play → tell of the calibration probes).

        Returns ``H`` of the most responsive channel at ``freqs`` (its fitted model), or every
        channel's ``H_j(f_j)`` when ``freqs`` is ``None``.
        """
        probes = self.calibration_probes(system, params, inputs)
        self.tell(probes, self.carrier(system, probes))
        cal = self.calibrations[system.identity]
        if freqs is None:
            return torch.tensor(cal.transfer, dtype=torch.complex128)
        best = max(range(cal.channels), key=lambda j: cal.snr[j])
        return torch.tensor([cal.at(best, float(f)) for f in freqs], dtype=torch.complex128)

    # ------------------------------------------------------------------ global scope
    def ask_model(self, model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y) -> ModelProbes | CalibratedProbes:
        """Global-scope probes: every trainable parameter of ``model`` modulated, one waveform. Pure."""
        return model_probes(self, model, loss_fn, x, y)

    def _backward(self, model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.scope == "local":
            with gradient_path(model, "estimate", self, self.carrier):  # the forward measurement too
                loss = loss_fn(model(x), y)
                loss.backward()
            return loss
        probes = self.ask_model(model, loss_fn, x, y)
        device = systems_of(model)[0]
        answers = self.carrier(device, probes)
        grad_probes, grad_answers = (probes.gradient, answers[1]) if isinstance(probes, CalibratedProbes) else (probes, answers)
        signal = self._finite(grad_answers.signal)
        plan = grad_probes.plan
        first = signal[plan.settle_samples : plan.segment]
        if self.settings.loss_signal:
            est = self.tell(probes, answers)
            loss = first.to(torch.float64).mean().to(signal.dtype)
        else:
            out0 = first.mean(0).detach().requires_grad_(True)
            with torch.enable_grad():
                loss = loss_fn(out0, y)
                (cot,) = torch.autograd.grad(loss, out0)
            est = self.tell(probes, answers, cot)
        accumulate_grads(model, est.grads)
        return loss.detach()

    def vjp(self, system, params, inputs, outputs, cotangent, need_input_grad: bool = True):
        """Estimated ``(vᵀ ∂y/∂x, vᵀ ∂y/∂θ)`` of one time-domain device, ``v = cotangent`` (local scope)."""
        theta = {n: p.detach() for n, p in params.items()}
        if not theta and not need_input_grad:
            return None, {}
        probes = self.ask(theta, inputs.detach(), system=system, input_grad=need_input_grad)
        est = self.tell(probes, self.carrier(system, probes), cotangent)
        return est.input_grad, est.grads

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        state = super().state_dict()
        state["calibrations"] = {k: c.as_state() for k, c in self.calibrations.items()}
        state["calibration_cost"] = self.calibration_cost.as_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.calibrations = {k: Calibration.from_state(v) for k, v in state.get("calibrations", {}).items()}
        self.calibration_cost = Cost(**state.get("calibration_cost", Cost().as_dict()))
        self._plans.clear()

    def __repr__(self) -> str:
        s = self.settings
        return (f"HGE(window_s={s.window_s}, mode={s.mode!r}, phase={s.phase!r}, sign_from_phase={s.sign_from_phase}, "
                f"amplitude={s.amplitude}, order={s.order}, loss_signal={s.loss_signal}, scope={self.scope!r})")


