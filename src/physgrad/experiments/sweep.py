"""Independent runs as Ray tasks: methods × seeds × settings, each into its own folder, resumable.

::

    from physgrad.experiments.sweep import sweep

    results = sweep(["configs/pgt.json", {"method": "spsa", "epochs": 2}], "runs/study", seeds=[0, 1, 2])

Every (config, seed) is one Ray task that trains into ``OUT/<name>[-seed<S>]`` with the trainer's
own ``config.json``, ``metrics.jsonl`` and ``checkpoint.pt``. The runs share nothing, so the
sweep is a plain map over Ray tasks (Ray Tune's schedulers add nothing when every run goes to the
end; a search over settings that stops runs early is Tune's job). Resumable: run the same sweep
again and each run continues from its checkpoint (a finished run returns its last record without
training); a task whose worker dies is retried by Ray (``max_retries``) and resumes the same way.

Ray is imported only when :func:`sweep` runs (``pip install physgrad[ray]``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..errors import ConfigError


def train_config(config: Mapping[str, Any], folder: str) -> dict:
    """The default run of a sweep: ``physgrad.experiments.config.run`` of one config dict (resuming)."""
    import torch

    from .config import TrainConfig, run

    torch.set_num_threads(1)
    records = run(TrainConfig.from_dict(dict(config)), folder, progress=False)
    return records[-1] if records else {}


def _load(config: str | os.PathLike | Mapping[str, Any]) -> tuple[str | None, dict]:
    if isinstance(config, Mapping):
        return None, dict(config)
    path = Path(config)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: a config must be a JSON object")
    return path.stem, data


def plan(configs: Sequence[str | os.PathLike | Mapping[str, Any]], seeds: Sequence[int] | None = None) -> list[tuple[str, dict]]:
    """``[(folder name, config dict), ...]``: every config (× every seed), names unique."""
    out: list[tuple[str, dict]] = []
    for i, config in enumerate(configs):
        stem, data = _load(config)
        stem = stem or f"run{i}"
        for seed in (seeds if seeds else [None]):
            cfg = dict(data)
            name = stem
            if seed is not None:
                cfg["seed"] = int(seed)
                name = f"{stem}-seed{int(seed)}"
            out.append((name, cfg))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"two runs of the sweep would share a folder: {sorted(n for n in names if names.count(n) > 1)}")
    return out


def sweep(
    configs: Sequence[str | os.PathLike | Mapping[str, Any]],
    out_dir: str | os.PathLike,
    *,
    seeds: Sequence[int] | None = None,
    train: Callable[[Mapping[str, Any], str], dict] = train_config,
    address: str | None = None,
    cpus_per_run: float = 1.0,
    max_retries: int = 1,
    init_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, dict]:
    """Run every config (× seed) as a Ray task into ``out_dir/<name>``; ``{name: last record}``.

    ``train(config, folder)`` trains one run and returns its last record (default
    :func:`train_config`); it must resume from ``folder`` when a checkpoint is there. ``address``:
    the Ray cluster to join (``None``: the running one, or a new local one, shut down at the end).
    """
    runs = plan(configs, seeds)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        import ray
    except ImportError:
        raise ConfigError("sweeps need Ray: pip install 'physgrad[ray]'") from None
    started = False
    if not ray.is_initialized():
        options = {"include_dashboard": False, "log_to_driver": False}
        options.update(init_kwargs or {})
        ray.init(address=address, **options)
        started = True
    try:
        task = ray.remote(num_cpus=cpus_per_run, max_retries=max_retries)(train)
        refs = {name: task.remote(cfg, str(out / name)) for name, cfg in runs}
        return {name: ray.get(ref) for name, ref in refs.items()}
    finally:
        if started:
            ray.shutdown()


def _config_device(cfg):
    """The device of ``cfg`` (what ``build(cfg)`` puts in the model), built where it is called."""
    from .config import build_device, load_data

    return build_device(cfg, load_data(cfg))  # sized to the data, as build(cfg) does


def farm_for_config(cfg, devices: int, address: str | None = None, **options: Any):
    """A :class:`~physgrad.carriers.ray_farm.DeviceFarm` of ``devices`` copies of ``cfg`` 's device.

    Each actor builds the device ``build(cfg)`` builds (same class, size and seed), so the farm's
    devices and the model's stand-in are identical (``physgrad train --devices N``).
    """
    import functools

    from ..carriers.ray_farm import DeviceFarm

    return DeviceFarm(functools.partial(_config_device, cfg), devices, address=address, **options)


__all__ = ["farm_for_config", "plan", "sweep", "train_config"]
