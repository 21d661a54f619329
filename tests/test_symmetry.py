"""Symmetric rank classes (simcore.symmetry): each class simulated once gives every record of the full run.

Random layouts on symmetric machines are run folded (the default fast
paths) and one event at a time, message by message (``REFERENCE``): every
record, table and summary figure agrees to 1e-9 relative.  Where symmetry is
broken (a straggler, an unlike node, an ECMP choice, a rooted collective on a
turned group) the run is not folded, says why, and is still the reference's.
"""
from __future__ import annotations

import networkx as nx
import pytest

from simcore import folded_path, symmetry
from simcore.engine import FAST_PATHS, REFERENCE, Simulator
from layout_cases import layout_groups, random_layout_case, spanning_layout_case
from test_fast_engine import assert_same_result
from topologies import LinkSpec, Topology, gpu_cluster, hierarchical, switch
from workloads.groups import ProcessGroups
from workloads.ops import Collective, Compute, Recv, Send, Wait
from workloads.scenario import ScenarioError, scenario_from_dict
from workloads.stragglers import StragglerSpec

RTOL = 1e-9
N_CASES = 40


def _run(topo, programs, kwargs, fast_paths):
    sim = Simulator(topo, programs, fast_paths=fast_paths, **kwargs)
    return sim, sim.run()


def test_folded_runs_give_every_record_of_the_reference():
    folded = whole = handed_back = 0
    for case in range(N_CASES):
        topo, programs, kwargs = random_layout_case(case)
        sim, fast = _run(topo, programs, kwargs, FAST_PATHS)
        whole += sim.counters()["folded_whole"]
        handed_back += sim.counters()["folded_handed_back"]
        _, ref = _run(topo, programs, kwargs, REFERENCE)
        where = f"layout case {case} ({topo.name}, {topo.nranks} ranks, folded to " \
                f"{fast.summary['simulated_ranks']}: {sim.fold_note or 'folded'})"
        assert_same_result(fast, ref, where, RTOL)
        folded += fast.summary["simulated_ranks"] < topo.nranks
    # Most of these machines are symmetric: the classes must have been used, not only fallen back from.
    assert folded >= N_CASES // 2, folded
    # Collectives computed whole (simcore.folded_path), and handed back where a message needed their links.
    assert whole > 0 and handed_back > 0, (whole, handed_back)


def test_groups_of_several_representatives_are_computed_whole_held_and_handed_back():
    # Data-parallel rings over several leaf switches fold to several representatives each; buckets run
    # back to back and pipeline messages cross the rings' links while they run.
    counts = dict.fromkeys(("folded_whole", "folded_held", "folded_handed_back"), 0)
    several = 0
    for case in range(60):
        topo, programs, kwargs = spanning_layout_case(case)
        sim, fast = _run(topo, programs, kwargs, FAST_PATHS)
        _, ref = _run(topo, programs, kwargs, REFERENCE)
        assert_same_result(fast, ref, f"spanning case {case} ({fast.summary['symmetry']})", RTOL)
        for name in counts:
            counts[name] += sim.counters()[name]
        several += sim.symmetry is not None and sim.symmetry.steps.get("dp", 1) > 1
    assert several >= 15, several
    assert all(counts.values()), counts


def test_a_ring_held_while_the_one_before_it_finishes_on_its_links(monkeypatch):
    # Oversubscribed uplinks: the message that crosses them is the slowest of each step, so the
    # representatives that do not wait on it start the next bucket while it still crosses: the next one
    # is held over the previous one's reservations (or its messages, where it was handed back).
    priors = []
    hold = folded_path.FoldedCollectives._hold

    def counting_hold(self, whole):
        held = hold(self, whole)
        if held:
            priors.append(len(whole.priors) + len(self.net.reserved_passes))
        return held

    monkeypatch.setattr(folded_path.FoldedCollectives, "_hold", counting_hold)
    pp, dp = 2, 8
    for fabric in ("rail_optimized", "fat_tree"):
        for message in (100, 3_000_000):
            topo = gpu_cluster(pp * dp, gpus_per_node=1, fabric=fabric, nics_per_leaf=4, oversubscription=8.0)
            groups = layout_groups(topo.nranks, 1, pp)
            handles = tuple(f"b{b}" for b in range(5))
            per_stage = []
            for s in range(pp):
                program = [Compute(1e6 * (s + 1))]
                program += [Collective("allreduce", 4_800_000, algorithm="ring", group="dp", blocking=False, handle=h)
                            for h in handles]
                program += [Send(1, message, group="pp")] if s == 0 else [Recv(0, message, group="pp")]
                program += [Wait(handles), Collective("allgather", 480_000, algorithm="ring", group="dp")]
                per_stage.append(program)
            programs = [list(per_stage[groups.layout.coordinates(r)["pp"]]) for r in range(topo.nranks)]
            sim, fast = _run(topo, programs, {"process_groups": groups}, FAST_PATHS)
            _, ref = _run(topo, programs, {"process_groups": groups}, REFERENCE)
            assert_same_result(fast, ref, f"{fabric}, a message of {message} B", RTOL)
            assert fast.summary["simulated_ranks"] == 8
    assert sum(priors) > 0, priors


