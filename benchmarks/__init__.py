"""Measured comparisons, one module per question: ``python -m benchmarks.NAME [--quick] [--out F.json]``."""
