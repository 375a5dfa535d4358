"""A farm of devices on Ray: one gradient's probes measured on several devices at once.

:class:`DeviceFarm` is a carrier (``farm(system, probes) -> answers``, DESIGN.md "Carrying probes")
whose workers are Ray actors, each owning one device it builds itself (a simulator, a
``RemoteSystem`` to a device server, a user's driver)::

    from physgrad.carriers.ray_farm import DeviceFarm

    farm = DeviceFarm("physgrad.systems.devices.reservoir:RandomReservoir", num_devices=4,
                      device_kwargs={"input_size": 16, "size": 64})
    method.carrier = farm          # nothing else changes: backward, vjp, the trainer
    ...
    farm.cost                      # every query the farm's devices made, repeats included
    farm.close()

Ray is imported here only, and only when a farm is made (``pip install physgrad[ray]``).

How a call is carried
    The probes are cut into parts by ``probes.shard`` (a ± pair of one direction, the phases of one
    relaxation, are never split), contiguous groups of parts go to the live devices in order, each
    device answers its parts one device call each, and ``probes.join`` puts the answers back in the
    order asked. Probes are drawn centrally by the method (``ask``); the farm only measures.

The same answer at any size
    ``grain=None`` (default): the probes are cut into as many parts as there are live devices (one
    device call per device: the most vectorised). The answers equal in-process answers bit for bit
    when the device's answer to a setting does not depend on what else is in its batch, which holds
    for physgrad's noiseless simulators (row-wise computations; ``tests/test_ray_farm.py`` checks
    it) but is not promised by every BLAS. ``grain=G``: the probes are always cut into ``G`` parts,
    whatever the number of devices, so every part is the same device call at every farm size: the
    answers are bit-identical for every ``N <= G`` on identical deterministic devices.
    Measurement noise: each device's own noise generator advances with what that device measured,
    so noisy answers depend on how the probes were spread. ``noise_seed=S`` (needs ``grain``) reseeds
    the device's noise generator before each part from ``(S, call number, part index)``: the noise
    of a part is then the same whichever device measures it, and noisy runs are bit-identical at
    every size too. Identical devices means identical construction (same class, arguments, seed).

Device identity and per-device state
    A farm is a pool of *interchangeable* devices. Identical simulated devices are the same device
    in every respect (same physics, same noise law), so they report the same
    :attr:`~physgrad.systems.base.PhysicalSystem.identity` and one piece of per-device state (an HGE
    phase calibration, keyed by identity) serves them all: giving them distinct identities would
    only force needless recalibrations, and would break the same-answer-at-any-size rule. Distinct
    physical devices (chips that differ) must report distinct identities (construct them with
    distinct ``name`` s, e.g. through ``per_device``); a farm of devices with different identities
    is refused unless ``heterogeneous=True`` (then per-device state of a method that keys it by the
    stand-in's identity would be applied to devices it was not measured on). So on a farm of mixed
    identities, probes that name the device they were asked for (``probes.identity``: HGE's
    waveform, model and calibration probes) are measured only on the farm's devices of that
    identity, and refused with a :class:`~physgrad.errors.ConfigError` when it has none: an HGE
    calibration keyed ``"chip1"`` is measured on chip1 and used for chip1's windows only. Energy
    phases of one sample stay on one device (``shard`` keeps them together). A resumed method
    brings its per-device state with it (``state_dict``), so a resumed run does not recalibrate.

Probes answered in process only
    Probes whose answers only make sense in this process (``probes.portable`` False: the
    backpropagation oracle's :class:`~physgrad.carriers.probes.Simulation`, whose answers carry
    autograd history) are refused with a :class:`~physgrad.errors.ConfigError` before anything
    is measured.

Cost: exact, repeats included
    Each device counts what it measured; each part's answer comes back with exactly what the
    device counted for it (:func:`counted`: the device's counters are zeroed for the part and
    restored to their sum afterwards, so no ``after - before`` rounding enters), and the farm
    credits the stand-in part by part, in the order asked, as an in-process device would have
    counted the same device calls. :attr:`DeviceFarm.last_cost` is what the last call's devices
    counted. A part is one device call: probes split along data points (HGE's windows, EqProp's
    samples) cost one query per part — the same samples and device seconds as one call, more
    queries (exactly what ``InProcess(max_parts=N)`` counts for the same split).
    Before a device starts a part it registers the part's dispatched cost with a small ledger
    actor; if the device's process dies mid-part (killed, crashed) the part's dispatched cost stays
    charged, and Ray re-measures the part on the restarted actor (``max_restarts``,
    ``max_task_retries``), which is counted again. After every call the farm adds what was spent to
    the counters of the ``system`` it was called with (the model's stand-in for the device), so
    ``method.last_cost``, ``Estimate`` costs and the trainer's query counts equal what the farm's
    devices counted, exactly. :attr:`DeviceFarm.cost` is the farm's running total.

Faults
    A device process that dies is restarted by Ray and its part retried there (Ray's own
    restarts/retries). A device whose part fails with a :class:`~physgrad.errors.MeasurementError`
    (or whose actor is dead for good) gets a strike; the part is measured again on the next live
    device (counted); after ``max_failures`` consecutive strikes (or at once, when dead for good)
    the device is retired with a warning and the farm goes on with the rest. With ``timeout``, a
    device that does not answer in time is retired the same way (a hung instrument). When no device is
    left, or a part fails everywhere it was tried, the call raises ``MeasurementError`` (the
    trainer skips the step, as for any failed measurement).
"""

