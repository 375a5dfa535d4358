"""Devices around a device: time domain, fault injection, resilience, command audit."""
