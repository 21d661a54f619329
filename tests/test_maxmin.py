"""Progressive filling (simcore.maxmin.fill): closed forms, and the bottleneck condition on random flow sets.

The max-min fair allocation is the one in which every flow has a bottleneck:
a full link of its path on which no flow has a higher rate.  That condition
is checked independently of how the rates were computed (``bottlenecks``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from simcore.maxmin import bottlenecks, fill


@dataclass
class _Flow:
    fid: int
    links: tuple[int, ...]


def solve(paths: list[tuple[int, ...]], capacity: list[float]) -> list[float]:
    """Rates of flows on ``paths`` (link indices) over links of ``capacity``, from scratch."""
    flows = {fid: _Flow(fid, tuple(path)) for fid, path in enumerate(paths)}
    flows_on: list[dict] = [dict() for _ in capacity]
    for fid, flow in flows.items():
        for link in flow.links:
            flows_on[link][fid] = flow
    used = {link for path in paths for link in path}
    spare = {link: float(capacity[link]) for link in used}
    count = {link: len(flows_on[link]) for link in used}
    rates = {flow.fid: rate for flow, rate in fill(flows, flows_on, spare, count)}
    return [rates[fid] for fid in range(len(paths))]


def test_parking_lot_gives_every_flow_half_a_link():
    # One long flow over a chain of 5 links, one short flow on each: each link is shared by two.
    n = 5
    paths = [tuple(range(n))] + [(i,) for i in range(n)]
    assert solve(paths, [10.0] * n) == [5.0] * (n + 1)


def test_parking_lot_with_a_narrow_link_frees_bandwidth_for_the_short_flows_elsewhere():
    # Link 2 has 4: the long flow gets 2 there, so every other short flow gets 10 - 2 = 8.
    paths = [(0, 1, 2, 3)] + [(i,) for i in range(4)]
    assert solve(paths, [10.0, 10.0, 4.0, 10.0]) == [2.0, 8.0, 8.0, 2.0, 8.0]


@pytest.mark.parametrize("k", [1, 2, 3, 7])
def test_dumbbell_shares_the_middle_link_equally(k):
    # k flows, each over its own access link (100) and the shared middle link (link 0, 12).
    paths = [(1 + i, 0) for i in range(k)]
    assert solve(paths, [12.0] + [100.0] * k) == pytest.approx([12.0 / k] * k, rel=1e-15)


def test_dumbbell_with_a_slow_access_link_gives_the_rest_to_the_others():
    # Flow 0's access link carries only 1: the other two share 12 - 1 = 11.
    paths = [(1, 0), (2, 0), (3, 0)]
    assert solve(paths, [12.0, 1.0, 100.0, 100.0]) == [1.0, 5.5, 5.5]


def test_three_flows_on_a_small_tree_solved_by_hand():
    # Links: A (0) = 12 shared by all, B (1) = 2 for flow 0, C (2) = 6 for flow 1.
    # B fills first: flow 0 gets 2; A has 10 left for flows 1 and 2: 5 each (C's 6 is not reached).
    assert solve([(0, 1), (0, 2), (0,)], [12.0, 2.0, 6.0]) == [2.0, 5.0, 5.0]


def test_random_flow_sets_satisfy_the_bottleneck_condition():
    rng = np.random.default_rng(19)
    for case in range(2000):
        nlinks = int(rng.integers(1, 12))
        capacity = list(rng.choice([1.0, 2.5, 10.0, 12.5e9, 3.0e9], size=nlinks) * rng.uniform(0.5, 2.0, nlinks))
        nflows = int(rng.integers(1, 25))
        paths = [tuple(sorted(rng.choice(nlinks, size=int(rng.integers(1, min(nlinks, 4) + 1)), replace=False)
                              .tolist())) for _ in range(nflows)]
        rates = solve(paths, capacity)
        where = f"case {case}: paths {paths}, capacity {capacity}"
        assert all(r > 0 for r in rates), where
        for link in range(nlinks):
            load = sum(r for r, path in zip(rates, paths) if link in path)
            assert load <= capacity[link] * (1 + 1e-12), where
        found = bottlenecks(dict(enumerate(rates)), dict(enumerate(paths)), capacity)
        assert None not in found.values(), where


def test_the_bottleneck_check_finds_an_allocation_that_is_not_max_min():
    # Flow 1 could have more: link 1 is not full and link 0 has a faster flow.
    found = bottlenecks({0: 8.0, 1: 2.0}, {0: (0,), 1: (0, 1)}, [10.0, 5.0])
    assert found == {0: 0, 1: None}
