"""Energy in the records, messages never received, and determinism across processes."""
import os
import subprocess
import sys

import pytest

from simcore.engine import DeadlockError, SimulationError, simulate
from topologies import LinkSpec, NodeSpec, switch
from workloads.ops import Collective, Compute, Recv, Send, Wait


def quiet_switch(n, **kw):
    return switch(n, link=LinkSpec(1e9, latency_s=0.0, energy_per_byte_j=1e-9),
                  node=NodeSpec(idle_power_w=0.0, busy_power_w=0.0),
                  switch=NodeSpec(idle_power_w=0.0, busy_power_w=0.0), **kw)


def test_a_background_collectives_bytes_are_charged_once():
    # Each rank all-reduces 8 MB in the background and waits for it: the
    # records must charge the link energy once, to the collective.
    nbytes = 8_000_000
    programs = [[Collective("allreduce", nbytes, blocking=False, handle="a"), Wait("a")] for _ in range(2)]
    result = simulate(quiet_switch(2), programs)
    # Ring all-reduce on 2 ranks: each rank sends 2 blocks of n/2 over 2 links (rank -> switch -> rank).
    link_j = 2 * 2 * (nbytes / 2) * 2 * 1e-9
    assert result.summary["link_energy_j"] == pytest.approx(link_j, rel=1e-12)
    assert result.records["energy_j"].sum() == pytest.approx(link_j, rel=1e-12)
    waits = result.records[result.records["kind"] == "wait"]
    assert (waits["energy_j"] == 0).all()


def test_records_charge_no_idle_power_when_idle_is_not_counted():
    topo = switch(2, link=LinkSpec(1e9, latency_s=0.0, energy_per_byte_j=0.0),
                  node=NodeSpec(flops_per_s=1e9, idle_power_w=50.0, busy_power_w=200.0),
                  switch=NodeSpec(idle_power_w=0.0, busy_power_w=0.0))
    programs = [[Compute(1e9), Send(1, 10**6)], [Recv(0, 10**6)]]
    counted = simulate(topo, programs)
    busy_only = simulate(topo, programs, count_idle_energy=False)
    # Rank 0 computes 1 s at 200 W; only that is charged without idle power.
    assert busy_only.summary["total_energy_j"] == pytest.approx(200.0, rel=1e-12)
    assert busy_only.records["energy_j"].sum() == pytest.approx(200.0, rel=1e-12)
    # With idle power: rank 1 waits 1 s + 1 ms for the message at 50 W.
    recv = counted.records[counted.records["kind"] == "recv"].iloc[0]
    assert recv["energy_j"] == pytest.approx(50.0 * (1.0 + 1e-3), rel=1e-12)


def test_a_message_nobody_receives_is_an_error_with_the_partial_result():
    programs = [[Send(1, 100)], [], []]
    with pytest.raises(SimulationError, match=r"(?s)never received.*rank 0 -> rank 1 \(tag 0\): 1 message") as info:
        simulate(quiet_switch(3), programs)
    assert info.value.partial is not None
    assert list(info.value.partial.records["kind"]) == ["send"]


def test_a_deadlock_names_the_messages_that_match_no_receive():
    programs = [[Send(1, 5, tag=1)], [Recv(0, 5, tag=0)]]
    with pytest.raises(DeadlockError, match=r"(?s)rank 1 waits in op 0 \(recv\).*tag 0.*match no receive: rank 0 -> rank 1 \(tag 1\)"):
        simulate(quiet_switch(2), programs)


def test_a_size_mismatch_names_the_op_and_keeps_what_was_computed():
    programs = [[Compute(1e6), Send(1, 5)], [Compute(1e6), Recv(0, 6)]]
    with pytest.raises(SimulationError, match=r"rank 1 in op 1 \(recv\) receives 6 B from rank 0 \(tag 0\) but the matching send carries 5 B") as info:
        simulate(quiet_switch(2), programs)
    # The send had not completed when the receive found the mismatch.
    assert sorted(info.value.partial.records["kind"]) == ["compute", "compute"]


SCRIPT = """
import hashlib
from workloads.scenario import load_scenario
from executors import get_executor
r = get_executor('sim').run(load_scenario('experiments/scenarios/hierarchical_ddp.yaml'))
print(hashlib.sha256(r.records.to_csv(index=False).encode()).hexdigest())
"""


def test_same_seed_same_records_across_processes_with_different_hash_seeds():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=root, env=env, capture_output=True, text=True,
                             check=True, timeout=120)
        digests.add(out.stdout.strip())
    assert len(digests) == 1


def test_aligned_simulation_starts_each_operation_index_together():
    from topologies import fully_connected

    topo = fully_connected(2, link=LinkSpec(1e9, latency_s=1e-6), node=NodeSpec(flops_per_s=1e9))
    # Rank 1 computes twice as long; free running, its late arrival is part of
    # rank 0's all-reduce; aligned, the all-reduce starts on both together.
    programs = [[Compute(1e6), Collective("allreduce", 2000)], [Compute(2e6), Collective("allreduce", 2000)]]
    free = simulate(topo, programs)
    aligned = simulate(topo, programs, aligned=True)
    allreduce_s = 2 * (1e-6 + 1000 / 1e9)  # ring on 2 ranks: 2 steps of n/2
    rec = aligned.records.set_index(["rank", "op_index"])
    for rank in (0, 1):
        assert rec.loc[(rank, 1), "start_s"] == pytest.approx(2e-3, rel=1e-12)
        assert rec.loc[(rank, 1), "end_s"] - rec.loc[(rank, 1), "start_s"] == pytest.approx(allreduce_s, rel=1e-9)
    free_rec = free.records.set_index(["rank", "op_index"])
    assert free_rec.loc[(0, 1), "end_s"] - free_rec.loc[(0, 1), "start_s"] > 1e-3  # waited for rank 1
    pr = aligned.per_rank
    assert (pr["compute_s"] + pr["comm_s"] + pr["wait_s"]).tolist() == pytest.approx([aligned.makespan_s] * 2, rel=1e-12)