from __future__ import annotations

import importlib
import logging
import os
import uuid
import warnings
from typing import Any, Callable, Mapping, Sequence

import torch

from ..cost import Cost
from ..errors import ConfigError, MeasurementError
from .probes import Probes, split_points

log = logging.getLogger(__name__)

#: Ray settings a farm starts Ray with (``ray start --system-config`` on a cluster): probes and answers
#: of a few MB travel inline with the call instead of through the object store (halves the per-call
#: overhead of a typical PGT gradient on this machine).
RAY_SYSTEM_CONFIG = {"max_direct_call_object_size": 8 * 2**20, "task_rpc_inlined_bytes_limit": 64 * 2**20}


# ----------------------------------------------------------------------------------- devices
def resolve_factory(spec: str | Callable[..., Any]) -> Callable[..., Any]:
    """A device factory from a callable or an importable ``"module:Class"`` / ``"module:function"``.

    (The device registry, ``physgrad.systems.registry.make_device``, takes built-in names as well;
    this is the farm's own minimal resolver.)
    """
    if callable(spec):
        return spec
    if not isinstance(spec, str) or ":" not in spec:
        raise ConfigError(f"a device is a callable or 'module:Class', got {spec!r}")
    module, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"cannot import the device module {module!r} (from {spec!r}): {e}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"module {module!r} has no {attr!r} (from {spec!r})") from None
    if not callable(obj):
        raise ConfigError(f"{spec!r} is not callable")
    return obj


def build_device(spec: str | Callable[..., Any], kwargs: Mapping[str, Any] | None = None) -> Any:
    """Build one device: ``resolve_factory(spec)(**kwargs)``."""
    return resolve_factory(spec)(**dict(kwargs or {}))


def dispatched_cost(system: Any, probes: Probes) -> Cost:
    """What answering ``probes`` on ``system`` is charged when the device dies before reporting.

    ``probes.count`` queries; samples from the batch of the probes' inputs (when they have one);
    device seconds from the device's declared ``seconds_per_query``.
    """
    count = int(probes.count)
    batch = 1
    inputs = getattr(probes, "inputs", None)
    shape = tuple(getattr(system, "input_shape", ()) or ())
    if isinstance(inputs, torch.Tensor) and inputs.dim() > len(shape):
        batch = int(inputs.shape[inputs.dim() - len(shape) - 1])
    return Cost(count, count * batch, count * float(getattr(system, "seconds_per_query", 0.0) or 0.0))


def _reseed(system: Any, seed: int) -> None:
    """Reseed the noise generator of ``system`` and of every device inside it."""
    depth, obj, seen = 0, system, set()
    while obj is not None and id(obj) not in seen:
        seen.add(id(obj))
        gen = getattr(obj, "generator", None)
        if isinstance(gen, torch.Generator):
            gen.manual_seed((seed + 7919 * depth) % (2**63))
        obj, depth = getattr(obj, "inner", None), depth + 1


def part_seed(noise_seed: int, call: int, index: int) -> int:
    """The noise seed of part ``index`` of call ``call`` (independent of which device measures it)."""
    return ((int(noise_seed) * 1_000_003 + int(call)) * 65_537 + int(index)) % (2**63)


