"""Fault tolerance for any device: retries with backoff and re-measurement of suspicious probes.

Robustness lives in the systems layer, not in each method: every method (global or local scope,
any estimator) and the trainer's evaluation reach a device only through ``measure``, so one
wrapper protects them all. :class:`Resilient` does two things.

**Retries.** A ``measure`` that raises :class:`~physgrad.errors.MeasurementError` (timeouts and
disconnects included: :mod:`physgrad.systems.wrappers.faults`) is repeated after ``backoff·2^i`` seconds
(capped at ``max_backoff``), at most ``retries`` times; then the error goes up and the trainer
skips the step (nothing applied).

**Re-measurement.** Every answer is checked probe by probe (a probe = one parameter setting):

* *non-finite* — any NaN/inf: never accepted;
* *out of range* — outside the instrument's declared ``output_range`` (if given);
* *outlier* — with ``K ≥ 5`` probes in the call, an element further than ``outlier_z`` robust
  standard deviations from the median over probes (Hampel identifier: scale ``1.4826·MAD``,
  floored by the median of that scale over all elements; the probes of one gradient are nearby
  settings, so their answers must be close);
* *stuck* — bit-for-bit the previous answer although the request (setting or inputs) changed.

Suspicious probes, and only those, are measured again (one batched call per round, at most
``remeasure`` rounds). A re-measured probe is accepted when it is no longer suspicious, or when it
*reproduces* the suspicious answer (within half of its deviation; exactly, for a stuck one): a
genuine response reproduces, a glitch does not. A non-finite answer is never accepted. A probe
still unresolved after the last round raises :class:`MeasurementError` (the step is skipped).

**Re-referencing.** A re-measured probe comes from a later call than the others, and a device's
baseline may have drifted in between; mixed naively, the antithetic differences ``y(θ+δP) −
y(θ−δP)`` would then carry the drift divided by ``2δ``. So each re-measurement call also measures
``anchors`` (3) clean probes of the first answer again, and the re-measured probes are shifted by
the median over anchors of the change (per output element; a median of three outvotes one faulty
anchor). This removes additive drift between calls exactly; it adds the anchors' measurement noise
to the re-measured probes (about ``σ``), a fair price for consistent pairs.

Default thresholds: ``outlier_z = 10`` leaves a Gaussian false-alarm rate below 1e-22 per element
(far below one per run of 10⁹ elements) yet flags any glitch larger than 10 σ of the
probe-to-probe spread; a false alarm costs only one re-measurement. Every event is logged
(``logging``, INFO) and counted in :attr:`Resilient.events`; :meth:`Resilient.summary` gives the
final counts.

**Drift.** With ``drift_every = N > 0``, the first probe ever measured becomes a *reference
anchor*: it is measured twice more at once (its spread sets the noise scale ``σ``), and again after
every ``N`` calls. If its answer has moved by more than ``drift_z · σ`` (at least ``drift_atol``)
from the reference in any output element, the drift is flagged (``events["drift"]``, a warning)
and, with ``on_drift="raise"``, the call fails with :class:`DriftError` (the trainer skips the
step; a lab may recalibrate); with ``"warn"`` (default) the reference moves to the new answer, so
each change is reported once. What it detects: a change of the device's response *at the anchor
setting and input* between two checks that exceeds the threshold — offset and gain drift, a
device that was swapped, re-wired or re-biased. What it does not: drift smaller than the threshold
(it accumulates until it crosses it), drift that comes and goes within one interval, and changes
that leave the anchor's answer alone (e.g. only other settings affected). Each check costs one
query (three at the start), counted like any other.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable, Mapping

import torch

from ...errors import MeasurementError


class DriftError(MeasurementError):
    """The reference anchor's answer moved beyond the drift threshold (``on_drift="raise"``)."""
from ..base import PhysicalSystem
from .faults import DeviceDisconnectedError, DeviceTimeoutError, backoff_delay
from .base import SystemWrapper

log = logging.getLogger(__name__)

EVENTS = (
    "calls", "retries", "timeouts", "disconnects", "errors", "failed_calls",
    "nonfinite", "out_of_range", "outliers", "stuck", "remeasured_probes", "anchor_probes", "confirmed", "unresolved",
    "drift_checks", "drift",
)
MIN_OUTLIER_PROBES = 5
AGREE = 0.5  # a reproduction lies within half the suspicious deviation


