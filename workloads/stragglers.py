"""Straggler models: how much slower than nominal a rank computes.

A model draws a slowdown factor (1.0 = nominal speed) either once per rank
(``scope: node``, a persistently slow machine) or once per compute operation
(``scope: operation``, noise and hiccups).  Each rank has its own random
stream spawned from the scenario seed, so a rank's draws do not depend on how
many other ranks there are or in what order the simulator interleaves them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


from topologies.text import is_finite_number, short, short_name, short_names

# kind -> (parameter name -> default)
KINDS: dict[str, dict[str, float]] = {
    "none": {},
    "fixed": {"factor": 2.0},
    "lognormal": {"mu": 0.0, "sigma": 0.25},
    "shifted_exponential": {"shift": 1.0, "scale": 0.1},
    "pareto": {"alpha": 3.0, "scale": 1.0},
    "slow_with_probability": {"p": 0.05, "factor": 2.0},
}
SCOPES = ("operation", "node")


@dataclass(frozen=True)
class StragglerSpec:
    """``kind`` names the distribution of the slowdown factor:

    - ``none``: 1.
    - ``fixed``: ``factor`` (a rank that is always that much slower).
    - ``lognormal``: exp(N(``mu``, ``sigma``)); median exp(mu).
    - ``shifted_exponential``: ``shift`` + Exp(mean ``scale``).
    - ``pareto``: ``scale`` * Pareto(``alpha``), i.e. >= scale, heavy tail.
    - ``slow_with_probability``: ``factor`` with probability ``p``, else 1.

    ``ranks`` limits the model to some ranks (all when empty).
    """

    kind: str = "none"
    params: dict[str, float] = field(default_factory=dict)
    scope: str = "operation"
    ranks: tuple[int, ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"stragglers.kind: unknown {short(self.kind)}; expected one of {', '.join(KINDS)}")
        if self.scope not in SCOPES:
            raise ValueError(f"stragglers.scope: unknown {short(self.scope)}; expected one of {', '.join(SCOPES)}")
        unknown = sorted(set(self.params) - set(KINDS[self.kind]), key=str)
        if unknown:
            raise ValueError(
                f"stragglers: unknown parameter(s) {short_names(unknown)} for kind {short(self.kind)}; "
                f"allowed: {', '.join(KINDS[self.kind]) or 'none'}"
            )
        # + 0.0 makes -0.0 a plain 0.0 (numpy refuses a scale of -0.0).
        merged = {**KINDS[self.kind], **{k: float(v) + 0.0 for k, v in self.params.items()}}
        object.__setattr__(self, "params", merged)
        object.__setattr__(self, "ranks", tuple(int(r) for r in self.ranks))
        p = merged
        checks = {
            "factor": lambda v: v > 0,
            "sigma": lambda v: v >= 0,
            "shift": lambda v: v > 0,
            "scale": lambda v: v > 0,
            "alpha": lambda v: v > 0,
            "p": lambda v: 0 <= v <= 1,
        }
        for name, ok in checks.items():
            if name in p and not ok(p[name]):
                raise ValueError(f"stragglers.{name}: invalid value {short(p[name])} for kind {short(self.kind)}")

    @property
    def active(self) -> bool:
        return self.kind != "none"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, **self.params}
        if self.scope != "operation":
            out["scope"] = self.scope
        if self.ranks:
            out["ranks"] = list(self.ranks)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "StragglerSpec":
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ValueError(f"stragglers: expected a mapping, got {short(data)}")
        data = dict(data)
        kind = data.pop("kind", "none")
        scope = data.pop("scope", "operation")
        ranks = data.pop("ranks", ()) or ()
        if not isinstance(kind, str):
            raise ValueError(f"stragglers.kind must be a name, got {short(kind)}")
        if not isinstance(scope, str):
            raise ValueError(f"stragglers.scope must be a name, got {short(scope)}")
        if not isinstance(ranks, (list, tuple)) or not all(
            isinstance(r, int) and not isinstance(r, bool) for r in ranks
        ):
            raise ValueError(f"stragglers.ranks must be a list of ranks (integers), got {short(ranks)}")
        for name, value in data.items():
            if not isinstance(value, (int, float)) or not is_finite_number(value):
                raise ValueError(f"stragglers.{short_name(name)} must be a finite number, got {short(value)}")
        return cls(kind=kind, params=data, scope=scope, ranks=tuple(ranks))
