"""Process groups: declaration, validation, and collectives and messages on them in the simulator.

Every time here is a closed form with the same timing model as
``test_engine`` (a flow alone on its route takes alpha + n / bandwidth, where
alpha sums the route's link latencies; concurrent flows share each directed
link max-min fairly).  The two-level topology is ``hierarchical([4, 4])``:
GPU ``n{r}`` -- server switch ``sw0_{r // 4}`` (B_IN, A_IN) and server switch
-- top switch ``sw1_0`` (B_OUT, A_OUT), every link full duplex.
"""
from __future__ import annotations

import pytest

from executors import get_executor
from simcore.engine import DeadlockError, Simulator, simulate
from topologies import LinkSpec, NodeSpec, fully_connected, hierarchical, switch
from workloads.collectives import ALGORITHMS, group_server_groups, lower_in_group
from workloads.groups import Layout, ProcessGroups, groups_from_dict
from workloads.ops import Collective, Compute, Irecv, Isend, Recv, Send, Wait, op_to_dict, record_groups
from workloads.scenario import ScenarioError, scenario_from_dict
from workloads.validate import validate_programs

REL = 1e-9
MB = 1_000_000
N = 16 * MB  # divisible by every group size used here
B_IN, A_IN = 4e9, 1e-6
B_OUT, A_OUT = 2e9, 5e-6


def two_level(b_out=B_OUT, a_out=A_OUT, levels=(4, 4)):
    return hierarchical(list(levels), links=[LinkSpec(B_IN, latency_s=A_IN), LinkSpec(b_out, latency_s=a_out)])


def ring_allreduce_s(p, n, alpha, rate):
    """Thakur et al.'s ring all-reduce on a path of latency ``alpha`` where each flow gets ``rate``."""
    return 2 * (p - 1) * alpha + 2 * (p - 1) * (n / p) / rate


def ends(result, kind=None):
    recs = result.records
    if kind is not None:
        recs = recs[recs["kind"] == kind]
    return dict(zip(recs["rank"], recs["end_s"]))


def link_bytes(result):
    return {k: v for k, v in zip(result.per_link["link"], result.per_link["bytes"]) if v}


# ---------------------------------------------------------------------------
# Declaring groups


def test_explicit_single_list_is_one_group():
    pg = groups_from_dict({"leaders": [0, 4, 8, 12]}, 16)
    assert pg.family("leaders") == ((0, 4, 8, 12),)
    assert pg.members("leaders", 8) == (0, 4, 8, 12) and pg.index("leaders", 8) == 2
    assert pg.members("leaders", 1) is None
    assert pg.world_rank("leaders", 4, 3) == 12 and pg.group_id("leaders", 12) == 0
    assert pg.names == ("", "leaders")
    assert pg.members("", 5) == tuple(range(16)) and pg.index("", 5) == 5