def _credit(system: Any, cost: Cost) -> None:
    """Add ``cost`` to the counters of ``system`` (the caller's stand-in for the farm's devices)."""
    if system is None or not hasattr(system, "queries"):
        return
    system.queries += cost.queries
    system.samples += cost.samples
    system.device_seconds += cost.device_seconds


# ----------------------------------------------------------------------------------- actors
class _Worker:
    """The body of a device actor: builds its device, answers parts, reports what it counted."""

    def __init__(self, factory, kwargs, index: int, ledger: str, threads: int = 1) -> None:
        import ray

        torch.set_num_threads(max(1, int(threads)))
        self.index = index
        self.ledger = ray.get_actor(ledger)  # by name: a restarted actor finds it again
        self.system = build_device(factory, kwargs)

    def info(self) -> dict:
        return {"index": self.index, "identity": str(getattr(self.system, "identity", type(self.system).__name__)),
                "pid": os.getpid()}

    def cost(self) -> Cost:
        c = getattr(self.system, "cost", None)
        return c if isinstance(c, Cost) else Cost()

    def answer(self, call: int, parts: list[tuple[int, Probes]], noise_seed: int | None) -> dict:
        """Answer ``parts`` (``(index, probes)``) one device call each; errors come back as values.

        Each answer comes back with exactly what the device counted while answering it (see
        :func:`counted`), so the caller can credit its stand-in part by part, as an in-process
        device would have counted them.
        """
        import ray

        attempt = uuid.uuid4().hex
        expected = sum((dispatched_cost(self.system, p) for _, p in parts), Cost())
        ray.get(self.ledger.begin.remote(call, attempt, expected))
        answers: list[tuple[int, Any, str | None, Cost]] = []
        for index, part in parts:
            if noise_seed is not None:
                _reseed(self.system, part_seed(noise_seed, call, index))
            (answer, error), cost = counted(self.system, lambda: _answer_or_error(part, self.system))
            answers.append((index, answer, error, cost))
        return {"attempt": attempt, "answers": answers, "pid": os.getpid()}


def _answer_or_error(probes: Probes, system: Any) -> tuple[Any, str | None]:
    try:
        return probes.answer(system), None
    except MeasurementError as e:
        return None, f"{type(e).__name__}: {e}"


def counted(system: Any, fn: Callable[[], Any]) -> tuple[Any, Cost]:
    """``(fn(), what system counted during it)``, exactly.

    The device's counters are cumulative floats: ``after - before`` can differ from the increment
    the device added in the last bit. So the counters are zeroed for the call and set back to
    ``before + spent`` afterwards: ``spent`` is bit for bit what the device added (from zero), the
    number an in-process stand-in adds to its own counters for the same device call. A device
    without ``reset_counters`` falls back to the difference.
    """
    before = system.cost if isinstance(getattr(system, "cost", None), Cost) else None
    if before is None:
        return fn(), Cost()
    reset = getattr(system, "reset_counters", None)
    if callable(reset):
        reset()
    try:
        return fn(), (system.cost if callable(reset) else system.cost - before)
    finally:
        if callable(reset):
            spent = system.cost
            total = before + spent
            system.queries, system.samples, system.device_seconds = total.queries, total.samples, total.device_seconds


class _Ledger:
    """Dispatched costs of parts in flight: a part whose device died is charged as dispatched."""

    def __init__(self) -> None:
        self.pending: dict[str, tuple[int, Cost]] = {}

    def begin(self, call: int, attempt: str, cost: Cost) -> None:
        self.pending[attempt] = (call, cost)

    def in_flight(self) -> int:
        return len(self.pending)

    def settle(self, call: int, done: list[str]) -> Cost:
        """Close call ``call``: forget the attempts that reported; return the cost of those that died."""
        lost = Cost()
        for attempt in list(self.pending):
            c, cost = self.pending[attempt]
            if c != call:
                continue
            if attempt not in done:
                lost = lost + cost
            del self.pending[attempt]
        return lost


