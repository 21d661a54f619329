"""Straggler slowdowns as the engine draws them: one random stream per rank (the models: ``workloads.stragglers``).

Each rank has its own stream spawned from the scenario seed, so a rank's
draws do not depend on how many other ranks there are or in what order the
simulator interleaves them.
"""
from __future__ import annotations

import numpy as np

from workloads.stragglers import StragglerSpec


def rank_streams(seed: int, nranks: int) -> list[np.random.Generator]:
    """One independent generator per rank, spawned from the scenario seed."""
    root = np.random.SeedSequence(seed)
    return [np.random.default_rng(child) for child in root.spawn(nranks)]


class SlowdownSampler:
    """Draws slowdown factors for one rank from its own stream."""

    def __init__(self, spec: StragglerSpec, rank: int, rng: np.random.Generator):
        self.spec = spec
        self.rng = rng
        self.applies = spec.active and (not spec.ranks or rank in spec.ranks)
        self.node_factor = self._draw() if self.applies and spec.scope == "node" else 1.0

    def next(self) -> float:
        if not self.applies:
            return 1.0
        if self.spec.scope == "node":
            return self.node_factor
        return self._draw()

    def _draw(self) -> float:
        p, rng, kind = self.spec.params, self.rng, self.spec.kind
        if kind == "fixed":
            return p["factor"]
        if kind == "lognormal":
            return float(np.exp(rng.normal(p["mu"], p["sigma"])))
        if kind == "shifted_exponential":
            return p["shift"] + float(rng.exponential(p["scale"]))
        if kind == "pareto":
            return p["scale"] * (1.0 + float(rng.pareto(p["alpha"])))
        if kind == "slow_with_probability":
            return p["factor"] if rng.random() < p["p"] else 1.0
        return 1.0
