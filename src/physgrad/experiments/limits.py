"""Upper and lower bounds of every config field: what this machine can do, and what makes sense.

:func:`check_limits` is called by :meth:`TrainConfig.validate` after the type checks; each error
is a :class:`~physgrad.errors.ConfigError` that names the field, the value and the allowed range,
so ``--lr -1`` says ``config key 'lr' must be > 0 and <= 10, got -1.0``. Fields another module adds
later and that are not listed here are left to that module's own checks.
"""

from __future__ import annotations

import math
import os

from ..errors import ConfigError

BIG = 10**7
SEED_MAX = 2**63 - 1  # torch.manual_seed takes 64-bit seeds; keep them signed-safe
MEMORY_FRACTION = 0.5  # the largest tensors of a run may use at most half of this machine's memory

# field: (low, high, low is exclusive)
LIMITS: dict[str, tuple[float, float, bool]] = {
    "train_samples": (1, BIG, False),
    "test_samples": (1, BIG, False),
    "epochs": (1, 100_000, False),
    "batch_size": (1, 1_000_000, False),
    "lr": (0.0, 10.0, True),
    "momentum": (0.0, 1.0, False),
    "seed": (0, SEED_MAX, False),
    "device_seed": (0, SEED_MAX, False),
    "num_pairs": (1, 100_000, False),
    "delta": (0.0, 1000.0, True),
    "r": (1, 1000, False),
    "dropout": (0.0, 1.0, False),
    "reservoir_inputs": (1, 1_000_000, False),
    "reservoir_size": (1, 1_000_000, False),
    "noise": (0.0, 1e6, False),
    "log_every": (0, 10**9, False),
    "checkpoint_every": (0, 10**9, False),
}
MAX_STRING = 4096


def machine_memory_bytes() -> int:
    """Physical memory of this machine (a generous 64 GiB if it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 64 * 2**30


def check_limits(cfg) -> None:
    """Refuse any field outside its bounds (see the module docstring); names the field."""
    for key, (low, high, exclusive) in LIMITS.items():
        value = getattr(cfg, key, None)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value) or value > high or value < low or (exclusive and value == low):
            lower = f"> {low}" if exclusive else f">= {low}"
            raise ConfigError(f"config key {key!r} must be {lower} and <= {high}, got {value!r}")
    for key, value in vars(cfg).items():
        if isinstance(value, str) and len(value) > MAX_STRING:
            raise ConfigError(f"config key {key!r} is a string of {len(value)} characters (at most {MAX_STRING})")
    inputs, size = getattr(cfg, "reservoir_inputs", 1), getattr(cfg, "reservoir_size", 1)
    pairs, batch = getattr(cfg, "num_pairs", 1), getattr(cfg, "batch_size", 1)
    if pairs is None:  # the scope's shipped default K
        from ..methods.defaults import scope_defaults

        pairs = scope_defaults(getattr(cfg, "scope", "global"))[0]
    if all(isinstance(v, int) for v in (inputs, size, pairs, batch)):
        need = 4 * (inputs * size + 2 * pairs * batch * (size + inputs))  # weights + one step's probe answers
        budget = MEMORY_FRACTION * machine_memory_bytes()
        if need > budget:
            raise ConfigError(
                f"config keys 'reservoir_inputs' × 'reservoir_size' and 'num_pairs' × 'batch_size' need about "
                f"{need / 2**30:.1f} GiB per step, more than half this machine's memory ({budget / 2**30:.1f} GiB); "
                f"make them smaller (reservoir_size={size}, num_pairs={pairs}, batch_size={batch})"
            )
