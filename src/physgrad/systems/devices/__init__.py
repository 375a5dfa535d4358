"""Simulated devices. Each is a :class:`~physgrad.systems.base.PhysicalSystem`; none exposes gradients to methods."""