# ----------------------------------------------------------------------------------- the farm
class DeviceFarm:
    """A carrier whose devices are Ray actors (see the module docstring).

    Parameters
    ----------
    device_factory:
        A callable or ``"module:Class"`` that builds one device; each actor calls it itself.
    num_devices:
        How many devices (actors).
    device_kwargs:
        Keyword arguments of every device.
    per_device:
        ``per_device(i) -> dict`` of extra keyword arguments for device ``i`` (a device server's
        address, a chip's name); identical devices need none.
    address:
        Ray cluster to join (``"HOST:PORT"``, ``"auto"``); ``None``: the running Ray of this process,
        or a new local one. A Ray this farm started is shut down by :meth:`close`.
    grain, noise_seed:
        Fixed number of parts per call, and the per-part noise seed (see "The same answer at any size").
    max_restarts, max_task_retries:
        Ray's restarts of a dead device actor and retries of its part there.
    max_failures:
        Consecutive failed parts after which a device is retired.
    actor_options:
        Extra ``ray.remote`` options of every actor (e.g. ``{"resources": {"device": 1}}`` to put
        one actor on each machine that declares a device). Default ``num_cpus=0``: actors waiting
        on instruments do not reserve cores.
    threads:
        Torch threads inside each actor.
    heterogeneous:
        Accept devices with different identities.
    init_kwargs:
        Extra arguments of ``ray.init`` when the farm starts Ray.
    timeout:
        Seconds to wait for a device's answer to its parts (``None``: no limit); a device that
        does not answer in time is retired (its actor stopped) and its parts measured elsewhere.
    """

    def __init__(
        self,
        device_factory: str | Callable[..., Any],
        num_devices: int = 1,
        *,
        device_kwargs: Mapping[str, Any] | None = None,
        per_device: Callable[[int], Mapping[str, Any]] | None = None,
        address: str | None = None,
        grain: int | None = None,
        noise_seed: int | None = None,
        max_restarts: int = 2,
        max_task_retries: int = 2,
        max_failures: int = 3,
        actor_options: Mapping[str, Any] | None = None,
        threads: int = 1,
        heterogeneous: bool = False,
        init_kwargs: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> None:
        if int(num_devices) != num_devices or num_devices < 1:
            raise ConfigError(f"num_devices must be a whole number >= 1, got {num_devices!r}")
        if grain is not None and (int(grain) != grain or grain < 1):
            raise ConfigError(f"grain must be a whole number >= 1 or None, got {grain!r}")
        if noise_seed is not None and grain is None:
            raise ConfigError("noise_seed needs a fixed grain (the parts must not depend on the number of devices)")
        if timeout is not None and not timeout > 0:
            raise ConfigError(f"timeout must be > 0 seconds or None, got {timeout!r}")
        if max_failures < 1:
            raise ConfigError(f"max_failures must be >= 1, got {max_failures!r}")
        try:
            import ray
        except ImportError:
            raise ConfigError("the device farm needs Ray: pip install 'physgrad[ray]'") from None
        self._ray = ray
        self.num_devices = int(num_devices)
        self.grain = None if grain is None else int(grain)
        self.noise_seed = noise_seed
        self.max_failures = int(max_failures)
        self.timeout = None if timeout is None else float(timeout)
        self.calls = 0
        self.cost = Cost()
        self.last_cost = Cost()  # what the devices counted in the last call (part by part, in the order asked)
        self.lost_cost = Cost()  # part of ``cost``: charged for parts whose device died mid-part
        self.redispatched = 0
        self._started_ray = False
        if not ray.is_initialized():
            options = {"include_dashboard": False, "log_to_driver": False, "_system_config": dict(RAY_SYSTEM_CONFIG)}
            options.update(init_kwargs or {})
            ray.init(address=address, **options)
            self._started_ray = True
        factory = resolve_factory(device_factory) if not isinstance(device_factory, str) else device_factory
        if isinstance(factory, str):
            resolve_factory(factory)  # fail here, naming the problem, not in every actor
        opts = {"num_cpus": 0, "max_restarts": int(max_restarts), "max_task_retries": int(max_task_retries)}
        opts.update(actor_options or {})
        ledger = f"physgrad-farm-ledger-{uuid.uuid4().hex}"
        self._ledger = ray.remote(num_cpus=0)(_Ledger).options(name=ledger).remote()
        worker = ray.remote(_Worker)
        self._actors = []
        for i in range(self.num_devices):
            kwargs = dict(device_kwargs or {})
            kwargs.update(per_device(i) if per_device is not None else {})
            self._actors.append(worker.options(**opts).remote(factory, kwargs, i, ledger, threads))
        self._live = list(range(self.num_devices))
        self._active: int | None = None
        self._strikes = [0] * self.num_devices
        self.retired: list[int] = []
        try:
            infos = ray.get([a.info.remote() for a in self._actors])
        except Exception as e:
            self.close()
            raise ConfigError(f"the farm's devices could not be built: {e}") from None
        self.identities = [d["identity"] for d in infos]
        self.pids = [d["pid"] for d in infos]
        if len(set(self.identities)) > 1 and not heterogeneous:
            self.close()
            raise ConfigError(
                f"the farm's devices have different identities {sorted(set(self.identities))}: a farm is a pool of "
                "interchangeable devices; pass heterogeneous=True to accept them (see the module docstring)"
            )

    # ------------------------------------------------------------------ properties
    @property
    def live(self) -> list[int]:
        """Indices of the devices still in service."""
        return list(self._live)

    @property
    def active(self) -> int | None:
        """Measure on the first ``active`` live devices only (``None``: all); the others stay idle.

        Scales a farm down and up again without stopping actors (the scaling benchmark compares
        sizes on one farm, interleaved).
        """
        return self._active

    @active.setter
    def active(self, value: int | None) -> None:
        if value is not None and (int(value) != value or value < 1):
            raise ConfigError(f"active must be a whole number >= 1 or None, got {value!r}")
        self._active = None if value is None else int(value)

    def _serving(self) -> list[int]:
        return self._live if self._active is None else self._live[: self._active]

    @property
    def actors(self) -> list[Any]:
        """The Ray actor handles, by device index."""
        return list(self._actors)

    def device_costs(self) -> list[Cost]:
        """What each live device counted since it was (last) built."""
        return [self._ray.get(self._actors[i].cost.remote()) for i in self._live]

    def in_flight(self) -> int:
        """Parts registered with the ledger and not yet settled (for tests and monitors)."""
        return self._ray.get(self._ledger.in_flight.remote())

    # ------------------------------------------------------------------ carrying
    def __call__(self, system: Any, probes: Probes) -> Any:
        ray = self._ray
        if not getattr(probes, "portable", True):
            raise ConfigError(
                f"device farm: {type(probes).__name__} probes are answered in process only (their answers carry "
                "autograd history: the backpropagation oracle differentiates through the simulator here); carry them "
                "with the default InProcess carrier. Nothing was measured"
            )
        if not self._live:
            raise MeasurementError("device farm: every device has been retired; nothing can measure")
        self.calls += 1
        call = self.calls
        parts = probes.shard(self.grain or len(self._serving_for(probes)))
        results: list[Any] = [None] * len(parts)
        tried: dict[int, set[int]] = {i: set() for i in range(len(parts))}
        errors: dict[int, str] = {}
        counts: list[tuple[int, int, Cost]] = []  # (part, order of report, what its device counted)
        done, restarted = [], False
        queue = self._assign(list(range(len(parts))), self._serving_for(probes))
        try:
            while queue:
                refs = {}
                for dev, idx in queue.items():
                    for i in idx:
                        tried[i].add(dev)
                    refs[self._actors[dev].answer.remote(call, [(i, parts[i]) for i in idx], self.noise_seed)] = (dev, idx)
                again: list[int] = []
                for ref, (dev, idx) in refs.items():
                    try:
                        out = ray.get(ref, timeout=self.timeout)
                    except ray.exceptions.GetTimeoutError:
                        restarted = True  # the hung part is charged as dispatched (the ledger)
                        self._retire(dev, f"no answer within {self.timeout:g} s")
                        again.extend(idx)
                        continue
                    except ray.exceptions.RayActorError as e:
                        restarted = True
                        self._retire(dev, f"its actor died for good ({type(e).__name__})")
                        again.extend(idx)
                        continue
                    done.append(out["attempt"])
                    if out["pid"] != self.pids[dev]:  # Ray restarted the device: a part may have died in it
                        restarted = True
                        self.pids[dev] = out["pid"]
                    failed = False
                    for i, answer, err, cost in out["answers"]:
                        counts.append((i, len(counts), cost))
                        if err is None:
                            results[i] = answer
                        else:
                            failed = True
                            errors[i] = f"device {dev}: {err}"
                            again.append(i)
                    if failed:
                        self._strike(dev)
                    else:
                        self._strikes[dev] = 0
                queue = {}
                if again:
                    self.redispatched += len(again)
                    for i in sorted(again):
                        serving = self._serving_for(probes)
                        choices = [d for d in serving + self._live_for(probes) if d not in tried[i]]
                        if not choices:
                            why = errors.get(i, "its device was retired")
                            raise MeasurementError(
                                f"device farm: part {i} of {len(parts)} failed on every device it was tried on "
                                f"({sorted(tried[i])}): {why}"
                            )
                        queue.setdefault(choices[0], []).append(i)
        except BaseException:
            restarted = True
            raise
        finally:
            # Parts lost in a dead process imply a restarted (new pid) or dead actor; otherwise the
            # ledger only forgets this call's entries, without a round trip.
            settled = self._ledger.settle.remote(call, done)
            lost = ray.get(settled) if restarted else Cost()
            # credit part by part in the order asked (an in-process device counts its calls in that order)
            spent = Cost()
            for _, _, cost in sorted(counts, key=lambda c: (c[0], c[1])):
                spent = spent + cost
                _credit(system, cost)
            spent = spent + lost
            _credit(system, lost)
            self.lost_cost = self.lost_cost + lost
            self.last_cost = spent
            self.cost = self.cost + spent
        if len(parts) == 1:
            return results[0]
        return probes.join(results)

    def _live_for(self, probes: Any) -> list[int]:
        """Live devices that may answer ``probes``: those of the identity the probes name, if they name one."""
        want = getattr(probes, "identity", None)
        if want is None or len(set(self.identities)) == 1:
            return list(self._live)
        return [d for d in self._live if self.identities[d] == want]

    def _serving_for(self, probes: Any) -> list[int]:
        """The serving devices that may answer ``probes`` (per-device state stays with its identity)."""
        want = getattr(probes, "identity", None)
        if want is None or len(set(self.identities)) == 1:
            return self._serving()
        mine = [d for d in self._live if self.identities[d] == want]
        if not mine:
            raise ConfigError(
                f"device farm: these {type(probes).__name__} were asked for device {want!r} (state keyed by its "
                f"identity), and no live device of the farm has that identity ({sorted(set(self.identities))})"
            )
        return mine if self._active is None else mine[: self._active]

    def _assign(self, indices: list[int], live: list[int] | None = None) -> dict[int, list[int]]:
        """Contiguous groups of part indices for the (serving) devices, in order."""
        live = self._serving() if live is None else live
        out: dict[int, list[int]] = {}
        for dev, (a, b) in zip(live, split_points(len(indices), len(live))):
            if b > a:
                out[dev] = indices[a:b]
        return out

    def _strike(self, dev: int) -> None:
        self._strikes[dev] += 1
        if self._strikes[dev] >= self.max_failures:
            self._retire(dev, f"{self._strikes[dev]} failed measurements in a row")

    def retire(self, dev: int, why: str = "retired by the user") -> None:
        """Take device ``dev`` out of service (its actor is stopped); the farm goes on with the rest."""
        if dev not in range(self.num_devices):
            raise ConfigError(f"the farm has devices 0..{self.num_devices - 1}, not {dev!r}")
        self._retire(dev, why)

    def _retire(self, dev: int, why: str) -> None:
        if dev not in self._live:
            return
        self._live.remove(dev)
        self.retired.append(dev)
        message = f"device farm: device {dev} retired ({why}); {len(self._live)} device(s) left"
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        log.warning(message)
        try:
            self._ray.kill(self._actors[dev], no_restart=True)
        except Exception:  # already dead
            pass

    # ------------------------------------------------------------------ state, lifecycle
    def state_dict(self) -> dict:
        """What a resumed run needs for the same per-part noise seeds: the call counter."""
        return {"calls": self.calls, "cost": self.cost.as_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.calls = int(state["calls"])
        self.cost = Cost(**state["cost"])

    def close(self) -> None:
        """Stop the device actors (and Ray, when this farm started it)."""
        ray = self._ray
        for actor in getattr(self, "_actors", []):
            try:
                ray.kill(actor, no_restart=True)
            except Exception:
                pass
        if getattr(self, "_ledger", None) is not None:
            try:
                ray.kill(self._ledger, no_restart=True)
            except Exception:
                pass
        self._actors, self._live, self._ledger = [], [], None
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
            self._started_ray = False

    def __enter__(self) -> "DeviceFarm":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        extra = "" if self.grain is None else f", grain={self.grain}"
        return f"DeviceFarm({len(self._live)}/{self.num_devices} devices{extra})"


__all__ = ["RAY_SYSTEM_CONFIG", "DeviceFarm", "build_device", "counted", "dispatched_cost", "part_seed", "resolve_factory"]
