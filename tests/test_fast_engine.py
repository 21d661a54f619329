"""The engine's fast paths against the same interpreter with every fast path off.

The reference (``Simulator(..., fast_paths=REFERENCE)``) runs every
operation one event at a time and every message as a flow of its own; the
fast paths merge runs of computes and compute a collective whose messages
have their links to themselves in one pass, handing it back to the
message-by-message path when another message needs one of its links.
Both must give the same records: every time, byte count and energy within
1e-9 relative (the fast path adds the same floats in the same order, so in
practice they are equal), on hundreds of random small scenarios with shared
links, process groups, stragglers, non-blocking collectives and
point-to-point traffic, and on every shipped scenario.

The random scenarios come from a numpy Generator with a fixed seed: case i
is the same on every run.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simcore.calibration import Calibration
from simcore import collective_path
from simcore.engine import FAST_PATHS, REFERENCE, SimulationError, Simulator
from simcore.fastpath import VECTOR_MIN_MEMBERS
from layout_cases import random_layout_case
from topologies import LinkSpec, NodeSpec, fully_connected, hierarchical, ring, switch, torus, tree
from workloads.collectives import ALGORITHMS
from workloads.groups import ProcessGroups
from workloads.ops import Collective, Compute, Irecv, Isend, Recv, Send, Wait
from workloads.scenario import load_scenario
from workloads.stragglers import StragglerSpec

SCENARIOS = Path(__file__).resolve().parents[1] / "experiments" / "scenarios"
RTOL = 1e-9
# The fluid model's max-min rates equal the flow network's up to rounding (a few units in the last
# place, not bit for bit), and per-rank times under symmetric contention amplify rounding: on
# random case 15 below, moving every link's bandwidth by 1e-15 relative moves the reference
# engine's earliest end by 2.6e-4 relative.  Across the 200 ring cases the two engines differ by at
# most 1e-11 relative but on that case (2.3e-9, energies).
RTOL_FLUID = 1e-8
N_CASES = 300
N_RING_CASES = 200

FLOAT_COLUMNS = ("start_s", "end_s", "energy_j", "flops")


def ReferenceSimulator(topology, programs, **kwargs) -> Simulator:
    return Simulator(topology, programs, fast_paths=REFERENCE, **kwargs)


def assert_same_result(fast, ref, where: str, rtol: float = RTOL) -> None:
    a, b = fast.records, ref.records
    assert list(a.columns) == list(b.columns), where
    assert len(a) == len(b), f"{where}: {len(a)} records against {len(b)}"
    for column in a.columns:
        assert a[column].dtype == b[column].dtype, f"{where}: column {column} is {a[column].dtype}, not {b[column].dtype}"
        x, y = a[column].to_numpy(), b[column].to_numpy()
        if column in FLOAT_COLUMNS:
            scale = max(float(np.nanmax(np.abs(y))) if len(y) else 0.0, 1e-300)
            bad = ~np.isclose(x.astype(float), y.astype(float), rtol=rtol, atol=rtol * scale, equal_nan=True)
            assert not bad.any(), f"{where}: {column} differs, first at record {np.argmax(bad)}:\n" \
                                  f"{a[bad].head(3)}\nreference:\n{b[bad].head(3)}"
        else:
            assert (x == y).all(), f"{where}: column {column} differs"
    for key, value in ref.summary.items():
        if key in ("events", "wall_s", "simulated_ranks", "symmetry"):
            continue  # how the engine got there, not what it predicts
        got = fast.summary[key]
        if isinstance(value, float):
            assert got == pytest.approx(value, rel=rtol, abs=1e-300), f"{where}: summary {key}"
        else:
            assert got == value, f"{where}: summary {key}"
    for table in ("per_rank", "per_link", "per_node", "per_group"):
        pd.testing.assert_frame_equal(getattr(fast, table), getattr(ref, table), rtol=rtol, obj=f"{where}: {table}")


# -- random scenarios ------------------------------------------------------------------


def _topology(rng, n: int):
    bw = float(rng.choice([1e8, 1e9, 12.5e9]))
    lat = float(rng.choice([0.0, 1e-6, 5e-5]))
    kind = rng.choice(["ring", "switch", "tree", "fully_connected", "hierarchical", "torus"])
    if kind == "ring":
        return ring(n, link=LinkSpec(bw, latency_s=lat))
    if kind == "switch":
        return switch(n, link=LinkSpec(bw, latency_s=lat))
    if kind == "tree":
        # Slow uplinks: collectives across subtrees contend.
        return tree(n, arity=2, link=LinkSpec(bw, latency_s=lat), uplink=LinkSpec(bw / float(rng.choice([1, 4]))))
    if kind == "fully_connected":
        return fully_connected(n, link=LinkSpec(bw, latency_s=lat))
    if kind == "torus" and n in (4, 6, 8):
        return torus({4: (2, 2), 6: (2, 3), 8: (2, 4)}[n], link=LinkSpec(bw, latency_s=lat))
    if n % 2 == 0:
        return hierarchical([n // 2, 2], links=[LinkSpec(bw * 4, latency_s=lat), LinkSpec(bw, latency_s=lat * 2)])
    return switch(n, link=LinkSpec(bw, latency_s=lat))


def _families(rng, n: int) -> dict[str, tuple[tuple[int, ...], ...]]:
    ranks = list(range(n))
    families = {}
    for size in (2, n // 2):
        if size >= 2 and n % size == 0:
            families[f"blocks{size}"] = tuple(tuple(ranks[i:i + size]) for i in range(0, n, size))
    if n % 2 == 0:
        families["stride"] = tuple(tuple(ranks[i::n // 2]) for i in range(n // 2))
    families["reversed"] = (tuple(reversed(ranks)),)
    order = list(rng.permutation(n))
    families["shuffled"] = (tuple(int(r) for r in order),)
    return families


def _collective(rng, size: int, group: str, handle: str | None, topo_has_servers: bool, rank_index_matrix):
    op = str(rng.choice([o for o in ALGORITHMS if o != "barrier"] + ["barrier"]))
    algorithms = [a for a in ALGORITHMS[op] if a != "hierarchical" or (topo_has_servers and group == "")]
    algorithm = str(rng.choice(algorithms))
    nbytes = int(rng.choice([0, 1, 7, 1000, 65536, 1_000_003]))
    root = int(rng.integers(size))
    common = dict(algorithm=algorithm, group=group, blocking=handle is None, handle=handle)
    if op == "barrier":
        return lambda i: Collective("barrier", 0, **common)
    if op == "alltoallv":
        counts = rank_index_matrix(size)
        return lambda i: Collective("alltoallv", 0, send_nbytes=tuple(int(c) for c in counts[i]),
                                    recv_nbytes=tuple(int(c) for c in counts[:, i]), **common)
    return lambda i: Collective(op, nbytes, root=root if op in ("broadcast", "reduce", "scatter", "gather") else 0,
                                **common)


def random_case(seed: int):
    rng = np.random.default_rng(seed)
    n = int(rng.choice([2, 3, 4, 5, 6, 8]))
    topo = _topology(rng, n)
    families = _families(rng, n)
    groups = ProcessGroups(n, families)
    programs: list[list] = [[] for _ in range(n)]
    open_handles: list[list[str]] = [[] for _ in range(n)]
    has_servers = topo.groups() is not None and len(topo.groups()) > 1

    def matrix(size):
        return rng.choice([0, 3, 4096, 70000], size=(size, size))

    for phase in range(int(rng.integers(2, 9))):
        kind = rng.choice(["compute", "collective", "collective", "group_collective", "p2p", "ip2p", "wait"])
        if kind == "compute":
            same = rng.random() < 0.6
            flops = float(rng.choice([0.0, 1e6, 3e7]))
            for r in range(n):
                programs[r].append(Compute(flops if same else float(rng.choice([0.0, 1e6, 3e7]))))
        elif kind in ("collective", "group_collective"):
            name = "" if kind == "collective" else str(rng.choice(list(families)))
            family = ((tuple(range(n)),) if name == "" else families[name])
            handle = f"c{phase}" if rng.random() < 0.3 else None
            for members in family:
                make = _collective(rng, len(members), name, handle, has_servers, matrix)
                for i, r in enumerate(members):
                    programs[r].append(make(i))
                    if handle:
                        open_handles[r].append(handle)
            for r in range(n):  # ranks outside every group of the family
                if not any(r in m for m in family) and handle:
                    pass
        elif kind == "p2p":
            shift = int(rng.integers(1, n))
            nbytes = int(rng.choice([0, 100, 65536, 2_000_000]))
            for r in range(n):
                programs[r].append(Send((r + shift) % n, nbytes, tag=phase))
                programs[r].append(Recv((r - shift) % n, nbytes, tag=phase))
        elif kind == "ip2p":
            shift = int(rng.integers(1, n))
            nbytes = int(rng.choice([0, 100, 65536, 2_000_000]))
            for r in range(n):
                programs[r].append(Isend((r + shift) % n, nbytes, handle=f"s{phase}", tag=phase))
                programs[r].append(Irecv((r - shift) % n, nbytes, handle=f"r{phase}", tag=phase))
                open_handles[r] += [f"s{phase}", f"r{phase}"]
        else:
            for r in range(n):
                if open_handles[r]:
                    programs[r].append(Wait(tuple(open_handles[r])))
                    open_handles[r] = []
    for r in range(n):
        if open_handles[r] and rng.random() < 0.7:
            programs[r].append(Wait(tuple(open_handles[r])))
    stragglers = None
    if rng.random() < 0.3:
        stragglers = StragglerSpec(kind="lognormal", params={"mu": 0.0, "sigma": 0.3},
                                   scope=str(rng.choice(["operation", "node"])))
    calibration = None
    if rng.random() < 0.2:
        calibration = Calibration(reduce_s_per_byte=1e-10,
                                  collective_efficiency=(lambda op, nbytes: 0.8) if rng.random() < 0.5 else None,
                                  message_efficiency=(lambda s, d, nbytes: 0.5 + (s + d) % 3 / 4)
                                  if rng.random() < 0.5 else None)
    aligned = rng.random() < 0.1 and len({len(p) for p in programs}) == 1
    # Sends that return before their bytes arrive, drawn from a stream of their own
    # so that the cases above stay what they were.
    buffering = np.random.default_rng(20_000 + seed)
    if buffering.random() < 0.15:
        calibration = dataclasses.replace(calibration or Calibration(),
                                          eager_bytes=int(buffering.choice([0, 100, 70_000])),
                                          send_buffer_bytes=int(buffering.choice([0, 1000, 50_000])))
    # Links that are token buckets, drawn after the buffering (whose cases stay what they were).
    if buffering.random() < 0.1:
        calibration = dataclasses.replace(calibration or Calibration(),
                                          link_burst_bytes=int(buffering.choice([100, 5000, 70_000])))
    kwargs = dict(seed=seed, stragglers=stragglers, process_groups=groups, calibration=calibration, aligned=aligned)
    return topo, programs, kwargs


def _run(cls, topo, programs, kwargs):
    sim = cls(topo, programs, **kwargs)
    try:
        return sim, sim.run(), None
    except SimulationError as exc:
        return sim, exc.partial, exc


def test_random_scenarios_give_the_reference_records():
    fast_total = materialized_total = event_path = 0
    for case in range(N_CASES):
        topo, programs, kwargs = random_case(case)
        ref_sim, ref, ref_error = _run(ReferenceSimulator, topo, programs, kwargs)
        fast_sim, fast, fast_error = _run(Simulator, topo, programs, kwargs)
        where = f"random case {case} ({topo.name}, {topo.nranks} ranks)"
        assert type(fast_error) is type(ref_error), f"{where}: {fast_error!r} against {ref_error!r}"
        if ref_error is not None:
            assert str(fast_error) == str(ref_error), where
        assert_same_result(fast, ref, where)
        fast_total += fast_sim.counters()["fast_collectives"]
        materialized_total += fast_sim.counters()["materialized"]
        event_path += fast_sim.messages.count > 0
    # The cases exercise all three paths: whole collectives, collectives handed
    # back to the event path mid-way, and plain message-by-message runs.
    assert fast_total > 200, fast_total
    assert materialized_total > 20, materialized_total


def test_an_unknown_fast_path_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown fast path 'warp'; known: merged_computes, alone_collectives"):
        Simulator(ring(4), [[Compute(1.0)]] * 4, fast_paths=("warp",))


def random_ring_case(seed: int):
    """Ring all-reduces, reduce-scatters and all-gathers on several groups at once, on topologies where
    their messages share links, some interrupted by point-to-point traffic or started in the background."""
    rng = np.random.default_rng(10_000 + seed)
    n = int(rng.choice([4, 6, 8, 12, 16]))
    bw = float(rng.choice([1e8, 1e9, 12.5e9]))
    lat = float(rng.choice([0.0, 1e-6, 5e-5]))
    kind = str(rng.choice(["ring", "tree", "hierarchical", "switch"]))
    if kind == "ring":
        topo = ring(n, link=LinkSpec(bw, latency_s=lat), node=NodeSpec(flops_per_s=1e9))
    elif kind == "tree":
        topo = tree(n, arity=2, link=LinkSpec(bw, latency_s=lat), uplink=LinkSpec(bw / float(rng.choice([1, 4]))),
                    node=NodeSpec(flops_per_s=1e9))
    elif kind == "hierarchical":
        topo = hierarchical([n // 2, 2], links=[LinkSpec(bw * float(rng.choice([0.5, 4])), latency_s=lat),
                                                LinkSpec(bw, latency_s=lat * 2)], node=NodeSpec(flops_per_s=1e9))
    else:
        topo = switch(n, link=LinkSpec(bw, latency_s=lat), node=NodeSpec(flops_per_s=1e9))
    ranks = list(range(n))
    families = {"stride": tuple(tuple(ranks[i::n // 2]) for i in range(n // 2)),
                "halves": (tuple(ranks[: n // 2]), tuple(ranks[n // 2:])),
                "shuffled": (tuple(int(r) for r in rng.permutation(n)),),
                # All but the last rank, which sends point-to-point messages into their links.
                "most": (tuple(ranks[:-1]), (n - 1,))}
    groups = ProcessGroups(n, families)
    programs: list[list] = [[] for _ in range(n)]
    for phase in range(int(rng.integers(1, 5))):
        name = str(rng.choice(list(families)))
        background = rng.random() < 0.25
        # Members that reach the collective at different times (held until the last one arrives).
        stagger = rng.random() < 0.4
        for g, members in enumerate(families[name]):
            op = str(rng.choice(["allreduce", "reduce_scatter", "allgather"])) if rng.random() < 0.5 else "allreduce"
            nbytes = int(rng.choice([3, 1000, 65536, 1_000_003, 8_000_000]))
            for r in members:
                if stagger and len(members) > 1:
                    programs[r].append(Compute(float(rng.choice([0.0, 1e3, 1e5, 3e6]))))
                if len(members) == 1:
                    if name == "most":
                        peer = int(rng.integers(n - 1))
                        size = int(rng.choice([100, 2_000_000]))
                        programs[r] += [Compute(float(rng.choice([1e3, 1e5, 2e6]))), Send(peer, size, tag=phase)]
                        programs[peer].append(("recv", r, size, phase))
                    continue
                programs[r].append(Collective(op, nbytes, algorithm="ring", group=name, blocking=not background,
                                              handle=f"h{phase}" if background else None))
        if background:
            for r in range(n):
                if any(isinstance(o, Collective) and o.handle == f"h{phase}" for o in programs[r]):
                    programs[r].append(Wait((f"h{phase}",)))
    # Receives of the point-to-point messages come after the rank's collectives of that phase.
    programs = [[Recv(o[1], o[2], tag=o[3]) if isinstance(o, tuple) else o for o in p] for p in programs]
    calibration = None
    if rng.random() < 0.3:
        calibration = Calibration(reduce_s_per_byte=float(rng.choice([1e-10, 1e-12])),
                                  collective_efficiency=(lambda op, nbytes: 0.8) if rng.random() < 0.5 else None)
    stragglers = None
    if rng.random() < 0.3:
        stragglers = StragglerSpec(kind="lognormal", params={"mu": 0.0, "sigma": 0.3}, scope="operation")
    return topo, programs, dict(seed=seed, process_groups=groups, calibration=calibration, stragglers=stragglers)

# What shows that a fast path ran: the counter it raises (merged computes: fewer events).
RAN = {"alone_collectives": "fast_collectives", "fluid_rings": "fluid_batches", "held_rings": "held"}


@pytest.mark.parametrize("path", FAST_PATHS)
def test_each_fast_path_alone_gives_the_reference_records(path, monkeypatch):
    # Every strategy stands on its own: with only it switched on, the records are the reference's.
    monkeypatch.setattr(collective_path, "FLUID_MIN_LANES", 2)
    ran = 0
    makes = ((random_case, range(0, N_CASES, 5), RTOL), (random_ring_case, range(0, N_RING_CASES, 5), RTOL_FLUID))
    if path == "symmetric_ranks":
        makes = ((random_layout_case, range(0, 40, 4), RTOL),)
    for make, cases, rtol in makes:
        for case in cases:
            topo, programs, kwargs = make(case)
            _, ref, ref_error = _run(ReferenceSimulator, topo, programs, kwargs)
            sim, alone, error = _run(lambda *a, **k: Simulator(*a, fast_paths=(path,), **k), topo, programs, kwargs)
            where = f"{make.__name__} {case} with {path} alone"
            assert type(error) is type(ref_error), f"{where}: {error!r} against {ref_error!r}"
            assert_same_result(alone, ref, where, rtol)
            if path in RAN:
                ran += sim.counters()[RAN[path]]
            elif path == "symmetric_ranks":
                ran += alone.summary["simulated_ranks"] < topo.nranks
            else:
                ran += alone.summary["events"] < ref.summary["events"]
    assert ran > 0, ran  # (merged computes also run on every shipped transformer scenario, below)


def test_rings_sharing_links_give_the_reference_records(monkeypatch):
    # Every set of ring collectives that start together and share links runs as one fluid model here,
    # however small (the engine's threshold is for speed, not for what it computes).
    monkeypatch.setattr(collective_path, "FLUID_MIN_LANES", 2)
    batches = handed_back = held = held_handed_back = 0
    for case in range(N_RING_CASES):
        topo, programs, kwargs = random_ring_case(case)
        ref_sim, ref, ref_error = _run(ReferenceSimulator, topo, programs, kwargs)
        fast_sim, fast, fast_error = _run(Simulator, topo, programs, kwargs)
        where = f"ring case {case} ({topo.name}, {topo.nranks} ranks)"
        assert type(fast_error) is type(ref_error), f"{where}: {fast_error!r} against {ref_error!r}"
        assert_same_result(fast, ref, where, RTOL_FLUID)
        batches += fast_sim.counters()["fluid_batches"]
        handed_back += fast_sim.counters()["fluid_handed_back"]
        held += fast_sim.counters()["held"]
        held_handed_back += fast_sim.counters()["held_handed_back"]
    # All four ways: together as one fluid model, handed back mid-way, held for their last member,
    # and handed back while held (counts of this fixed set of cases: 84, 47, 313, 103).
    assert batches > 60, batches
    assert handed_back > 30, handed_back
    assert held > 200, held
    assert held_handed_back > 60, held_handed_back


def test_a_collective_interrupted_by_a_message_continues_as_the_reference():
    # Ranks 0-3 all-reduce on a ring while rank 4 sends to rank 0 over the
    # ring's link 4->0 in the middle of it: the all-reduce's messages on that
    # link start sharing it then.
    n = 5
    topo = ring(n, link=LinkSpec(1e9, latency_s=1e-6))
    groups = ProcessGroups(n, {"four": ((0, 1, 2, 3), (4,))})
    programs = [[Collective("allreduce", 4_000_000, algorithm="ring", group="four")] for _ in range(n)]
    programs[4] = [Compute(2.5e6), Send(0, 3_000_000)]
    programs[0].append(Recv(4, 3_000_000))
    topo = ring(n, link=LinkSpec(1e9, latency_s=1e-6), node=NodeSpec(flops_per_s=1e9))
    fast_sim = Simulator(topo, programs, process_groups=groups)
    fast = fast_sim.run()
    ref = ReferenceSimulator(topo, programs, process_groups=groups).run()
    assert fast_sim.counters()["fast_collectives"] == 1
    assert fast_sim.counters()["materialized"] == 1
    assert_same_result(fast, ref, "interrupted all-reduce")


@pytest.mark.parametrize("n", [VECTOR_MIN_MEMBERS, 64, 100])
@pytest.mark.parametrize("op", ["allreduce", "reduce_scatter", "allgather"])
def test_large_rings_in_numpy_give_the_reference_times(n, op):
    topo = ring(n, link=LinkSpec(12.5e9, latency_s=1e-6))
    programs = [[Compute(1e6 * (r % 3)), Collective(op, 10_000_019, algorithm="ring"),
                 Collective(op, 77, algorithm="ring")] for r in range(n)]
    for calibration in (None, Calibration(reduce_s_per_byte=3e-11, collective_efficiency=lambda op, b: 0.7)):
        programs_same = [[Collective(op, 10_000_019, algorithm="ring"), Collective(op, 77, algorithm="ring")]
                         for _ in range(n)]
        for progs in (programs, programs_same):
            fast_sim = Simulator(topo, progs, calibration=calibration)
            fast = fast_sim.run()
            ref = ReferenceSimulator(topo, progs, calibration=calibration).run()
            assert_same_result(fast, ref, f"ring {op} on {n}")
        # The first collective of programs_same starts on every rank at 0: numpy ran it.
        assert fast_sim.counters()["fast_collectives"] >= 1


@pytest.mark.parametrize("flops", [[1_000_000, 2_000_000], [1_000_000, 2.5e6], [10**30, 3]])
@pytest.mark.parametrize("communicate", [False, True])
def test_compute_records_are_typed_as_the_reference_types_them(flops, communicate):
    # Integer flops stay integers, mixed ones become floats, and one past int64
    # leaves pandas to infer the column: the fast engine's compute columns
    # must come out with the reference's dtypes in each case.
    topo = ring(4, node=NodeSpec(flops_per_s=1e12))
    programs = [[Compute(f, nbytes=1000 * r) for f in flops] for r in range(4)]
    if communicate:
        for program in programs:
            program.append(Collective("allreduce", 1_000_000))
    fast, ref = Simulator(topo, programs).run(), ReferenceSimulator(topo, programs).run()
    assert_same_result(fast, ref, f"computes of {flops} flops")
    if not communicate:  # (a collective's records carry 0.0 flops)
        assert str(fast.records["flops"].dtype) == {int: "int64", float: "float64"}.get(
            type(sum(flops)) if max(flops) < 2**63 else None, "object")


def test_fast_path_off_runs_every_message():
    topo = ring(8)
    programs = [[Collective("allreduce", 1_000_000)] for _ in range(8)]
    sim = Simulator(topo, programs, fast_paths=REFERENCE)
    result = sim.run()
    assert sim.counters()["fast_collectives"] == 0
    assert_same_result(result, ReferenceSimulator(topo, programs).run(), "fast path off")


@pytest.mark.parametrize("path", sorted(p.name for p in SCENARIOS.glob("*.yaml")))
def test_every_shipped_scenario_gives_the_reference_records(path):
    scenario = load_scenario(SCENARIOS / path)
    results = []
    for cls in (Simulator, ReferenceSimulator):
        sim = cls(scenario.topology, scenario.programs(), seed=scenario.seed, stragglers=scenario.stragglers,
                  count_idle_energy=scenario.energy.count_idle, name=scenario.name, process_groups=scenario.groups,
                  calibration=Calibration.from_profile(scenario.profile, scenario.nranks))
        results.append(sim.run())
    assert_same_result(results[0], results[1], path)
