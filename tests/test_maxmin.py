"""Progressive filling (simcore.maxmin, compiled): closed forms, and the bottleneck condition on random flow sets.

The max-min fair allocation is the one in which every flow has a bottleneck:
a full link of its path on which no flow has a higher rate.  That condition
is checked independently of how the rates were computed (``bottlenecks``).
"""
from __future__ import annotations

import numpy as np
import pytest
import simpy

from simcore import network
from simcore.engine import Simulator
from simcore.flowtable import FlowTable, rates
from simcore.maxmin import RATE, attach, bottlenecks
from topologies import LinkSpec, NodeSpec, hierarchical
from workloads.ops import Compute, Irecv, Isend, Wait


def solve(paths: list[tuple[int, ...]], capacity: list[float]) -> list[float]:
    """Rates of flows on ``paths`` (link indices) over links of ``capacity``, from scratch."""
    return rates(paths, capacity)


def _table(paths, capacity, held=None) -> tuple[FlowTable, list[int]]:
    """A flow table with a flow on each of ``paths`` (its slot in the list), sending at ``held`` rates."""
    table = FlowTable(list(capacity), slots=4)
    slots = []
    for i, path in enumerate(paths):
        slot = table.take_slot(tuple(path))
        attach(slot, table.I, table.FL, table.E, table.LI, table.K)
        if held is not None:
            table.F[slot, RATE] = held[i]
        slots.append(slot)
    return table, slots


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


def _water_filling(paths, capacity) -> list[float]:
    """Progressive filling written plainly (the textbook loop, no heap, no lists per link): raise every
    unfixed flow by the least share of any link, fix the flows of the links that fill."""
    rate = [0.0] * len(paths)
    fixed = [False] * len(paths)
    spare = [float(c) for c in capacity]
    while not all(fixed):
        users = {}
        for fid, path in enumerate(paths):
            if not fixed[fid]:
                for link in path:
                    users.setdefault(link, []).append(fid)
        share, link = min((spare[link] / len(fids), link) for link, fids in users.items())
        # A flow listed on a link twice (a link twice in its path) counts twice there, and is fixed once.
        for fid in dict.fromkeys(users[link]):
            fixed[fid] = True
            rate[fid] = share
            for other in paths[fid]:
                spare[other] = max(spare[other] - share, 0.0)
    return rate


def test_the_compiled_filling_equals_the_textbook_loop_on_random_flow_sets():
    rng = np.random.default_rng(2019)
    for case in range(3000):
        nlinks = int(rng.integers(1, 20))
        capacity = list(rng.choice([1.0, 3.0, 10.0, 1.25e9, 5e9], size=nlinks) * rng.uniform(0.5, 2.0, nlinks))
        paths = _random_paths(rng, nlinks, int(rng.integers(1, 40)))
        assert solve(paths, capacity) == pytest.approx(_water_filling(paths, capacity), rel=1e-12, abs=0), case


def test_the_bottleneck_check_finds_an_allocation_that_is_not_max_min():
    # Flow 1 could have more: link 1 is not full and link 0 has a faster flow.
    found = bottlenecks({0: 8.0, 1: 2.0}, {0: (0,), 1: (0, 1)}, [10.0, 5.0])
    assert found == {0: 0, 1: None}


def _random_paths(rng, nlinks: int, nflows: int) -> list[tuple[int, ...]]:
    return [tuple(sorted(rng.choice(nlinks, size=int(rng.integers(1, min(nlinks, 4) + 1)), replace=False)
                         .tolist())) for _ in range(nflows)]