def test_a_folded_run_simulates_one_rank_per_class_and_counts_every_message():
    topo = hierarchical([4, 4], links=[LinkSpec(4e10, latency_s=1e-6), LinkSpec(1e10, latency_s=3e-6)])
    groups = layout_groups(16, 4, 2)
    per_stage = [[Compute(1e6), Collective("allreduce", 1 << 20, algorithm="ring", group="tp"),
                  Send(1, 1000, group="pp"), Collective("allreduce", 1 << 16, algorithm="ring", group="dp")],
                 [Compute(1e6), Collective("allreduce", 1 << 20, algorithm="ring", group="tp"),
                  Recv(0, 1000, group="pp"), Collective("allreduce", 1 << 16, algorithm="ring", group="dp")]]
    programs = [list(per_stage[groups.layout.coordinates(r)["pp"]]) for r in range(16)]
    sim, result = _run(topo, programs, {"process_groups": groups}, FAST_PATHS)
    assert sim.fold_note == ""
    # tp 4 x dp 2 ranks per stage: one rank simulated per stage.
    assert result.summary["simulated_ranks"] == 2
    # Per rank: 2 x 3 ring steps on tp, 2 x 1 on dp, and a message from stage 0.
    assert result.summary["messages"] == 16 * (6 + 2) + 8
    _, ref = _run(topo, programs, {"process_groups": groups}, REFERENCE)
    assert_same_result(result, ref, "the hand-made layout", RTOL)


def _two_stage_case(**kwargs):
    topo = kwargs.pop("topology", None) or switch(8, link=LinkSpec(1e10, latency_s=1e-6))
    groups = layout_groups(8, 1, 2)  # dp 4: the one dimension to fold
    per_stage = [[Compute(1e6), Collective("allreduce", 1 << 20, algorithm="ring", group="dp"),
                  Send(1, 1000, group="pp")],
                 [Recv(0, 1000, group="pp"), Collective("allreduce", 1 << 20, algorithm="ring", group="dp")]]
    programs = [list(per_stage[groups.layout.coordinates(r)["pp"]]) for r in range(8)]
    return topo, programs, dict(process_groups=groups, **kwargs)


@pytest.mark.parametrize("breaker, reason", [
    ("straggler", "a straggler model applies"),
    ("slow node", "not a symmetry of the topology"),
    ("rooted", "does not turn with the group"),
    ("no layout", "no parallel layout"),
])
def test_broken_symmetry_falls_back_to_the_full_run_and_says_why(breaker, reason):
    topo, programs, kwargs = _two_stage_case()
    if breaker == "straggler":
        kwargs["stragglers"] = StragglerSpec(kind="lognormal", params={"mu": 0.0, "sigma": 0.3})
    elif breaker == "slow node":
        g = nx.Graph(topo.graph)
        g.nodes[topo.ranks[5]]["flops_per_s"] = topo.rank_flops_per_s[5] / 2
        topo = Topology(g, name="one slow node")
    elif breaker == "rooted":
        programs = [[Collective("broadcast", 1 << 16, algorithm="binomial", group="dp") if type(op) is Collective
                     else op for op in p] for p in programs]
    else:
        declared = kwargs["process_groups"]
        kwargs["process_groups"] = ProcessGroups(8, {name: declared.family(name) for name in declared.names if name})
    sim, result = _run(topo, programs, kwargs, FAST_PATHS)
    assert reason in sim.fold_note
    assert result.summary["simulated_ranks"] == 8
    _, ref = _run(topo, programs, kwargs, REFERENCE)
    assert_same_result(result, ref, breaker, RTOL)


def test_an_ecmp_route_breaks_symmetry():
    # Two spines: every route between leaves is one of two of equal cost, chosen by a hash.
    topo = gpu_cluster(4, gpus_per_node=2, fabric="fat_tree", nics_per_leaf=2, spines=2)
    _, programs, kwargs = _two_stage_case(topology=topo)
    sim, result = _run(topo, programs, kwargs, FAST_PATHS)
    assert "ECMP" in sim.fold_note or "not a symmetry" in sim.fold_note
    _, ref = _run(topo, programs, kwargs, REFERENCE)
    assert_same_result(result, ref, "two spines", RTOL)


