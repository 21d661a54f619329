"""Real runs on process groups: collectives, scatter/gather/alltoallv and isend/irecv, checked.

Four ranks with two families of groups: ``pairs`` ([0, 1] and [2, 3]) and
``rev`` (one group [3, 2, 1, 0], numbered backwards, so that a group rank is
never the world rank by accident), besides the world.  Every collective's
bytes are checked (``check=True``) against what the group's ranks must leave
behind, in native and algorithm mode; the records carry the group and have the
simulator's (rank, op_index, group) keys.  Scenarios are tiny (about 1 kB).
"""
from __future__ import annotations

import pytest

from executors import get_executor
from executors.real import RealOptions, aligned_problem, choose_timing
from executors.real.mpi import MPIExecutor
from executors.real.torchdist import TorchExecutor
from workloads.collectives import ALGORITHMS
from workloads.groups import groups_from_dict
from workloads.ops import Collective, Compute, Recv, Send, op_to_dict
from workloads.scenario import scenario_from_dict

needs_mpi = pytest.mark.skipif(not MPIExecutor.is_available(), reason=MPIExecutor.unavailable_reason() or "-")
needs_torch = pytest.mark.skipif(not TorchExecutor.is_available(), reason=TorchExecutor.unavailable_reason() or "-")

P = 4
GROUPS = {"pairs": [[0, 1], [2, 3]], "rev": [3, 2, 1, 0]}
# Two servers of two ranks: the hierarchical all-reduce runs on groups too
# (on rev, server [0, 1] is group ranks 2 and 3).
TOPOLOGY = {"builder": "hierarchical", "levels": [2, 2]}
CHECKED = dict(check=True, warmup=0, repeats=1, timeout_s=60.0)
KEYS = ["rank", "op_index", "group"]


def group_rank(name: str, rank: int) -> tuple[int, int]:
    """(group rank, group size) of world ``rank`` in its group of ``name``."""
    if name == "":
        return rank, P
    family = GROUPS[name] if isinstance(GROUPS[name][0], list) else [GROUPS[name]]
    members = next(m for m in family if rank in m)
    return members.index(rank), len(members)


def collective_entry(op: str, algorithm: str, nbytes: int, rank: int, p: int, root: int, group: str) -> dict:
    """One collective of group rank ``rank`` of ``p`` as a scenario entry; alltoallv gets uneven counts
    (some 0) of about ``nbytes`` / 4 per peer."""
    def count(src, dst):
        return 0 if (src + dst) % 3 == 0 else nbytes // 4 + 13 * src + 7 * dst

    entry = {"kind": op, "algorithm": algorithm, "group": group}
    if op == "alltoallv":
        entry["send_nbytes"] = [count(rank, j) for j in range(p)]
        entry["recv_nbytes"] = [count(j, rank) for j in range(p)]
    else:
        entry["nbytes"] = 0 if op == "barrier" else nbytes
    if op in ("broadcast", "reduce", "scatter", "gather"):
        entry["root"] = root
    return entry


def _scenario(ranks, name: str):
    return scenario_from_dict({"name": name, "topology": TOPOLOGY, "groups": GROUPS,
                               "workload": {"kind": "programs", "ranks": ranks}})


def group_collectives_scenario(mode: str, sizes=(1000, 1001)):
    """Every collective (every algorithm in algorithm mode) on pairs, rev and the world; roots the
    group's last rank, scatter and gather also root 1.  Every rank runs a collective at every index, on
    the same group as its group's members, so aligned timing is valid."""
    ranks = []
    for rank in range(P):
        program = []
        for name in ("pairs", "rev", ""):
            me, size = group_rank(name, rank)
            for op, algorithms in ALGORITHMS.items():
                names = algorithms if mode == "algorithm" else algorithms[:1]
                for algorithm in names:
                    roots = (size - 1, 1) if op in ("scatter", "gather") else (size - 1,)
                    for root in roots:
                        for nbytes in ((0,) if op == "barrier" else sizes):
                            program.append(collective_entry(op, algorithm, nbytes, me, size, root=root, group=name))
        ranks.append(program)
    return _scenario(ranks, f"group-collectives-{mode}")


def group_p2p_scenario():
    """isend/irecv/wait on groups (a pair exchange on pairs, a ring shift on rev), blocking
    send/recv on a group, and non-blocking collectives on groups waited for together with messages."""
    ranks = []
    for rank in range(P):
        pr, _ = group_rank("pairs", rank)
        rr, _ = group_rank("rev", rank)
        other = 1 - pr
        program = [
            {"kind": "compute", "flops": 1.0e6},
            {"kind": "irecv", "peer": other, "nbytes": 2000, "handle": "pr", "group": "pairs", "tag": 3},
            {"kind": "isend", "peer": other, "nbytes": 2000, "handle": "ps", "group": "pairs", "tag": 3},
            {"kind": "allreduce", "nbytes": 1001, "blocking": False, "handle": "ar", "group": "rev"},
            {"kind": "isend", "peer": (rr + 1) % P, "nbytes": 1500, "handle": "rs", "group": "rev"},
            {"kind": "irecv", "peer": (rr - 1) % P, "nbytes": 1500, "handle": "rr", "group": "rev"},
            {"kind": "compute", "flops": 1.0e6},
            {"kind": "wait", "handles": ["pr", "ps"]},
            # A checked collective while messages are in flight: their bytes must not land in its buffer.
            {"kind": "alltoallv", "group": "pairs", "send_nbytes": [100 + 10 * pr + j for j in range(2)],
             "recv_nbytes": [100 + 10 * j + pr for j in range(2)]},
            {"kind": "wait", "handles": ["rs", "ar", "rr"]},
            # Same tag, other group: never matched with the pairs' messages.
            ({"kind": "send", "peer": 1, "nbytes": 700, "group": "pairs", "tag": 3} if pr == 0 else
             {"kind": "recv", "peer": 0, "nbytes": 700, "group": "pairs", "tag": 3}),
            {"kind": "gather", "nbytes": 1001, "root": 2, "group": "rev", "blocking": False, "handle": "g"},
            {"kind": "isend", "peer": (rr + 2) % P, "nbytes": 0, "handle": "z", "group": "rev"},
            {"kind": "irecv", "peer": (rr + 2) % P, "nbytes": 0, "handle": "zr", "group": "rev"},
            # "z" and "zr" are never waited for: the program's end completes them.
            {"kind": "wait", "handles": ["g"]},
            {"kind": "scatter", "nbytes": 1001, "root": 1, "group": "pairs"},
        ]
        ranks.append(program)
    return _scenario(ranks, "group-p2p")