def test_a_change_re_solved_from_where_it_touches_gives_the_from_scratch_rates():
    # Start from the max-min rates of a flow set, add or remove one flow, re-solve from the flows on
    # its links outwards (resolve): every rate equals the from-scratch filling of the new set.
    rng = np.random.default_rng(1919)
    near = 0
    for case in range(3000):
        nlinks = int(rng.integers(2, 16))
        capacity = list(rng.choice([1.0, 2.5, 10.0, 40.0], size=nlinks) * rng.uniform(0.5, 2.0, nlinks))
        paths = _random_paths(rng, nlinks, int(rng.integers(2, 30)))
        before = solve(paths, capacity)
        if rng.random() < 0.5:
            gone = int(rng.integers(len(paths)))
            seed_links = paths[gone]
            paths, held = paths[:gone] + paths[gone + 1:], before[:gone] + before[gone + 1:]
        else:
            seed_links = _random_paths(rng, nlinks, 1)[0]
            paths, held = paths + [seed_links], before + [0.0]
        table, slots = _table(paths, capacity, held)
        seed = list(dict.fromkeys(s for link in seed_links for s in table.slots_on(link)))
        fixed = table.resolve_from(seed, 0.0, limit=len(paths))
        where = f"case {case}"
        assert fixed is not None, where
        near += len(fixed) < len(paths)
        got = dict(zip(slots, held))
        got.update(fixed)
        assert [got[s] for s in slots] == pytest.approx(solve(paths, capacity), rel=1e-12, abs=0), where
    # The change stayed near in many cases (else this test would only repeat the one above).
    assert near > 600, near


def test_a_re_solve_that_would_reach_past_its_limit_gives_up():
    # A chain: flow i on links i and i + 1, each bottlenecked where it meets flow i - 1 (rates 2, 3, 4, 5,
    # 6, 7).  A flow added on link 0 halves flow 0, and every other rate moves in turn (progressive
    # filling by hand: link 0 fills at 1, link 2 at 3.5, links 3 and 4 at 5.5, link 5 at 7.5).
    n = 6
    paths = [(i, i + 1) for i in range(n)]
    capacity = [2.0, 5.0, 7.0, 9.0, 11.0, 13.0, 100.0]
    before = solve(paths, capacity)
    assert before == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    table, slots = _table(paths + [(0,)], capacity, before + [0.0])
    seed = table.slots_on(0)
    assert table.resolve_from(seed, 0.0, limit=2) is None
    fixed = table.resolve_from(seed, 0.0, limit=n + 1)
    assert sorted((slots.index(s), rate) for s, rate in fixed) == [
        (0, 1.0), (1, 3.5), (2, 3.5), (3, 5.5), (4, 5.5), (5, 7.5), (6, 1.0)]