@pytest.mark.parametrize("gpus", [64, 128])
def test_gpt3_steps_folded_equal_the_full_run(gpus):
    nodes = gpus // 8
    data = {"name": f"gpt3-{gpus}",
            "topology": {"builder": "gpu_cluster", "preset": "dgx_a100", "nodes": nodes},
            "workload": {"kind": "transformer", "model": "gpt3_175b", "micro_batch": 1, "recompute": "full",
                         "tp": 8, "pp": 8, "schedule": "1f1b", "global_batch": 2 * gpus // 8}}
    scenario = scenario_from_dict(data, max_memory_bytes=16 * 2**30)
    kwargs = {"process_groups": scenario.groups, "seed": scenario.seed}
    sim, fast = _run(scenario.topology, scenario.programs(), kwargs, FAST_PATHS)
    assert fast.summary["simulated_ranks"] == 8, sim.fold_note
    # The full run with every other fast path: the reference itself takes minutes here.
    full_paths = tuple(p for p in FAST_PATHS if p != "symmetric_ranks")
    _, full = _run(scenario.topology, scenario.programs(), kwargs, full_paths)
    assert_same_result(fast, full, f"GPT-3 on {gpus} GPUs", RTOL)


def test_classes_below_the_threshold_are_not_folded(monkeypatch):
    monkeypatch.setattr(symmetry, "MIN_CLASS_RANKS", 32)
    topo, programs, kwargs = _two_stage_case()
    sim, result = _run(topo, programs, kwargs, FAST_PATHS)
    assert sim.fold_note == "classes of 4 ranks (folding pays from 32)"
    assert result.summary["simulated_ranks"] == 8
    assert result.summary["symmetry"] == "every rank simulated: classes of 4 ranks (folding pays from 32)"


def test_a_folded_run_may_keep_its_representatives_records_only():
    from experiments.run import training_summary

    data = {"name": "gpt3-64",
            "topology": {"builder": "gpu_cluster", "preset": "dgx_a100", "nodes": 8},
            "workload": {"kind": "transformer", "model": "gpt3_175b", "micro_batch": 1, "recompute": "full",
                         "tp": 8, "pp": 8, "schedule": "1f1b", "global_batch": 16}}
    scenario = scenario_from_dict(data, max_memory_bytes=16 * 2**30)
    kwargs = {"process_groups": scenario.groups, "seed": scenario.seed}
    _, full = _run(scenario.topology, scenario.programs(), kwargs, FAST_PATHS)
    sim = Simulator(scenario.topology, scenario.programs(), expand_records=False, **kwargs)
    kept = sim.run()
    # One representative per stage: 8 ranks' records of 64.
    assert full.rep_of is None and kept.rep_of is not None
    assert sorted(set(kept.records["rank"])) == [0, 8, 16, 24, 32, 40, 48, 56]
    assert kept.record_count() == len(full.records) == kept.summary["operations"]
    expanded = type(full)(records=kept.all_records(), summary=kept.summary, per_rank=kept.per_rank,
                          per_link=kept.per_link, per_node=kept.per_node, per_group=kept.per_group)
    assert_same_result(expanded, full, "records given to the classes afterwards", 0.0)
    # The step's report is the same from the representatives' records and the per-rank computes.
    a, b = training_summary(scenario, kept), training_summary(scenario, full)
    for key in ("step_time_s", "mfu", "hfu", "bubble_fraction"):
        assert a[key] == pytest.approx(b[key], rel=1e-12), key
    assert a["exposed_comm_s"] == pytest.approx(b["exposed_comm_s"], rel=1e-12)


def test_a_scenario_that_fits_only_folded_stops_before_it_simulates_unfolded():
    from executors import get_executor
    from simcore.engine import SimulationError
    from workloads.scenario import memory_estimate_bytes

    # Two spines: the routes between leaves are ECMP choices, so the stage's ranks cannot be folded.
    data = {"name": "gpt3-128-two-spines",
            "topology": {"builder": "gpu_cluster", "preset": "dgx_a100", "nodes": 16, "fabric": "fat_tree",
                         "nics_per_leaf": 32, "spines": 2},
            "workload": {"kind": "transformer", "model": "gpt3_175b", "micro_batch": 1, "recompute": "full",
                         "tp": 8, "pp": 8, "schedule": "1f1b", "global_batch": 32}}
    probe = scenario_from_dict(data, max_memory_bytes=2**40)
    assert probe.memory_check is None  # far under this limit either way
    folded = sum(memory_estimate_bytes(probe.topology, probe.workload))
    unfolded = sum(memory_estimate_bytes(probe.topology, probe.workload, folded=False))
    assert folded < unfolded
    limit = (folded + unfolded) // 2
    scenario = scenario_from_dict(data, max_memory_bytes=limit)
    assert scenario.memory_check == (unfolded, limit)
    with pytest.raises(SimulationError, match="every rank must be simulated .*ECMP.*over the limit"):
        get_executor("sim").run(scenario)
    # Below the folded estimate it is refused as it loads.
    with pytest.raises(ScenarioError, match="over the limit"):
        scenario_from_dict(data, max_memory_bytes=folded - 1)
