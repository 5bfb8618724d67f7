"""Baselines the benchmark runs beside the gateway, in the same run."""