def test_list_of_lists_keeps_each_groups_order():
    pg = groups_from_dict({"halves": [[3, 2, 1, 0], [4, 5, 6, 7]]}, 8)
    assert pg.family("halves") == ((3, 2, 1, 0), (4, 5, 6, 7))
    assert [pg.index("halves", r) for r in range(8)] == [3, 2, 1, 0, 0, 1, 2, 3]
    assert [pg.group_id("halves", r) for r in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert pg.world_rank("halves", 1, 0) == 3


def test_blocks_and_stride():
    pg = groups_from_dict({"pairs": {"blocks": 2}, "evens": {"stride": 2}, "all": {"blocks": 6}}, 6)
    assert pg.family("pairs") == ((0, 1), (2, 3), (4, 5))
    assert pg.family("evens") == ((0, 2, 4), (1, 3, 5))
    assert pg.family("all") == ((0, 1, 2, 3, 4, 5),)
    assert pg.explicit() == {"pairs": [[0, 1], [2, 3], [4, 5]], "evens": [[0, 2, 4], [1, 3, 5]],
                             "all": [[0, 1, 2, 3, 4, 5]]}
    # YAML may write an integral float.
    assert groups_from_dict({"pairs": {"blocks": 2.0}}, 4).family("pairs") == ((0, 1), (2, 3))


def test_layout_default_order_is_tp_dp_pp():
    pg = groups_from_dict({"layout": {"tp": 2, "pp": 2}}, 8)  # dp = 8 / (2 * 2) = 2
    assert pg.layout == Layout(tp=2, pp=2, dp=2)
    # rank = tp + 2 dp + 4 pp
    assert pg.family("tp") == ((0, 1), (2, 3), (4, 5), (6, 7))
    assert pg.family("dp") == ((0, 2), (1, 3), (4, 6), (5, 7))
    assert pg.family("pp") == ((0, 4), (1, 5), (2, 6), (3, 7))
    assert pg.family("ep") == ((0,), (2,), (1,), (3,), (4,), (6,), (5,), (7,))
    assert pg.names == ("", "tp", "pp", "dp", "ep")


def test_layout_in_another_order():
    pg = groups_from_dict({"layout": {"tp": 2, "pp": 2, "dp": 2, "order": "pp-tp-dp"}}, 8)
    # rank = pp + 2 tp + 4 dp
    assert pg.family("pp") == ((0, 1), (2, 3), (4, 5), (6, 7))
    assert pg.family("tp") == ((0, 2), (1, 3), (4, 6), (5, 7))
    assert pg.family("dp") == ((0, 4), (1, 5), (2, 6), (3, 7))
    assert pg.layout.coordinates(6) == {"pp": 0, "tp": 1, "dp": 1, "ep": 0}


def test_layout_16_ranks_tp_4_dp_4():
    pg = groups_from_dict({"layout": {"tp": 4, "dp": 4}}, 16)
    assert pg.family("tp") == ((0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11), (12, 13, 14, 15))
    assert pg.family("dp") == ((0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15))
    assert pg.family("pp") == tuple((r,) for r in range(16))


def test_ep_groups_are_runs_of_each_dp_group():
    pg = groups_from_dict({"layout": {"tp": 2, "ep": 2}}, 8)  # dp = 4
    assert pg.family("dp") == ((0, 2, 4, 6), (1, 3, 5, 7))
    assert pg.family("ep") == ((0, 2), (4, 6), (1, 3), (5, 7))
    assert [pg.layout.coordinates(r)["ep"] for r in range(8)] == [0, 0, 1, 1, 0, 0, 1, 1]
    assert [pg.index("ep", r) for r in range(8)] == [0, 0, 1, 1, 0, 0, 1, 1]
    assert pg.to_dict() == {"layout": {"tp": 2, "ep": 2}}
    assert pg.layout.to_dict() == {"tp": 2, "pp": 1, "dp": 4, "ep": 2}


@pytest.mark.parametrize("order", ["tp-dp-pp", "dp-tp-pp", "pp-dp-tp", "tp-pp-dp", "dp-pp-tp", "pp-tp-dp"])
def test_layout_coordinates_and_rank_of_round_trip(order):
    layout = Layout(tp=2, pp=3, ep=2, order=order).resolve(24)
    assert layout.dp == 4
    seen = set()
    for rank in range(24):
        coords = layout.coordinates(rank)
        assert layout.rank_of(coords) == rank
        assert 0 <= coords["tp"] < 2 and 0 <= coords["pp"] < 3 and 0 <= coords["dp"] < 4
        assert coords["ep"] == coords["dp"] % 2
        seen.add((coords["tp"], coords["dp"], coords["pp"]))
    assert len(seen) == 24
    innermost = order.split("-")[0]
    assert layout.coordinates(1)[innermost] == 1
    # Each group holds the ranks that differ only along its own coordinate, in coordinate order.
    for name in ("tp", "dp", "pp"):
        for members in layout.groups()[name]:
            assert [layout.coordinates(r)[name] for r in members] == list(range(getattr(layout, name)))


# ---------------------------------------------------------------------------
# Bad groups: one clear error, naming the group and the rank


@pytest.mark.parametrize("spec,nranks,pattern", [
    ({"g": [0, 9]}, 4, r"groups\.g: rank 9 is not a rank of the topology \(it has 4: 0\.\.3\)"),
    ({"g": [[0, 1], [2, 4]]}, 4, r"groups\.g\[1\]: rank 4 is not a rank of the topology"),
    ({"g": [0, 1, 1]}, 4, r"groups\.g: names rank 1 twice \(0, 1, 1\); a rank belongs to at most one group"),
    ({"g": [[0, 1], [1, 2]]}, 4, r"groups\.g: rank 1 is in groups 0 and 1; a rank belongs to at most one group"),
    ({"g": {"blocks": 3}}, 4, r"groups\.g\.blocks: 3 does not divide the topology's 4 ranks"),
    ({"g": {"stride": 8}}, 4, r"groups\.g\.stride: 8 does not divide the topology's 4 ranks"),
    ({"g": {"blocks": 0}}, 4, r"groups\.g\.blocks must be an integer >= 1, got 0"),
    ({"g": {"chunks": 2}}, 4, r"groups\.g: expected \{blocks: k\}, \{stride: k\}"),
    ({"g": []}, 4, r"groups\.g: expected"),
    ({"g": [[0], []]}, 4, r"groups\.g\[1\]: a group needs at least one rank"),
    ({"g": [0, True]}, 4, r"groups\.g: rank True is not a rank"),
    ({"layout": {"tp": 3}}, 4, r"groups\.layout: tp 3 x pp 1 does not divide into the topology's 4 ranks"),
    ({"layout": {"tp": 2, "dp": 4}}, 4, r"groups\.layout: tp 2 x pp 1 x dp 4 = 8 ranks, but the topology has 4"),
    ({"layout": {"tp": 1, "ep": 3}}, 4, r"groups\.layout: ep 3 must divide dp 4"),
    ({"layout": {"tp": 2, "order": "tp-pp"}}, 4, r"groups\.layout\.order: expected one of"),
    ({"layout": {"tp": 2, "cp": 2}}, 4, r"groups\.layout: unknown key\(s\) cp"),
    ({"layout": {"tp": 2}, "tp": [0, 1]}, 4, r"groups\.tp: defined twice \(the layout defines tp, pp, dp, ep\)"),
    ({"": [0, 1]}, 4, r"groups: group names must be non-empty text"),
])
def test_bad_group_declarations(spec, nranks, pattern):
    with pytest.raises(ValueError, match=pattern):
        groups_from_dict(spec, nranks)
    # Through a scenario: a ScenarioError that also names where it came from.
    data = {
        "topology": {"builder": "fully_connected", "n": nranks},
        "groups": spec,
        "workload": {"kind": "collective", "op": "allreduce", "nbytes": 8},
    }
    with pytest.raises(ScenarioError, match=r"^my\.yaml: " + pattern):
        scenario_from_dict(data, where="my.yaml")


def test_a_rank_in_two_groups_through_the_constructor():
    with pytest.raises(ValueError, match=r"groups\.g: rank 2 is twice in one group"):
        ProcessGroups(4, {"g": ((0, 2, 2),)})
    with pytest.raises(ValueError, match=r"groups\.g: rank 1 is in groups 0 and 1"):
        ProcessGroups(4, {"g": ((0, 1), (1, 2))})


PAIRS = {"g": [[0, 1]]}  # ranks 2 and 3 are in no group g


@pytest.mark.parametrize("programs,groups,pattern", [
    # An unknown name.
    ([[Collective("allreduce", 8, group="tp")]] * 4, PAIRS,
     r"rank 0 op 0 \(allreduce\): unknown group 'tp'; groups: g"),
    ([[Send(peer=1, nbytes=8, group="dp")], [Recv(peer=0, nbytes=8)], [], []], PAIRS,
     r"rank 0 op 0 \(send\): unknown group 'dp'"),
    # A rank in no group of the name it uses.
    ([[Collective("allreduce", 8, group="g")]] * 4, PAIRS, r"rank 2 op 0 \(allreduce\): rank 2 is in no group g"),
    # A root or a peer outside the group (group ranks, not world ranks).
    ([[Collective("broadcast", 8, root=2, group="g")]] * 2 + [[], []], PAIRS,
     r"rank 0 op 0 \(broadcast\): broadcast: root 2 out of range for 2 ranks \(on group g\)"),
    ([[Collective("scatter", 8, root=3, group="g")]] * 2 + [[], []], PAIRS,
     r"rank 0 op 0 \(scatter\): scatter: root 3 out of range for 2 ranks \(on group g\)"),
    ([[Send(peer=2, nbytes=8, group="g")], [], [], []], PAIRS,
     r"rank 0 op 0 \(send\): peer 2 is not a rank of group g \(there are 2\)"),
    ([[], [Irecv(peer=1, nbytes=8, handle="h", group="g"), Wait(("h",))], [], []], PAIRS,
     r"rank 1 op 0 \(irecv\): a rank cannot irecv to itself"),
    # Members issuing different collectives on their group.
    ([[Collective("allreduce", 8, group="g")], [], [], []], PAIRS,
     r"group g \[0, 1\]: rank 1 issues 0 collective\(s\) on it but rank 0 issues 1; every member must issue "
     r"the same collectives \(this would deadlock\)"),
    ([[Collective("allreduce", 8, group="g")], [Collective("allreduce", 16, group="g")], [], []], PAIRS,
     r"group g \[0, 1\]: collective #1 on it is allreduce \(ring\) of 8 B at rank 0 op 0 but allreduce \(ring\) "
     r"of 16 B at rank 1 op 0"),
    ([[Collective("allreduce", 8, group="g")], [Collective("broadcast", 8, group="g")], [], []], PAIRS,
     r"group g \[0, 1\]: collective #1 on it is allreduce \(ring\) of 8 B at rank 0 op 0 but broadcast "
     r"\(binomial\) root 0 of 8 B at rank 1 op 0"),
    ([[Collective("gather", 8, root=0, group="g")], [Collective("gather", 8, root=1, group="g")], [], []], PAIRS,
     r"group g \[0, 1\]: collective #1 on it is gather \(binomial\) root 0 of 8 B at rank 0 op 0 but gather "
     r"\(binomial\) root 1"),
    ([[Collective("alltoallv", send_nbytes=(1, 2), recv_nbytes=(1, 2), group="g")],
      [Collective("allreduce", 8, group="g")], [], []], PAIRS,
     r"group g \[0, 1\]: collective #1 on it is alltoallv \(pairwise\) at rank 0 op 0 but allreduce \(ring\) of 8 B "
     r"at rank 1 op 0"),
    # Alltoallv counts that do not match across ranks.
    ([[Collective("alltoallv", send_nbytes=(1, 2), recv_nbytes=(1, 5), group="g")],
      [Collective("alltoallv", send_nbytes=(3, 4), recv_nbytes=(2, 4), group="g")], [], []], PAIRS,
     r"group g \[0, 1\]: alltoallv #1 on it: rank 0 op 0 expects 5 B from rank 1 but rank 1 sends it 3 B"),
    ([[Collective("alltoallv", send_nbytes=(1, 2, 3), recv_nbytes=(1, 2, 3), group="g")]] * 2 + [[], []], PAIRS,
     r"rank 0 op 0 \(alltoallv\): alltoallv: send_nbytes and recv_nbytes need one count per rank of the group "
     r"\(2\), got 3 \(on group g\)"),
    # The world is checked the same way.
    ([[Collective("allreduce", 8)]] * 3 + [[]], None,
     r"the world: rank 3 issues 0 collective\(s\) on it but rank 0 issues 1"),
])
def test_bad_programs_on_groups_name_the_group_and_the_rank(programs, groups, pattern):
    pg = groups_from_dict(groups, 4)
    topo = fully_connected(4)
    with pytest.raises(ValueError, match=pattern):
        validate_programs(programs, 4, None, pg)
    with pytest.raises(ValueError, match=pattern):
        Simulator(topo, programs, process_groups=pg)
    # Through a scenario, the same message after the file's name.
    data = {
        "topology": {"builder": "fully_connected", "n": 4},
        "workload": {"kind": "programs", "ranks": [[op_to_dict(op) for op in p] for p in programs]},
    }
    if groups is not None:
        data["groups"] = groups
    with pytest.raises(ScenarioError, match=r"^bad\.yaml: " + pattern):
        scenario_from_dict(data, where="bad.yaml")


def test_members_need_not_agree_on_what_their_collective_ignores():
    # A root on an unrooted op, an inter_algorithm on a flat one: nothing runs differently.
    pg = groups_from_dict(PAIRS, 4)
    programs = [[Collective("allreduce", 8, root=1, inter_algorithm="binomial", group="g")],
                [Collective("allreduce", 8, group="g")], [], []]
    validate_programs(programs, 4, None, pg)
    assert simulate(fully_connected(4), programs, process_groups=pg).makespan_s > 0


def test_members_of_a_hierarchical_allreduce_must_agree_on_the_leaders_algorithm():
    pg = groups_from_dict(PAIRS, 4)
    programs = [[Collective("allreduce", 8, "hierarchical", inter_algorithm="binomial", group="g")],
                [Collective("allreduce", 8, "hierarchical", group="g")], [], []]
    with pytest.raises(ValueError, match=r"group g \[0, 1\]: collective #1 on it is allreduce \(hierarchical inter "
                                         r"binomial\) of 8 B at rank 0 op 0 but allreduce \(hierarchical inter ring\)"):
        Simulator(two_level(levels=(2, 2)), programs, process_groups=pg)


def test_a_deadlock_inside_a_group_collective_names_the_group():
    pg = groups_from_dict(PAIRS, 4)
    programs = [[Collective("allreduce", 8, group="g")],
                [Recv(peer=0, nbytes=8), Collective("allreduce", 8, group="g")], [], []]
    with pytest.raises(DeadlockError, match=r"rank 0 waits in op 0 \(allreduce\)") as info:
        simulate(fully_connected(4), programs, process_groups=pg)
    assert "collective #1 on group g" in str(info.value)


def test_the_groups_of_the_simulator_must_fit_the_topology():
    with pytest.raises(ValueError, match="declared over 8 ranks but the topology has 4"):
        Simulator(fully_connected(4), [[]] * 4, process_groups=groups_from_dict({"g": {"blocks": 2}}, 8))


# ---------------------------------------------------------------------------
# The closed form: 16 ranks, tp = 4 inside servers, dp = 4 across them


LAYOUT = {"layout": {"tp": 4, "dp": 4}}


def test_tp_groups_alone_each_run_their_ring_on_their_own_server():
    # A TP ring r -> r+1 goes GPU -> server switch -> GPU: latency 2 A_IN, and
    # every directed link carries one flow (the four servers are disjoint).
    pg = groups_from_dict(LAYOUT, 16)
    result = simulate(two_level(), [[Collective("allreduce", N, "ring", group="tp")]] * 16, process_groups=pg)
    expected = ring_allreduce_s(4, N, 2 * A_IN, B_IN)
    assert expected == pytest.approx(6 * 2 * A_IN + 1.5 * N / B_IN, rel=REL)
    assert ends(result) == pytest.approx({r: expected for r in range(16)}, rel=REL)
    assert list(result.records["group"]) == ["tp"] * 16
    # Nothing leaves a server.
    assert not any("sw1_0" in link for link in link_bytes(result))
    # One TP group alone takes exactly as long as the four together.
    alone = [[Collective("allreduce", N, "ring", group="tp")] if r < 4 else [] for r in range(16)]
    assert simulate(two_level(), alone, process_groups=pg).makespan_s == pytest.approx(expected, rel=REL)


def test_dp_groups_share_each_server_uplink_four_ways():
    # A DP ring r -> r+4 crosses GPU -> sw0 -> sw1 -> sw0 -> GPU (latency
    # 2 A_IN + 2 A_OUT).  Each server's uplink carries one flow of each of the
    # four DP groups, and so does each downlink: max-min gives each B_OUT / 4
    # (below the GPU links' B_IN), and the four rings stay in lockstep.
    pg = groups_from_dict(LAYOUT, 16)
    result = simulate(two_level(), [[Collective("allreduce", N, "ring", group="dp")]] * 16, process_groups=pg)
    expected = ring_allreduce_s(4, N, 2 * A_IN + 2 * A_OUT, B_OUT / 4)
    assert expected == pytest.approx(12 * (A_IN + A_OUT) + 6 * N / B_OUT, rel=REL)
    assert ends(result) == pytest.approx({r: expected for r in range(16)}, rel=REL)
    # Each uplink moved 4 groups x 2 (p-1)/p n.
    for s in range(4):
        assert link_bytes(result)[f"sw0_{s}->sw1_0"] == link_bytes(result)[f"sw1_0->sw0_{s}"] == 4 * 1.5 * N
    # One DP group alone has the uplinks to itself: min(B_OUT, B_IN) = B_OUT.
    alone = [[Collective("allreduce", N, "ring", group="dp")] if r % 4 == 0 else [] for r in range(16)]
    assert simulate(two_level(), alone, process_groups=pg).makespan_s == pytest.approx(
        ring_allreduce_s(4, N, 2 * A_IN + 2 * A_OUT, B_OUT), rel=REL)


def tp_and_dp_at_once():
    # The DP all-reduce runs on the rank's communication stream while the TP
    # all-reduce blocks the program, so both move bytes at the same time.
    return [[Collective("allreduce", N, "ring", group="dp", blocking=False, handle="dp"),
             Collective("allreduce", N, "ring", group="tp"),
             Wait(("dp",))] for _ in range(16)]


def test_tp_and_dp_at_once_share_the_gpu_links():
    # GPU r's uplink carries its TP flow (to r+1) and its DP flow (to r+4);
    # its downlink the TP flow from r-1 and the DP flow from r-4.  Progressive
    # filling: all rates rise together until the server uplinks fill at
    # B_OUT / 4 = 0.5 GB/s per DP flow; the TP flows then take the rest of the
    # GPU links, B_IN - B_OUT / 4 = 3.5 GB/s.  The TP all-reduce ends (about
    # 6.9 ms) inside the DP ring's first step (N/4 at 0.5 GB/s = 8 ms), so it
    # runs at 3.5 GB/s throughout, and the DP flows, held by the uplinks, never
    # notice it.
    pg = groups_from_dict(LAYOUT, 16)
    result = simulate(two_level(), tp_and_dp_at_once(), process_groups=pg)
    tp_rate = B_IN - B_OUT / 4
    tp_s = ring_allreduce_s(4, N, 2 * A_IN, tp_rate)
    dp_s = ring_allreduce_s(4, N, 2 * A_IN + 2 * A_OUT, B_OUT / 4)
    assert tp_s < (N / 4) / (B_OUT / 4)
    recs = result.records
    tp = recs[recs["group"] == "tp"]
    dp = recs[(recs["group"] == "dp") & (recs["kind"] == "allreduce")]
    assert list(tp["end_s"]) == pytest.approx([tp_s] * 16, rel=REL)
    assert list(dp["start_s"]) == [0.0] * 16
    assert list(dp["end_s"]) == pytest.approx([dp_s] * 16, rel=REL)
    wait = recs[recs["kind"] == "wait"]
    assert list(wait["group"]) == ["dp"] * 16  # a wait is counted against the group it waits for
    assert list(wait["start_s"]) == pytest.approx([tp_s] * 16, rel=REL)
    assert result.makespan_s == pytest.approx(dp_s, rel=REL)


def test_tp_and_dp_at_once_split_the_gpu_links_evenly_when_the_uplinks_are_wide():
    # Uplinks of 16 GB/s: four DP flows would get 4 GB/s each there, so the
    # GPU links (4 GB/s, one TP and one DP flow each) are the bottleneck and
    # every flow gets B_IN / 2.  With no latency on the uplinks both rings
    # have the same route latency, so they stay in lockstep: both take the
    # ring's time at B_IN / 2.
    pg = groups_from_dict(LAYOUT, 16)
    result = simulate(two_level(b_out=16e9, a_out=0.0), tp_and_dp_at_once(), process_groups=pg)
    both = ring_allreduce_s(4, N, 2 * A_IN, B_IN / 2)
    recs = result.records[result.records["kind"] == "allreduce"]
    assert list(recs["end_s"]) == pytest.approx([both] * 32, rel=REL)
    # Each alone would take it at B_IN: sharing costs exactly 6 (N/4) / B_IN more.
    alone = simulate(two_level(b_out=16e9, a_out=0.0), [[Collective("allreduce", N, "ring", group="tp")]] * 16,
                     process_groups=pg)
    assert both - alone.makespan_s == pytest.approx(6 * (N / 4) / B_IN, rel=REL)


# ---------------------------------------------------------------------------
# Concurrent groups


def test_groups_on_disjoint_links_do_not_slow_each_other():
    # Two groups in two servers: together exactly as long as each alone.
    topo = two_level(levels=(2, 4))
    pg = groups_from_dict({"a": [0, 1, 2], "b": [5, 6, 7]}, 8)
    a = Collective("allreduce", N // 4 * 3, "ring", group="a")
    b = Collective("allgather", N // 4 * 3, "ring", group="b")
    both = [[a]] * 3 + [[], [], [b], [b], [b]]
    a_only = [[a]] * 3 + [[]] * 5
    b_only = [[]] * 5 + [[b]] * 3
    together = ends(simulate(topo, both, process_groups=pg))
    assert together == ends(simulate(topo, a_only, process_groups=pg)) | ends(simulate(topo, b_only,
                                                                                      process_groups=pg))
    n = N // 4 * 3
    assert together[0] == pytest.approx(ring_allreduce_s(3, n, 2 * A_IN, B_IN), rel=REL)
    assert together[5] == pytest.approx(2 * 2 * A_IN + 2 * (n / 3) / B_IN, rel=REL)


def test_groups_sharing_an_uplink_slow_down_exactly():
    # Groups {0, 4} and {1, 5} both cross the uplinks of servers 0 and 1.
    # Alone, a 2-rank ring runs at B_OUT; together two flows share each uplink
    # direction, B_OUT / 2 each: the bandwidth term doubles, latency does not.
    topo = two_level(levels=(2, 4))
    pg = groups_from_dict({"x": [[0, 4], [1, 5]]}, 8)
    op = Collective("allreduce", N, "ring", group="x")
    both = simulate(topo, [[op], [op], [], [], [op], [op], [], []], process_groups=pg)
    alone = simulate(topo, [[op], [], [], [], [op], [], [], []], process_groups=pg)
    lat = 2 * A_IN + 2 * A_OUT
    assert alone.makespan_s == pytest.approx(ring_allreduce_s(2, N, lat, B_OUT), rel=REL)
    assert ends(both) == pytest.approx({r: ring_allreduce_s(2, N, lat, B_OUT / 2) for r in (0, 1, 4, 5)}, rel=REL)
    assert both.makespan_s - alone.makespan_s == pytest.approx(2 * (N / 2) / B_OUT, rel=REL)


# ---------------------------------------------------------------------------
# A group of one rank


def _every_collective(nbytes=1000):
    for op, algorithms in ALGORITHMS.items():
        for algorithm in algorithms:
            if op == "alltoallv":
                yield Collective(op, algorithm=algorithm, send_nbytes=(nbytes,), recv_nbytes=(nbytes,), group="one")
            elif algorithm == "hierarchical":
                for inter in ALGORITHMS["allreduce"][:-1]:
                    yield Collective(op, nbytes, algorithm, inter_algorithm=inter, group="one")
            else:
                yield Collective(op, nbytes, algorithm, group="one")
                yield Collective(op, nbytes, algorithm, group="one", blocking=False, handle=f"{op}/{algorithm}")


def test_a_group_of_one_rank_costs_nothing():
    pg = groups_from_dict({"one": {"blocks": 1}}, 4)
    program = list(_every_collective())
    program.append(Wait(tuple(op.handle for op in program if not op.blocking)))
    topo = two_level(levels=(1, 4))
    result = simulate(topo, [program] * 4, process_groups=pg)
    assert result.makespan_s == 0.0
    assert (result.records["end_s"] == 0.0).all()
    assert len(result.records) == 4 * len(program)
    assert set(result.records["group"]) == {"one"}
    assert not link_bytes(result)


# ---------------------------------------------------------------------------
# Group ranks


def test_a_reversed_group_broadcasts_from_its_first_member():
    # Group [3, 2, 1, 0]: group rank 0 is world rank 3.  Binomial broadcast on
    # 4: 0 -> 2, 0 -> 1, then 2 -> 3, in group ranks; world 3 -> 1, 3 -> 2, 1 -> 0.
    pg = groups_from_dict({"rev": [3, 2, 1, 0]}, 4)
    topo = fully_connected(4, link=LinkSpec(1e9, latency_s=1e-6))
    op = Collective("broadcast", MB, "binomial", root=0, group="rev")
    result = simulate(topo, [[op]] * 4, process_groups=pg)
    assert link_bytes(result) == {"n3->n1": MB, "n3->n2": MB, "n1->n0": MB}
    assert list(result.records["peer"]) == [0] * 4  # the root, as a group rank
    hop = 1e-6 + 1e-3
    assert ends(result) == pytest.approx({3: 2 * hop, 1: 2 * hop, 2: 2 * hop, 0: 2 * hop}, rel=REL)
    # A message's peer is a group rank too: group rank 0 is world 3.
    msgs = [[Recv(peer=0, nbytes=MB, group="rev")], [], [], [Send(peer=3, nbytes=MB, group="rev")]]
    result = simulate(topo, msgs, process_groups=pg)
    assert link_bytes(result) == {"n3->n0": MB}
    assert list(result.records["peer"]) == [0, 3]
    assert list(result.records["group"]) == ["rev", "rev"]


def test_a_groups_ring_follows_its_order():
    pg = groups_from_dict({"g": [0, 2, 1, 3]}, 4)
    topo = fully_connected(4, link=LinkSpec(1e9, latency_s=1e-6))
    result = simulate(topo, [[Collective("allreduce", 4 * MB, "ring", group="g")]] * 4, process_groups=pg)
    # 2 (p-1) blocks of n/p go to the next member: 6 MB on each ring link.
    assert link_bytes(result) == {"n0->n2": 6 * MB, "n2->n1": 6 * MB, "n1->n3": 6 * MB, "n3->n0": 6 * MB}
    assert result.makespan_s == pytest.approx(ring_allreduce_s(4, 4 * MB, 1e-6, 1e9), rel=REL)


def test_a_scatter_on_a_group_gives_each_member_its_block_by_group_rank():
    # Linear scatter from group root 1 (world 2) of group [1, 2, 3]: 3 MB cut
    # into 1 MB blocks; group ranks 2 and 0 are world 3 and 1.
    pg = groups_from_dict({"g": [1, 2, 3]}, 4)
    topo = fully_connected(4, link=LinkSpec(1e9, latency_s=1e-6))
    op = Collective("scatter", 3 * MB, "linear", root=1, group="g")
    result = simulate(topo, [[], [op], [op], [op]], process_groups=pg)
    assert link_bytes(result) == {"n2->n3": MB, "n2->n1": MB}
    assert ends(result) == pytest.approx({1: 1e-3 + 1e-6, 2: 1e-3 + 1e-6, 3: 1e-3 + 1e-6}, rel=REL)


# ---------------------------------------------------------------------------
# Hierarchical all-reduce on a group


def test_group_server_groups_intersects_the_servers_with_the_group():
    servers = ((0, 1, 2, 3), (4, 5, 6, 7))
    assert group_server_groups((1, 2, 5, 6), servers) == ((0, 1), (2, 3))
    assert group_server_groups((6, 5, 2, 1), servers) == ((2, 3), (0, 1))
    assert group_server_groups((0, 4), servers) == ((0,), (1,))
    assert group_server_groups((4, 5), servers) == ((0, 1),)
    assert group_server_groups((4, 5), None) is None


def test_hierarchical_allreduce_on_a_group_uses_its_part_of_each_server():
    # Group [1, 2, 5, 6] on 2 servers of 4: servers seen from the group are
    # {1, 2} and {5, 6}, leaders 1 and 5.  Binomial reduce to the leader
    # (one hop inside the server), ring all-reduce between the two leaders
    # across the top switch, binomial broadcast back.
    topo = two_level(levels=(2, 4))
    pg = groups_from_dict({"g": [1, 2, 5, 6]}, 8)
    op = Collective("allreduce", N, "hierarchical", inter_algorithm="ring", group="g")
    programs = [[op] if r in (1, 2, 5, 6) else [] for r in range(8)]
    result = simulate(topo, programs, process_groups=pg)
    intra = 2 * A_IN + N / B_IN
    inter = ring_allreduce_s(2, N, 2 * A_IN + 2 * A_OUT, B_OUT)
    assert ends(result) == pytest.approx({r: intra + inter + intra for r in (1, 2, 5, 6)}, rel=REL)
    moved = link_bytes(result)
    # Only the leaders leave their server, N/2 twice each way.
    assert moved["sw0_0->sw1_0"] == moved["sw0_1->sw1_0"] == N
    assert moved["n2->sw0_0"] == moved["n6->sw0_1"] == N  # reduce to the leader
    assert moved["n1->sw0_0"] == moved["n5->sw0_1"] == N + N  # ring to the other leader, then broadcast
    assert not any(f"n{r}" in link for link in moved for r in (0, 3, 4, 7))
    # The lowering says the same, in world ranks.
    steps = list(lower_in_group(op, (1, 2, 5, 6), 0, topo.groups()))
    assert [tuple(t.peer for t in s.sends + s.recvs) for s in steps] == [(2,), (5, 5), (5, 5), (2,)]


# ---------------------------------------------------------------------------
# Isend and Irecv


def pair():
    return fully_connected(2, link=LinkSpec(1e9, latency_s=1e-6), node=NodeSpec(flops_per_s=1e9))


@pytest.mark.parametrize("compute_flops", [0, 400_000, 2_000_000])
def test_isend_overlaps_compute_and_the_wait_takes_what_is_left(compute_flops):
    transfer = 1e-6 + MB / 1e9
    compute = compute_flops / 1e9
    programs = [[Isend(peer=1, nbytes=MB, handle="s"), Compute(compute_flops), Wait(("s",))],
                [Recv(peer=0, nbytes=MB)]]
    result = simulate(pair(), programs)
    recs = result.records.set_index(["rank", "op_index"])
    assert recs.loc[(0, 0), "kind"] == "isend"
    assert (recs.loc[(0, 0), "start_s"], recs.loc[(0, 0), "end_s"]) == (0.0, pytest.approx(transfer, rel=REL))
    assert recs.loc[(0, 1), "start_s"] == 0.0  # the isend took no time on the program
    assert recs.loc[(0, 1), "end_s"] == pytest.approx(compute, rel=REL)
    wait = recs.loc[(0, 2)]
    assert wait["start_s"] == pytest.approx(compute, rel=REL)
    assert wait["end_s"] - wait["start_s"] == pytest.approx(max(0.0, transfer - compute), rel=REL, abs=1e-15)
    assert recs.loc[(1, 0), "end_s"] == pytest.approx(transfer, rel=REL)
    assert list(result.records.sort_values(["rank", "op_index"])["peer"]) == [1, -1, -1, 0]


def test_two_isends_to_different_peers_share_the_senders_link():
    # On a star the sender's one link carries both flows at B/2 each.
    topo = switch(3, link=LinkSpec(1e9, latency_s=1e-6))
    programs = [[Isend(peer=1, nbytes=MB, handle="a"), Isend(peer=2, nbytes=MB, handle="b"), Wait(("a", "b"))],
                [Recv(peer=0, nbytes=MB)], [Recv(peer=0, nbytes=MB)]]
    result = simulate(topo, programs)
    both = 2e-6 + 2 * MB / 1e9
    assert ends(result, "isend") == pytest.approx({0: both}, rel=REL)
    isends = result.records[result.records["kind"] == "isend"]
    assert list(isends["end_s"]) == pytest.approx([both, both], rel=REL)
    assert ends(result, "recv") == pytest.approx({1: both, 2: both}, rel=REL)
    assert ends(result, "wait") == pytest.approx({0: both}, rel=REL)
    # Blocking sends would go one after the other.
    blocking = [[Send(peer=1, nbytes=MB), Send(peer=2, nbytes=MB)]] + programs[1:]
    assert simulate(topo, blocking).makespan_s == pytest.approx(2 * (2e-6 + MB / 1e9), rel=REL)


def test_irecv_posted_before_the_send():
    # Rank 1 posts its irecv at 0 and computes 5 ms; rank 0 computes 1 ms, then sends.
    programs = [[Compute(1_000_000), Send(peer=1, nbytes=MB)],
                [Irecv(peer=0, nbytes=MB, handle="r"), Compute(5_000_000), Wait(("r",))]]
    result = simulate(pair(), programs)
    arrive = 1e-3 + 1e-6 + MB / 1e9
    irecv = result.records[result.records["kind"] == "irecv"].iloc[0]
    assert (irecv["start_s"], irecv["end_s"]) == (0.0, pytest.approx(arrive, rel=REL))
    wait = result.records[result.records["kind"] == "wait"].iloc[0]
    assert (wait["start_s"], wait["end_s"]) == (pytest.approx(5e-3, rel=REL), pytest.approx(5e-3, rel=REL))
    # With a short compute the wait takes the rest.
    programs[1][1] = Compute(100_000)
    result = simulate(pair(), programs)
    wait = result.records[result.records["kind"] == "wait"].iloc[0]
    assert (wait["start_s"], wait["end_s"]) == (pytest.approx(1e-4, rel=REL), pytest.approx(arrive, rel=REL))


def test_irecv_posted_after_the_message_arrived_completes_at_once():
    programs = [[Send(peer=1, nbytes=MB)], [Compute(5_000_000), Irecv(peer=0, nbytes=MB, handle="r"), Wait(("r",))]]
    result = simulate(pair(), programs)
    irecv = result.records[result.records["kind"] == "irecv"].iloc[0]
    assert irecv["start_s"] == irecv["end_s"] == pytest.approx(5e-3, rel=REL)
    assert ends(result, "send") == pytest.approx({0: 1e-6 + MB / 1e9}, rel=REL)


def test_a_program_ends_only_when_its_unwaited_messages_complete():
    # Like a non-blocking collective never waited for: the rank's end is the
    # isend's delivery, and every op keeps its record.
    result = simulate(pair(), [[Isend(peer=1, nbytes=MB, handle="s")], [Recv(peer=0, nbytes=MB)]])
    transfer = 1e-6 + MB / 1e9
    assert list(result.per_rank["end_s"]) == pytest.approx([transfer, transfer], rel=REL)
    assert list(result.per_rank["wait_s"]) == pytest.approx([transfer, 0.0], rel=REL)
    assert sorted(result.records["kind"]) == ["isend", "recv"]
    # An irecv nothing matches is a deadlock, not a silently missing record.
    with pytest.raises(DeadlockError, match=r"rank 1 waits in op 1 \(wait\) for a message of 8 B from rank 0"):
        simulate(pair(), [[], [Irecv(peer=0, nbytes=8, handle="r")]])


def test_isend_and_irecv_on_a_group_use_group_ranks():
    pg = groups_from_dict({"g": [[3, 1], [0, 2]]}, 4)
    topo = fully_connected(4, link=LinkSpec(1e9, latency_s=1e-6))
    programs = [[], [Irecv(peer=0, nbytes=MB, handle="r", group="g"), Wait(("r",))], [],
                [Isend(peer=1, nbytes=MB, handle="s", group="g"), Wait(("s",))]]
    result = simulate(topo, programs, process_groups=pg)
    assert link_bytes(result) == {"n3->n1": MB}
    recs = result.records.sort_values(["rank", "op_index"])
    assert list(recs["group"]) == ["g", "g", "g", "g"]
    assert list(recs["kind"]) == ["irecv", "wait", "isend", "wait"]
    assert list(recs["end_s"]) == pytest.approx([1e-6 + MB / 1e9] * 4, rel=REL)


def test_messages_on_different_groups_never_match():
    # Group a is [0, 1]: rank 0 sends to group rank 1 (world 1) on a, rank 1
    # receives from world rank 0 on the world, same tag: different communicators.
    pg = groups_from_dict({"a": [0, 1]}, 2)
    programs = [[Send(peer=1, nbytes=8, tag=5, group="a")], [Recv(peer=0, nbytes=8, tag=5)]]
    with pytest.raises(DeadlockError, match=r"rank 1 waits in op 0 \(recv\).*tag 5\b") as info:
        simulate(pair(), programs, process_groups=pg)
    assert "tag 5 on group a" in str(info.value)
    # The same messages on one group match.
    programs[1][0] = Recv(peer=0, nbytes=8, tag=5, group="a")
    assert simulate(pair(), programs, process_groups=pg).makespan_s == pytest.approx(1e-6 + 8e-9, rel=REL)


def test_collectives_on_different_groups_never_match():
    # Ranks 0 and 1 are both in the world and in group a = [1, 0]; an
    # all-reduce on each, in opposite orders on the two ranks, still pairs each
    # with its own (non-blocking, so neither waits for the other to start).
    pg = groups_from_dict({"a": [1, 0]}, 2)
    programs = [
        [Collective("allreduce", MB, group="a", blocking=False, handle="x"), Collective("allreduce", 2 * MB),
         Wait(("x",))],
        [Collective("allreduce", 2 * MB, blocking=False, handle="x"), Collective("allreduce", MB, group="a"),
         Wait(("x",))],
    ]
    result = simulate(pair(), programs, process_groups=pg)
    assert sorted(result.records["group"]) == ["", "", "", "a", "a", "a"]


# ---------------------------------------------------------------------------
# Records and groups


def test_record_groups_gives_a_wait_the_group_it_waits_for():
    program = [
        Compute(1.0),
        Collective("allreduce", 8, group="tp", blocking=False, handle="t"),
        Isend(peer=0, nbytes=8, handle="s", group="pp"),
        Wait(("t",)),
        Wait(("s",)),
        Collective("allreduce", 8, group="dp", blocking=False, handle="d"),
        Irecv(peer=1, nbytes=8, handle="r", group="dp"),
        Wait(("d", "r")),
        Collective("allreduce", 8, group="tp", blocking=False, handle="t2"),
        Wait(("t2", "d")),
        Send(peer=0, nbytes=8, group="pp"),
        Collective("barrier"),
    ]
    assert record_groups(program) == ["", "tp", "pp", "tp", "pp", "dp", "dp", "dp", "tp", "", "pp", ""]


def test_records_carry_the_group_in_the_simulator():
    pg = groups_from_dict({"pairs": {"blocks": 2}}, 4)
    program = [Compute(1000), Collective("allreduce", 8, group="pairs", blocking=False, handle="p"),
               Collective("allreduce", 8), Wait(("p",)), Collective("barrier", group="pairs")]
    result = simulate(fully_connected(4), [program] * 4, process_groups=pg)
    recs = result.records.sort_values(["rank", "op_index"])
    assert list(result.records.columns[:3]) == ["rank", "op_index", "group"]
    assert list(recs[recs["rank"] == 0]["group"]) == ["", "pairs", "", "pairs", "pairs"]
    assert list(recs[recs["rank"] == 0]["kind"]) == ["compute", "allreduce", "allreduce", "wait", "barrier"]


# ---------------------------------------------------------------------------
# The scenario


@pytest.mark.parametrize("groups,group", [
    ({"layout": {"tp": 2, "pp": 2}}, "tp"),
    ({"layout": {"tp": 2, "ep": 2, "order": "dp-tp-pp"}, "pairs": {"blocks": 2}}, "ep"),
    ({"evens": {"stride": 2}, "leaders": [0, 4], "halves": [[3, 2, 1, 0], [4, 5, 6, 7]]}, "halves"),
])
def test_scenario_round_trip_keeps_the_groups(groups, group):
    data = {
        "name": "g",
        "topology": {"builder": "hierarchical", "levels": [2, 4]},
        "groups": groups,
        "workload": {"kind": "collective", "op": "allreduce", "nbytes": 8000, "group": group},
    }
    scenario = scenario_from_dict(data)
    again = scenario_from_dict(scenario.to_dict())
    assert again.groups == scenario.groups
    assert again.groups.to_dict() == groups
    assert again.to_dict() == scenario.to_dict()
    assert again.programs() == scenario.programs()
    assert {op.group for program in again.programs() for op in program} == {group}


def test_scenario_without_groups_has_the_world_and_writes_none():
    data = {"topology": {"builder": "fully_connected", "n": 4},
            "workload": {"kind": "collective", "op": "allreduce", "nbytes": 8}}
    scenario = scenario_from_dict(data)
    assert scenario.groups == ProcessGroups(4) and scenario.groups.names == ("",)
    assert "groups" not in scenario.to_dict()


def test_a_scenario_runs_on_its_groups():
    data = {
        "topology": {"builder": "hierarchical", "levels": [4, 4],
                     "bandwidths_bytes_per_s": [B_IN, B_OUT], "latencies_s": [A_IN, A_OUT]},
        "groups": LAYOUT,
        "workload": {"kind": "collective", "op": "allreduce", "nbytes": N, "algorithm": "ring", "group": "dp"},
    }
    result = get_executor("sim").run(scenario_from_dict(data))
    assert result.makespan_s == pytest.approx(ring_allreduce_s(4, N, 2 * A_IN + 2 * A_OUT, B_OUT / 4), rel=REL)
    assert set(result.records["group"]) == {"dp"}


def test_equal_programs_are_checked_once_per_context_and_still_name_the_rank_that_fails():
    # Every rank runs the same list; only rank 1's place makes its send one to itself.
    from workloads.groups import ProcessGroups
    from workloads.ops import Send
    from workloads.validate import validate_programs

    program = [Send(1, 8, group="g")]
    groups = ProcessGroups(4, {"g": ((0, 1), (2, 3))})
    with pytest.raises(ValueError, match=r"rank 1 op 0 \(send\): a rank cannot send to itself"):
        validate_programs([program] * 4, 4, None, groups)
    # Collectives depend on the group's size only: equal programs on groups of one size pass once checked.
    from workloads.ops import Collective
    ring = [Collective("allreduce", 64, algorithm="ring", group="g")]
    validate_programs([ring] * 4, 4, None, groups)
    # Members that run different programs are still compared collective by collective.
    other = [Collective("allreduce", 128, algorithm="ring", group="g")]
    with pytest.raises(ValueError, match=r"group g \[2, 3\]: collective #1 on it is allreduce \(ring\) of 64 B"):
        validate_programs([ring, ring, ring, other], 4, None, groups)
