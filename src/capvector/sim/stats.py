"""Kept so `capvector.sim.stats` imports keep working; the intervals live in `capvector.stats` (no simulator needed)."""

from capvector.stats import newcombe_difference, wilson_interval

__all__ = ["newcombe_difference", "wilson_interval"]