class Resilient(SystemWrapper):
    """Wrap ``inner`` with retries and re-measurement (see the module docstring).

    Parameters
    ----------
    retries, backoff, max_backoff:
        Repeat a failed ``measure`` at most ``retries`` times, waiting ``backoff·2^i`` s (≤ ``max_backoff``).
    remeasure:
        At most this many rounds of re-measuring suspicious probes per call.
    output_range:
        ``(low, high)`` the instrument can read (its full scale); ``None``: no range check.
    outlier_z:
        Robust z-score above which an element is an outlier (``None``/``inf``: no outlier check).
    detect_stuck:
        Flag answers repeated bit for bit under a different request.
    anchors:
        Clean probes measured again with each re-measurement, to re-reference it (0: none).
    sleep:
        The function that waits (tests pass a recorder).
    """

    def __init__(
        self,
        inner: PhysicalSystem,
        *,
        retries: int = 3,
        backoff: float = 0.05,
        max_backoff: float = 2.0,
        remeasure: int = 3,
        output_range: tuple[float, float] | None = None,
        outlier_z: float | None = 10.0,
        detect_stuck: bool = True,
        anchors: int = 3,
        sleep: Callable[[float], None] = time.sleep,
        drift_every: int = 0,
        drift_z: float = 8.0,
        drift_atol: float = 1e-6,
        on_drift: str = "warn",
    ) -> None:
        super().__init__(inner)
        if drift_every < 0 or not drift_z > 0 or not drift_atol >= 0 or on_drift not in ("warn", "raise"):
            raise ValueError(f"need drift_every >= 0, drift_z > 0, drift_atol >= 0, on_drift 'warn' or 'raise'; got "
                             f"{drift_every}, {drift_z}, {drift_atol}, {on_drift!r}")
        self.drift_every, self.drift_z, self.drift_atol, self.on_drift = int(drift_every), float(drift_z), float(drift_atol), on_drift
        self._anchor: dict | None = None  # {"params", "inputs", "answer", "scale"}
        if retries < 0 or remeasure < 0:
            raise ValueError(f"retries and remeasure must be >= 0, got {retries}, {remeasure}")
        if not (0 <= backoff <= max_backoff < math.inf):
            raise ValueError(f"need 0 <= backoff <= max_backoff < inf, got {backoff}, {max_backoff}")
        if output_range is not None and not output_range[0] < output_range[1]:
            raise ValueError(f"output_range {output_range} is not a range")
        if outlier_z is not None and not outlier_z > 0:
            raise ValueError(f"outlier_z must be > 0 or None, got {outlier_z}")
        self.retries, self.remeasure = int(retries), int(remeasure)
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self.output_range = output_range
        self.outlier_z = None if outlier_z is None or math.isinf(outlier_z) else float(outlier_z)
        self.detect_stuck = detect_stuck
        self.anchors = int(anchors)
        self.sleep = sleep
        self.events = {name: 0 for name in EVENTS}
        self._last_answer: torch.Tensor | None = None  # raw answer of the last probe the device gave
        self._last_request: torch.Tensor | None = None  # that probe's setting and inputs, flattened
        self._first_previous: tuple = (None, None)  # what preceded the latest device call

    # ------------------------------------------------------------------ public
    def summary(self) -> dict[str, int]:
        """Counts of everything that happened (retries, re-measurements, by kind)."""
        return dict(self.events)

    def measure(self, params: Mapping[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        params, inputs, shared = self._normalised(params, inputs)
        self.events["calls"] += 1
        if self.drift_every:
            self._check_drift(params, inputs, shared)
        out = self._measure_with_retries(params, inputs, shared)
        ref = self._reference(out)
        dev, hard, stuck = self._suspicion(out, ref, self._requests(params, inputs, shared), self._first_previous)
        pending = hard | (dev > 0) | stuck
        if not pending.any():
            return out
        answer = out.clone()
        candidate, cand_dev, cand_ok = out.clone(), dev, ~hard  # latest usable measurement of each probe
        anchors = self._anchors(~pending)
        for _ in range(self.remeasure):
            idx = pending.nonzero().squeeze(1)
            self.events["remeasured_probes"] += len(idx)
            self.events["anchor_probes"] += len(anchors)
            log.info("re-measuring %d suspicious probe(s) of %d (+%d anchors)", len(idx), out.shape[0], len(anchors))
            call = torch.cat([idx, anchors])
            sub = {n: v[call] for n, v in params.items()}
            sub_in = inputs if shared else inputs[call]
            raw = self._measure_with_retries(sub, sub_in, shared)
            rdev, rhard, rstuck = self._suspicion(raw, ref, self._requests(sub, sub_in, shared), self._first_previous)
            n = len(idx)
            usable = ~(rhard | rstuck)[n:]  # (not judged against the reference: it may be the one that moved)
            new = self._rereferenced(raw[:n], raw[n:][usable], answer[anchors][usable])
            ndev, nhard, nstuck = rdev[:n], rhard[:n], rstuck[:n]
            if new is not raw[:n]:  # shifted: judge the shifted values (stuck was judged on the raw ones)
                ndev, nhard, _ = self._suspicion(new, ref, None, None, count=False)
            flat_new, flat_old = new.reshape(len(idx), -1), candidate[idx].reshape(len(idx), -1)
            clean = ~nhard & (ndev == 0) & ~nstuck
            agrees = cand_ok[idx] & ~nhard & ((flat_new - flat_old).abs().amax(1) <= AGREE * cand_dev[idx])
            accepted = clean | agrees
            self.events["confirmed"] += int((agrees & ~clean).sum())
            answer[idx[accepted]] = new[accepted]
            pending[idx[accepted]] = False
            keep = ~accepted & ~nhard  # a usable but unconfirmed answer becomes the new candidate
            candidate[idx[keep]] = new[keep]
            cand_dev[idx[keep]] = ndev[keep]
            cand_ok[idx[keep]] = True
            if not pending.any():
                return answer
        self.events["unresolved"] += int(pending.sum())
        raise MeasurementError(
            f"{int(pending.sum())} probe(s) still suspicious after {self.remeasure} re-measurement round(s) "
            f"(non-finite, out of range, outlier or stuck); nothing was used"
        )

    def _check_drift(self, params: dict[str, torch.Tensor], inputs: torch.Tensor, shared: bool) -> None:
        """Set the reference anchor on the first call; re-measure it every ``drift_every`` calls."""
        if self._anchor is None:
            if not params:
                return
            a_params = {n: v[:1].detach().clone() for n, v in params.items()}
            a_inputs = (inputs if shared else inputs[:1]).detach().clone()
            first = [self._measure_with_retries(a_params, a_inputs, shared) for _ in range(3)]
            stack = torch.stack([f.double() for f in first])
            spread = stack.std(0).nan_to_num(0.0)  # three readings: pooled over elements, it is a usable σ
            self._anchor = {"params": a_params, "inputs": a_inputs, "shared": shared, "answer": stack.mean(0),
                            "scale": torch.maximum(spread, spread.median())}
            self.events["anchor_probes"] += 3
            return
        if (self.events["calls"] - 1) % self.drift_every:
            return
        a = self._anchor
        again = self._measure_with_retries(a["params"], a["inputs"], a["shared"]).double()
        self.events["drift_checks"] += 1
        self.events["anchor_probes"] += 1
        # σ of one reading from three: allow for the reference's own error too
        limit = torch.clamp(self.drift_z * a["scale"] * 1.5, min=self.drift_atol * (1 + a["answer"].abs()))
        moved = (again - a["answer"]).abs()
        if torch.isfinite(again).all() and (moved > limit).any():
            self.events["drift"] += 1
            log.warning("drift: the reference anchor moved by up to %.4g (threshold %.4g) since it was last checked",
                        float(moved.max()), float(limit[moved > limit].min()))
            a["answer"] = again
            if self.on_drift == "raise":
                raise DriftError(f"the device drifted: its reference anchor moved by up to {float(moved.max()):.4g}")

    def _anchors(self, clean: torch.Tensor) -> torch.Tensor:
        """Up to ``anchors`` clean probes of the first answer, evenly spread over the call."""
        good = clean.nonzero().squeeze(1)
        if not self.anchors or len(good) == 0:
            return good[:0]
        pick = torch.linspace(0, len(good) - 1, min(self.anchors, len(good))).round().long().unique()
        return good[pick]

    @staticmethod
    def _rereferenced(new: torch.Tensor, fresh: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        """``new`` minus the baseline shift between calls: the median over anchors of (again − first)."""
        if not len(fresh):
            return new
        shift = (fresh.double() - original.double())
        shift = torch.where(torch.isfinite(shift), shift, torch.full_like(shift, float("nan")))
        offset = shift.nanmedian(0).values.nan_to_num(0.0)
        if not offset.any():
            return new
        return (new.double() - offset).to(new.dtype)

    # ------------------------------------------------------------------ retries
    def _measure_with_retries(self, params: dict[str, torch.Tensor], inputs: torch.Tensor, shared: bool) -> torch.Tensor:
        for attempt in range(self.retries + 1):
            try:
                out = self.inner.measure(params, inputs)
            except MeasurementError as e:
                kind = "timeouts" if isinstance(e, DeviceTimeoutError) else (
                    "disconnects" if isinstance(e, DeviceDisconnectedError) else "errors")
                self.events[kind] += 1
                if attempt == self.retries:
                    self.events["failed_calls"] += 1
                    log.warning("device failed %d time(s) in a row, giving up: %s", attempt + 1, e)
                    raise
                wait = backoff_delay(attempt, self.backoff, self.max_backoff)
                self.events["retries"] += 1
                log.info("device call failed (%s: %s); retry %d/%d in %.3g s", type(e).__name__, e, attempt + 1, self.retries, wait)
                if wait:
                    self.sleep(wait)
                continue
            self._first_previous = (self._last_answer, self._last_request)
            self._last_answer = out[-1].clone()
            self._last_request = self._requests({n: v[-1:] for n, v in params.items()}, inputs if shared else inputs[-1:], shared)[0]
            return out
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ checks
    def _normalised(self, params: Mapping[str, torch.Tensor], inputs: torch.Tensor):
        """``params[name]: [K, *shape]``; inputs shared ``[B, ...]`` or per probe ``[K, B, ...]``."""
        out = {}
        for name, value in params.items():
            value = torch.as_tensor(value)
            spec = self.parameter_specs.get(name)
            out[name] = value.unsqueeze(0) if spec is not None and tuple(value.shape) == spec.shape else value
        inputs = torch.as_tensor(inputs)
        shared = inputs.dim() == len(self.input_shape) + 1
        return out, inputs, shared

    def _requests(self, params: dict[str, torch.Tensor], inputs: torch.Tensor, shared: bool) -> torch.Tensor:
        """One flattened row per probe: its setting and its inputs."""
        k = next(iter(params.values())).shape[0] if params else (1 if shared else inputs.shape[0])
        x = inputs.reshape(1, -1).expand(k, -1) if shared else inputs.reshape(k, -1)
        return torch.cat([v.reshape(k, -1) for v in params.values()] + [x], 1).double()

    def _reference(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Median over probes and robust scale per element, when there are enough probes."""
        k = out.shape[0]
        if self.outlier_z is None or k < MIN_OUTLIER_PROBES:
            return None
        flat = out.reshape(k, -1).double()
        med = flat.nanmedian(0).values
        scale = 1.4826 * (flat - med).abs().nanmedian(0).values
        finite = scale[torch.isfinite(scale)]
        floor = finite.median() if finite.numel() else torch.tensor(0.0, dtype=torch.float64)
        atol = 16 * torch.finfo(out.dtype).eps * (1 + med.abs())
        return med, torch.maximum(scale.nan_to_num(0.0), floor) + atol

    def _suspicion(self, out: torch.Tensor, ref, requests, previous, count: bool = True) -> tuple[torch.Tensor, ...]:
        """Per probe: the largest suspicious deviation (0 if none), non-finite?, stuck? (``requests=None``: no stuck check)."""
        k = out.shape[0]
        flat = out.reshape(k, -1).double()
        hard = ~torch.isfinite(flat).all(1)
        safe = flat.nan_to_num(0.0, 0.0, 0.0)
        dev = torch.zeros(k, dtype=torch.float64)
        seen = {}
        if self.output_range is not None:
            lo, hi = self.output_range
            excess = torch.maximum(lo - safe, safe - hi).clamp_min(0).amax(1)
            seen["out_of_range"] = int(((excess > 0) & ~hard).sum())
            dev = torch.maximum(dev, excess)
        if ref is not None:
            med, scale = ref
            far = (safe - med).abs()
            outl = torch.where(far > self.outlier_z * scale, far, torch.zeros_like(far)).amax(1)
            seen["outliers"] = int(((outl > 0) & ~hard).sum())
            dev = torch.maximum(dev, outl)
        dev[hard] = 0
        stuck = torch.zeros(k, dtype=torch.bool) if requests is None else self._stuck(out, requests, previous) & ~hard
        seen["nonfinite"], seen["stuck"] = int(hard.sum()), int(stuck.sum())
        if count:
            for name, value in seen.items():
                self.events[name] += value
        return dev, hard, stuck

    def _stuck(self, out: torch.Tensor, requests: torch.Tensor, previous) -> torch.Tensor:
        k = out.shape[0]
        flags = torch.zeros(k, dtype=torch.bool)
        if not self.detect_stuck:
            return flags
        flat = out.reshape(k, -1)
        if k > 1:
            same_answer = (flat[1:] == flat[:-1]).all(1)
            same_request = (requests[1:] == requests[:-1]).all(1)
            flags[1:] = same_answer & ~same_request
        last_answer, last_request = previous
        if last_answer is not None and last_answer.numel() == flat[0].numel() and last_request.numel() == requests[0].numel():
            flags[0] = bool((flat[0] == last_answer.reshape(-1)).all()) and not bool((requests[0] == last_request).all())
        return flags

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        state = {**super().state_dict(), "events": dict(self.events),
                 "last_answer": self._last_answer, "last_request": self._last_request}
        if self._anchor is not None:
            state["drift_anchor"] = dict(self._anchor)
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.events = {name: int(state["events"].get(name, 0)) for name in EVENTS}
        self._last_answer, self._last_request = state["last_answer"], state["last_request"]
        anchor = state.get("drift_anchor")
        self._anchor = None if anchor is None else dict(anchor)

    def __repr__(self) -> str:
        return f"Resilient({self.inner!r}, retries={self.retries}, remeasure={self.remeasure})"
