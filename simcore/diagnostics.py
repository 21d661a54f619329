"""What the engine says when a scenario cannot run to the end: the errors, and the non-finite cases' causes."""
from __future__ import annotations

import math

import numpy as np

from simcore.result import RunResult
from topologies import Topology
from workloads.stragglers import StragglerSpec


class SimulationError(RuntimeError):
    """A scenario that cannot run to the end; ``partial`` holds what was computed."""

    def __init__(self, message: str, partial: RunResult | None = None):
        super().__init__(message)
        self.partial = partial


class DeadlockError(SimulationError):
    """Ranks wait for messages that never come."""


class NonFiniteResultError(SimulationError):
    """A time or an energy came out infinite or NaN: some value of the scenario
    (a latency, a bandwidth, a speed, a power) is too large or too small for
    float seconds and joules.  The message names the quantity and the values
    that likely caused it."""


# Topology values beyond these are no physical machine; the message about a
# non-finite result names them as the likely cause.
_HUGE = 1e100
_TINY = 1e-100


def non_finite_result(result: RunResult, topology: Topology, stragglers: StragglerSpec) -> str:
    """'' if every summary number is finite, else what is not and the likely cause."""
    bad = [f"{key}={value}" for key, value in result.summary.items()
           if isinstance(value, float) and not math.isfinite(value)]
    if not bad:
        return ""
    lines = [f"the result is not finite: {', '.join(bad)}"]
    records = result.records
    if len(records):
        finite = np.isfinite(records["end_s"].to_numpy(float)) & np.isfinite(records["energy_j"].to_numpy(float))
        if not finite.all():
            first = records[~finite].sort_values("start_s", kind="stable").iloc[0]
            lines.append(
                f"first operation with a non-finite end or energy: rank {int(first['rank'])} op "
                f"{int(first['op_index'])} ({first['kind']}), end_s={first['end_s']}, energy_j={first['energy_j']}"
            )
    causes = extreme_values(topology, stragglers)
    lines.append("likely cause: " + ("; ".join(causes) if causes else
                 "values that overflow when added up (times are float seconds, energies float joules)"))
    return "\n  ".join(lines)


def extreme_values(topo: Topology, stragglers: StragglerSpec) -> list[str]:
    """The topology's values that no physical machine has; each alone can
    overflow a time or an energy (1e308 s of latency, 1e-320 B/s)."""
    found = []

    def link(i):
        u, v = topo.links[i]
        return f"link {node_name(u)}->{node_name(v)}"

    for what, values, extreme in (
        ("latency_s", topo.link_latency_s, lambda x: x > _HUGE),
        ("bandwidth_bytes_per_s", topo.link_bandwidth_bytes_per_s, lambda x: x < _TINY),
        ("energy_per_byte_j", topo.link_energy_per_byte_j, lambda x: x > _HUGE),
    ):
        hits = [i for i, x in enumerate(values) if extreme(x)]
        if hits:
            more = f" (and {len(hits) - 1} more links)" if len(hits) > 1 else ""
            found.append(f"{link(hits[0])} {what}={values[hits[0]]:.6g}{more}")
    for what, values, extreme in (
        ("flops_per_s", topo.rank_flops_per_s, lambda x: x < _TINY),
        ("idle_power_w", topo.rank_idle_power_w, lambda x: x > _HUGE),
        ("busy_power_w", topo.rank_busy_power_w, lambda x: x > _HUGE),
    ):
        hits = [r for r, x in enumerate(values) if extreme(x)]
        if hits:
            more = f" (and {len(hits) - 1} more ranks)" if len(hits) > 1 else ""
            found.append(f"rank {hits[0]} (node {node_name(topo.ranks[hits[0]])}) {what}={values[hits[0]]:.6g}{more}")
    ranks = set(topo.ranks)
    for node, power in topo.graph.nodes(data="idle_power_w"):
        if node not in ranks and power is not None and power > _HUGE:
            found.append(f"node {node_name(node)} idle_power_w={power:.6g}")
            break
    if stragglers.active:
        found.append(f"the straggler model {stragglers.kind} {stragglers.params}, whose factors "
                     "multiply compute times")
    return found


def non_finite_compute(topology: Topology, rank: int, index: int, op, duration, peak, slowdown) -> str:
    return (f"rank {rank} op {index} (compute) would take {duration} s: {op.flops:.6g} flops at "
            f"{peak:.6g} flop/s (node {node_name(topology.ranks[rank])}) with slowdown "
            f"{slowdown:.6g}; a speed near 0 or a flop count or straggler factor near 1e308 "
            "overflows float seconds")


def node_name(node) -> str:
    text = str(node)
    return text if len(text) <= 40 else text[:37] + "..."