def _random_flows_on_a_tree(hosts: int, nflows: int, seed: int):
    """Random flows on an oversubscribed two-level tree, each host's sends at their start times."""
    rng = np.random.default_rng(seed)
    topology = hierarchical([hosts // 8, 8], node=NodeSpec(flops_per_s=1.0),
                            links=[LinkSpec(1e9, latency_s=0.0), LinkSpec(2e9, latency_s=1e-6)])
    programs = [[] for _ in range(hosts)]
    sends = [[] for _ in range(hosts)]
    for i in range(nflows):
        src, dst = (int(h) for h in rng.choice(hosts, size=2, replace=False))
        nbytes = int(2 ** rng.uniform(14, 24))
        programs[dst].append(Irecv(src, nbytes, f"r{i}", tag=i))
        sends[src].append((float(rng.uniform(0.0, 0.02)), i, dst, nbytes))
    for host in range(hosts):
        t = 0.0
        for start_s, i, dst, nbytes in sorted(sends[host]):
            programs[host].append(Compute(start_s - t))
            t = start_s
            programs[host].append(Isend(dst, nbytes, f"s{i}", tag=i))
        handles = tuple(op.handle for op in programs[host] if isinstance(op, (Isend, Irecv)))
        if handles:
            programs[host].append(Wait(handles))
    return topology, programs


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_network_re_solving_near_a_change_gives_the_times_of_whole_solves(seed, monkeypatch):
    topology, programs = _random_flows_on_a_tree(64, 400, seed)
    monkeypatch.setattr(network, "INCREMENTAL_MIN_FLOWS", 10**9)  # every connected set filled whole
    whole = Simulator(topology, programs).run()
    monkeypatch.setattr(network, "INCREMENTAL_MIN_FLOWS", 2)
    sim = Simulator(topology, programs)
    near = sim.run()
    assert sim.net.counts()["near_solved"] > 50
    for column in ("start_s", "end_s"):
        assert near.records[column].to_numpy() == pytest.approx(whole.records[column].to_numpy(), rel=1e-12)


def test_a_rate_that_falls_schedules_no_new_event():
    # 20 long flows start on one link 0.1 s apart: each start lowers every other flow's rate.  A flow's
    # pending event stays where it is (it fires early and goes on to the new end), so by 2 s there is
    # one event per flow and one for the first flow's change from alone to shared, not one per rate
    # change (20 * 21 / 2 of them).
    env = simpy.Environment()
    delivered = []
    net = network.FlowNetwork(env, [1e6], lambda message: delivered.append((message, env.now)))

    def start(i):
        yield env.timeout(0.1 * i)
        net.transfer((0,), 1e6, 0.0, 100_000_000, i)

    for i in range(20):
        env.process(start(i))
    env.run(until=2.0)
    assert net.counts()["armed"] == 21
    env.run()
    # SimPy events for the last bytes: the network's wake-ups, a few per flow, not one per rate change.
    assert net.counts()["wakes"] <= 3 * 20
    # Equal shares throughout: the flows end in the order they started, the last when all the bytes
    # have crossed the link (2e9 B at 1e6 B/s).
    assert [message for message, _ in delivered] == list(range(20))
    assert delivered[-1][1] == pytest.approx(2000.0, rel=1e-12)


def test_the_flow_table_grows_and_widens_with_flows_on_it():
    # 100 flows on links (0, 1) start first, then 100 on six links (0..5): the table grows past its first
    # slots and widens its rows for the longer routes while the first flows sit on their links.  All 200
    # share links 0 and 1 equally, so every one ends when all the bytes have crossed link 0.
    env = simpy.Environment()
    delivered = []
    net = network.FlowNetwork(env, [1e6] * 6, lambda message: delivered.append((message, env.now)))

    def start(i, links):
        yield env.timeout(0.0 if i < 100 else 1e-9)
        net.transfer(links, 1e6, 0.0, 1_000_000, i)

    for i in range(200):
        env.process(start(i, (0, 1) if i < 100 else (0, 1, 2, 3, 4, 5)))
    env.run()
    assert net.table.K == 6 and net.table.F.shape[0] >= 200
    assert sorted(message for message, _ in delivered) == list(range(200))
    # The first 100 send 1e6 / 100 B/s each for 1e-9 s (1e-5 B); then all 200 send 5e3 B/s until the first
    # 100 end, and the last 100 send their last 1e-5 B at 1e4 B/s each.
    first_s = 1e-9 + (1e6 - 1e-5) / 5e3
    for message, when in delivered:
        assert when == pytest.approx(first_s if message < 100 else first_s + 1e-9, rel=1e-12), message


@pytest.mark.parametrize("paths, capacity, message", [
    ([(0, 1)], [1.0], "path 0 must list distinct links of 0 to 0"),
    ([(0, 0)], [1.0], "path 0 must list distinct links"),
    ([()], [1.0], "path 0 must list distinct links"),
    ([(0,)], [-1.0], "link 0's capacity must be finite and > 0"),
    ([(0,)], [float("nan")], "link 0's capacity must be finite and > 0"),
])
def test_rates_refuses_paths_and_capacities_it_cannot_fill(paths, capacity, message):
    with pytest.raises(ValueError, match=message):
        rates(paths, capacity)


def test_a_link_listed_twice_in_a_path_weighs_twice():
    # Symmetric rank classes (simcore.symmetry) give a message its images' crossings of a link as repeats.
    rng = np.random.default_rng(77)
    for case in range(3000):
        nlinks = int(rng.integers(1, 15))
        capacity = list(rng.choice([1.0, 3.0, 10.0], size=nlinks) * rng.uniform(0.5, 2.0, nlinks))
        paths = [tuple(int(x) for x in rng.integers(0, nlinks, size=int(rng.integers(1, 6))))
                 for _ in range(int(rng.integers(1, 40)))]
        table = FlowTable(capacity)
        slots = []
        for path in paths:
            slot = table.take_slot(path)
            attach(slot, table.I, table.FL, table.E, table.LI, table.K)
            slots.append(slot)
        got = table.fill_from_scratch(slots)
        assert got == pytest.approx(_water_filling(paths, capacity), rel=1e-12), f"case {case}"
    # Closed form: one flow through a link twice and one through it once share it 2:1 at c/3 each.
    table = FlowTable([3.0])
    slots = []
    for path in ((0, 0), (0,)):
        slot = table.take_slot(path)
        attach(slot, table.I, table.FL, table.E, table.LI, table.K)
        slots.append(slot)
    assert table.fill_from_scratch(slots) == [1.0, 1.0]