def assert_keys_match_simulation(result, scenario):
    sim = get_executor("sim").run(scenario).records
    real = result.records[result.records["repeat"] == 0]
    assert sorted(map(tuple, real[KEYS].values.tolist())) == sorted(map(tuple, sim[KEYS].values.tolist()))
    assert set(real["group"]) >= {"pairs", "rev"}
    # A record's peer is a group rank, as the simulator's is.
    columns = KEYS + ["kind", "peer", "nbytes"]
    assert sorted(map(tuple, real[columns].values.tolist())) == sorted(map(tuple, sim[columns].values.tolist()))


def check_p2p_records(result, offset: int = 0):
    """``group_p2p_scenario``'s records, its op 0 at op index ``offset``."""
    records = result.records[result.records["repeat"] == 0]
    for rank in range(P):
        mine = records[records["rank"] == rank].set_index("op_index")
        mine.index = mine.index - offset
        # An isend or irecv ends no later than the wait that completed it.
        for op_index, wait_index in ((1, 7), (2, 7), (4, 9), (5, 9)):
            assert mine.loc[op_index, "start_s"] <= mine.loc[op_index, "end_s"] <= mine.loc[wait_index, "end_s"]
        assert mine.loc[1, "group"] == "pairs" and mine.loc[4, "group"] == "rev"
        assert mine.loc[7, "group"] == "pairs" and mine.loc[9, "group"] == "rev"  # a wait's group is its ops' one
    assert (result.per_rank[["compute_s", "comm_s", "wait_s"]] >= 0).all().all()


# -- aligned timing with groups (no processes) ---------------------------------------------


def test_aligned_timing_knows_groups():
    groups = groups_from_dict(GROUPS, P)
    # Group ranks: on rev, world rank 3 is group rank 0 and world rank 0 group rank 3.
    matched = [[Recv(0, 8, group="rev")], [Recv(1, 8, group="rev")], [Send(2, 8, group="rev")],
               [Send(3, 8, group="rev")]]
    assert aligned_problem(matched, groups) is None
    wrong_group = [[Send(1, 8, group="pairs")], [Recv(0, 8)], [Compute(1.0)], [Compute(1.0)]]
    assert "not matched by rank 1 op 0" in aligned_problem(wrong_group, groups)
    # Every rank runs a collective at op 0, but rank 1's pair partner is on another group there.
    crossed = [[Collective("allreduce", 8, group="pairs")], [Collective("allreduce", 8, group="rev")],
               [Collective("allreduce", 8, group="pairs")], [Collective("allreduce", 8, group="pairs")]]
    assert "not matched by rank 1 op 0" in aligned_problem(crossed, groups)
    assert choose_timing(crossed, "auto", groups) == "free"
    scenario = group_p2p_scenario()
    assert "non-blocking" in aligned_problem(scenario.programs(), scenario.groups)
    scenario = group_collectives_scenario("native")
    assert aligned_problem(scenario.programs(), scenario.groups) is None


# -- MPI ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["native", "algorithm"])
@pytest.mark.mpi
@needs_mpi
def test_mpi_group_collectives_correct(mode):
    scenario = group_collectives_scenario(mode)
    result = MPIExecutor(RealOptions(mode=mode, **CHECKED)).run(scenario)
    assert result.summary["timing"] == "aligned"
    assert len(result.records) == sum(len(p) for p in scenario.programs())


@pytest.mark.parametrize("mode", ["native", "algorithm"])
@pytest.mark.mpi
@needs_mpi
def test_mpi_group_messages_and_keys_match_simulation(mode):
    scenario = group_p2p_scenario()
    result = MPIExecutor(RealOptions(mode=mode, **{**CHECKED, "repeats": 2})).run(scenario)
    assert result.summary["timing"] == "free"
    assert_keys_match_simulation(result, scenario)
    check_p2p_records(result)


# -- torch (gloo) ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["native", "algorithm"])
@pytest.mark.torch
@needs_torch
def test_torch_group_collectives_and_messages_correct(mode):
    # One launch per mode (torchrun's start-up is most of the time): the collectives, then the messages.
    collectives, messages = group_collectives_scenario(mode), group_p2p_scenario()
    ranks = [[*map(op_to_dict, a), *map(op_to_dict, b)]
             for a, b in zip(collectives.programs(), messages.programs())]
    scenario = _scenario(ranks, f"group-all-{mode}")
    result = TorchExecutor(RealOptions(mode=mode, **CHECKED)).run(scenario)
    assert_keys_match_simulation(result, scenario)
    check_p2p_records(result, offset=len(collectives.programs()[0]))
