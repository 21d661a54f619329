"""High-level workloads: parameter server, federated averaging, pipeline, offloading.

Each is checked for the shape of its programs, a dict round trip, validation,
freedom from deadlock under rendezvous semantics (a send completes only when
its receive is posted, the strictest a real MPI run can be), and a simulated
makespan against a closed form on a topology where every contention is known.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from executors import get_executor
from simcore.engine import simulate
from topologies import LinkSpec, NodeSpec
from topologies.builders import edge_cloud, fully_connected, switch
from workloads import workload_from_dict
from workloads.federated import FederatedAveraging
from workloads.offload import EdgeOffload
from workloads.ops import Compute, Recv, Send
from workloads.parameter_server import ParameterServer
from workloads.pipeline import PipelineParallel
from workloads.scenario import load_scenario

SCENARIOS = Path(__file__).resolve().parents[1] / "experiments" / "scenarios"
PREFIXES = ("parameter_server_", "federated_", "pipeline_", "offload_")

F = 1e12  # flop/s
B = 1e9  # bytes/s
L = 1e-5  # s per link


def kinds(program) -> Counter:
    return Counter(op.kind for op in program)


def rendezvous_run(programs) -> None:
    """Run the programs with blocking rendezvous sends; fail on deadlock or size mismatch."""
    pcs = [0] * len(programs)

    def head(rank):
        program = programs[rank]
        while pcs[rank] < len(program) and isinstance(program[pcs[rank]], Compute):
            pcs[rank] += 1
        return program[pcs[rank]] if pcs[rank] < len(program) else None

    progress = True
    while progress:
        progress = False
        for rank in range(len(programs)):
            op = head(rank)
            if isinstance(op, Send):
                other = head(op.peer)
                if isinstance(other, Recv) and other.peer == rank and other.tag == op.tag:
                    assert other.nbytes == op.nbytes, f"rank {rank} -> {op.peer}: size mismatch"
                    pcs[rank] += 1
                    pcs[op.peer] += 1
                    progress = True
    stuck = {r: head(r) for r in range(len(programs)) if head(r) is not None}
    assert not stuck, f"rendezvous deadlock: {stuck}"


def makespan(topology, workload) -> float:
    groups = topology.groups()
    return simulate(topology, workload.programs(topology.nranks, groups)).summary["makespan_s"]


def roundtrip(workload) -> None:
    data = workload.to_dict()
    assert workload_from_dict(data) == workload
    # Plain data: YAML's safe dumper refuses tuples, JSON turns them into lists.
    assert workload_from_dict(yaml.safe_load(yaml.safe_dump(data))) == workload
    assert workload_from_dict(json.loads(json.dumps(data))) == workload


# ---------------------------------------------------------------------------
# parameter server


def test_parameter_server_programs():
    w = ParameterServer(parameters=1001, bytes_per_parameter=1, servers=2, iterations=3, server_flops_per_byte=1.0)
    programs = w.programs(6)
    assert w.shard_bytes() == [501, 500]
    for s in (0, 1):
        assert kinds(programs[s]) == {"recv": 12, "compute": 3, "send": 12}
        assert [op.peer for op in programs[s][:4]] == [2, 3, 4, 5]
        assert {op.nbytes for op in programs[s] if op.kind != "compute"} == {w.shard_bytes()[s]}
    for r in range(2, 6):
        assert kinds(programs[r]) == {"compute": 3, "send": 6, "recv": 6}
        assert programs[r][:5] == [Compute(w.flops_per_iteration, label="gradient"),
                                   Send(0, 501), Send(1, 500), Recv(0, 501), Recv(1, 500)]
    rendezvous_run(programs)
    asynchronous = ParameterServer(servers=2, iterations=3, synchronous=False, server_flops_per_byte=1.0)
    programs = asynchronous.programs(6)
    assert [op.kind for op in programs[0][:6]] == ["recv", "compute", "send"] * 2
    rendezvous_run(programs)


def test_parameter_server_roundtrip_and_validation():
    roundtrip(ParameterServer())
    roundtrip(ParameterServer(parameters=10, servers=3, synchronous=False, server_flops_per_byte=2.0))
    assert workload_from_dict({"kind": "parameter_server", "parameters": 1.0e6}).parameters == 1_000_000
    for field, value in [("servers", 0), ("iterations", 0), ("parameters", 0), ("flops_per_iteration", -1.0),
                         ("server_flops_per_byte", float("nan")), ("synchronous", "yes"), ("servers", 1.5)]:
        with pytest.raises(ValueError, match=f"workload.{field}"):
            ParameterServer(**{field: value})
    with pytest.raises(ValueError, match="workload.servers"):
        ParameterServer(servers=4).programs(4)


def test_parameter_server_one_server_incast_on_a_switch():
    # All W pushes share the switch -> server link: W m / B, delivered after
    # two links' latency; the update; then W pulls one after another.
    n, m, flops, sfpb = 5, 10_000_000, 2e10, 0.5
    workers = n - 1
    w = ParameterServer(parameters=m, bytes_per_parameter=1, flops_per_iteration=flops, server_flops_per_byte=sfpb)
    topo = switch(n, link=LinkSpec(B, latency_s=L), node=NodeSpec(flops_per_s=F))
    expected = flops / F + workers * m / B + 2 * L + sfpb * m * workers / F + workers * (m / B + 2 * L)
    assert makespan(topo, w) == pytest.approx(expected, rel=1e-9)


def test_parameter_server_two_shards_one_worker():
    # The worker pushes half the model to each server in turn and pulls in
    # turn; server 1's reply follows server 0's on the worker's link.
    m, flops, sfpb, iterations = 20_000_000, 1e10, 1.0, 2
    w = ParameterServer(parameters=m, bytes_per_parameter=1, servers=2, iterations=iterations,
                        flops_per_iteration=flops, server_flops_per_byte=sfpb)
    topo = switch(3, link=LinkSpec(B, latency_s=L), node=NodeSpec(flops_per_s=F))
    hop = m / 2 / B + 2 * L
    expected = iterations * (flops / F + 3 * hop + sfpb * m / 2 / F)
    assert makespan(topo, w) == pytest.approx(expected, rel=1e-9)


# ---------------------------------------------------------------------------
# federated averaging


def test_federated_flat_programs_and_selection():
    w = FederatedAveraging(model_bytes=100, rounds=3, clients_per_round=0.4)
    programs = w.programs(6)  # aggregator 5, clients 0..4, 2 per round
    assert [w.selected((0, 1, 2, 3, 4), r) for r in range(3)] == [[0, 1], [2, 3], [0, 4]]
    assert kinds(programs[5]) == {"recv": 6, "compute": 3, "send": 6}
    assert [kinds(programs[c])["send"] for c in range(5)] == [2, 1, 1, 1, 1]
    assert programs[0][:3] == [Compute(w.local_flops, label="local"), Send(5, 100), Recv(5, 100)]
    rendezvous_run(programs)
    explicit = FederatedAveraging(aggregator=0, clients=(3, 1))
    programs = explicit.programs(4)
    assert [op.peer for op in programs[0] if op.kind == "recv"] == [3, 1]
    assert programs[2] == []
    rendezvous_run(programs)


def test_federated_hierarchical_roles():
    topo = edge_cloud(n_devices=5, n_edge=2)  # devices 0-4, edges 5 and 6, cloud 7
    w = FederatedAveraging(hierarchical=True, rounds=2)
    aggregator, clients, edge_of = w.roles(topo.nranks, topo.groups())
    assert (aggregator, clients) == (7, (0, 1, 2, 3, 4))
    assert edge_of == {0: 5, 2: 5, 4: 5, 1: 6, 3: 6}
    explicit = FederatedAveraging(hierarchical=True, edge_ranks=(5, 6))
    assert explicit.roles(topo.nranks)[2] == edge_of  # device i -> edge i % 2, as edge_cloud wires it
    programs = w.programs(topo.nranks, topo.groups())
    assert kinds(programs[5]) == {"recv": 2 * 4, "compute": 2, "send": 2 * 4}
    assert kinds(programs[7]) == {"recv": 4, "compute": 2, "send": 4}
    rendezvous_run(programs)
    partial = FederatedAveraging(hierarchical=True, rounds=2, clients_per_round=0.2)  # 1 device per round
    programs = partial.programs(topo.nranks, topo.groups())
    assert [op.peer for op in programs[7] if op.kind == "recv"] == [5, 6]
    rendezvous_run(programs)


def test_federated_roundtrip_and_validation():
    roundtrip(FederatedAveraging())
    roundtrip(FederatedAveraging(clients=[0, 2], aggregator=3, clients_per_round=0.5))
    roundtrip(FederatedAveraging(hierarchical=True, edge_ranks=[4, 5]))
    assert FederatedAveraging(clients=[2, 1]).clients == (2, 1)
    for field, value in [("rounds", 0), ("model_bytes", -1), ("local_flops", -1.0), ("clients_per_round", 0.0),
                         ("clients_per_round", 1.5), ("clients", (1, 1)), ("clients", "01"),
                         ("aggregate_flops_per_byte", -0.1), ("hierarchical", 1), ("edge_ranks", (3,))]:
        with pytest.raises(ValueError, match=f"workload.{field}"):
            FederatedAveraging(**{field: value})
    with pytest.raises(ValueError, match="workload.aggregator"):
        FederatedAveraging(aggregator=4).programs(4)
    with pytest.raises(ValueError, match="workload.clients"):
        FederatedAveraging(aggregator=1, clients=(0, 1)).programs(4)
    with pytest.raises(ValueError, match="workload.clients"):
        FederatedAveraging(clients=(9,)).programs(4)
    with pytest.raises(ValueError, match="workload.edge_ranks"):
        FederatedAveraging(hierarchical=True).programs(4)  # no groups
    with pytest.raises(ValueError, match="workload.edge_ranks"):
        FederatedAveraging(hierarchical=True, edge_ranks=(3,)).programs(4)  # the aggregator


def test_federated_flat_round_on_a_switch():
    n, m, local, afpb, rounds = 4, 5_000_000, 3e10, 0.25, 1
    clients = n - 1
    w = FederatedAveraging(model_bytes=m, rounds=rounds, local_flops=local, aggregate_flops_per_byte=afpb)
    topo = switch(n, link=LinkSpec(B, latency_s=L), node=NodeSpec(flops_per_s=F))
    expected = local / F + clients * m / B + 2 * L + afpb * m * clients / F + clients * (m / B + 2 * L)
    assert makespan(topo, w) == pytest.approx(expected, rel=1e-9)


def test_federated_hierarchical_round_on_edge_cloud():
    # 4 devices, 2 per edge.  Up: each device alone on its wireless link; the
    # two edges' uploads share the LAN links into the cloud.  Down: the cloud
    # sends to edge 0 then edge 1, edge 1 then to its two devices in turn.
    m, local, afpb = 1_000_000, 2e11, 0.25
    bw, lw, bwan, lwan, blan, llan = 10e6, 5e-3, 125e6, 20e-3, 100e6, 0.2e-3
    fd, fe, fc = 1e12, 20e12, 200e12
    topo = edge_cloud(
        n_devices=4, n_edge=2, device=NodeSpec(flops_per_s=fd), edge=NodeSpec(flops_per_s=fe),
        cloud=NodeSpec(flops_per_s=fc), wireless=LinkSpec(bw, latency_s=lw), wan=LinkSpec(bwan, latency_s=lwan),
        lan=LinkSpec(blan, latency_s=llan),
    )
    w = FederatedAveraging(model_bytes=m, local_flops=local, aggregate_flops_per_byte=afpb, hierarchical=True)
    wireless = m / bw + lw
    up = m / min(bwan, blan / 2) + lwan + 2 * llan
    down = m / min(bwan, blan) + lwan + 2 * llan
    expected = (local / fd + wireless + afpb * m * 2 / fe + up + afpb * m * 2 / fc + 2 * down + 2 * wireless)
    assert makespan(topo, w) == pytest.approx(expected, rel=1e-9)


# ---------------------------------------------------------------------------
# pipeline


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize("stages,microbatches", [(2, 1), (3, 2), (4, 4), (4, 9), (5, 3)])
def test_pipeline_programs(schedule, stages, microbatches):
    w = PipelineParallel(microbatches=microbatches, activation_bytes=64, schedule=schedule, steps=2,
                         optimizer_flops=1.0)
    programs = w.programs(stages)
    for s, program in enumerate(programs):
        inner = s not in (0, stages - 1)
        assert kinds(program) == {
            "compute": 2 * (2 * microbatches + 1),
            "send": 2 * microbatches * (2 if inner else 1),
            "recv": 2 * microbatches * (2 if inner else 1),
        }
        labels = [op.label for op in program if op.kind == "compute"][: 2 * microbatches]
        assert sorted(labels) == sorted([f"forward[{m}]" for m in range(microbatches)]
                                        + [f"backward[{m}]" for m in range(microbatches)])
    rendezvous_run(programs)


def test_pipeline_1f1b_order():
    programs = PipelineParallel(microbatches=4, schedule="1f1b").programs(4)
    order = [[op.label for op in p if op.kind == "compute"] for p in programs]
    f, b = "forward[{}]".format, "backward[{}]".format
    assert order[0] == [f(0), f(1), f(2), f(3), b(0), b(1), b(2), b(3)]
    assert order[2] == [f(0), f(1), b(0), f(2), b(1), f(3), b(2), b(3)]
    assert order[3] == [f(0), b(0), f(1), b(1), f(2), b(2), f(3), b(3)]
    gpipe = PipelineParallel(microbatches=3).programs(2)
    assert [op.label for op in gpipe[1] if op.kind == "compute"] == [f(0), f(1), f(2), b(2), b(1), b(0)]


def test_pipeline_roundtrip_and_validation():
    roundtrip(PipelineParallel())
    roundtrip(PipelineParallel(microbatches=3, schedule="1f1b", backward_factor=1.5, steps=4))
    for field, value in [("microbatches", 0), ("steps", 0), ("activation_bytes", -1), ("forward_flops", -1.0),
                         ("backward_factor", -2.0), ("schedule", "interleaved"), ("microbatches", 2.5)]:
        with pytest.raises(ValueError, match=f"workload.{field}"):
            PipelineParallel(**{field: value})


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize("stages,microbatches", [(2, 1), (4, 4), (4, 8), (5, 3)])
def test_pipeline_free_communication_bubble(schedule, stages, microbatches):
    tf = 1e10 / F
    w = PipelineParallel(microbatches=microbatches, forward_flops=1e10, activation_bytes=0, schedule=schedule,
                         steps=2)
    topo = fully_connected(stages, link=LinkSpec(B, latency_s=0.0), node=NodeSpec(flops_per_s=F))
    expected = 2 * (microbatches + stages - 1) * (tf + 2 * tf)
    assert makespan(topo, w) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("stages,microbatches", [(2, 1), (3, 2), (4, 4), (4, 8)])
def test_pipeline_gpipe_with_hockney_messages(stages, microbatches):
    # A blocking send costs its stage alpha + n beta; on the critical path
    # there are M + S - 2 of them in each direction.
    a = 1_000_000
    tf, tb, c = 1e10 / F, 2e10 / F, L + a / B
    w = PipelineParallel(microbatches=microbatches, forward_flops=1e10, activation_bytes=a)
    topo = fully_connected(stages, link=LinkSpec(B, latency_s=L), node=NodeSpec(flops_per_s=F))
    expected = (microbatches + stages - 1) * (tf + tb) + 2 * (microbatches + stages - 2) * c
    assert makespan(topo, w) == pytest.approx(expected, rel=1e-9)


# ---------------------------------------------------------------------------
# offloading


def test_offload_selection_and_programs():
    assert EdgeOffload(tasks=4, offload_fraction=0.5).offloaded() == [True, False, True, False]
    assert [t for t, r in enumerate(EdgeOffload(tasks=10, offload_fraction=0.3).offloaded()) if r] == [0, 3, 6]
    assert not any(EdgeOffload(tasks=5, offload_fraction=0.0).offloaded())
    assert all(EdgeOffload(tasks=5, offload_fraction=1.0).offloaded())
    assert EdgeOffload(tasks=5, offload_fraction=0.5).offloaded_count == 3  # halves round up
    w = EdgeOffload(tasks=4, offload_fraction=0.5, input_bytes=10, output_bytes=1)
    programs = w.programs(4)  # server 3
    assert programs[0] == [Send(3, 10), Compute(w.task_flops, label="task[1]"), Recv(3, 1),
                           Send(3, 10), Compute(w.task_flops, label="task[3]"), Recv(3, 1)]
    assert kinds(programs[3]) == {"recv": 6, "compute": 6, "send": 6}
    assert [op.peer for op in programs[3] if op.kind == "recv"] == [0, 1, 2, 0, 1, 2]
    rendezvous_run(programs)
    two = EdgeOffload(tasks=3, offload_fraction=1.0, server_ranks=(4, 5), devices=(0, 1, 2, 3))
    programs = two.programs(7)
    assert [op.peer for op in programs[4] if op.kind == "recv"] == [0, 2] * 3
    assert [op.peer for op in programs[5] if op.kind == "recv"] == [1, 3] * 3
    assert programs[6] == []
    rendezvous_run(programs)


def test_offload_roundtrip_and_validation():
    roundtrip(EdgeOffload())
    roundtrip(EdgeOffload(server_ranks=[8, 9], devices=[0, 1, 2], offload_fraction=1.0))
    for field, value in [("tasks", 0), ("task_flops", -1.0), ("input_bytes", -1), ("output_bytes", 0.5),
                         ("offload_fraction", 1.1), ("offload_fraction", -0.1), ("server_ranks", (2, 2)),
                         ("devices", 3)]:
        with pytest.raises(ValueError, match=f"workload.{field}"):
            EdgeOffload(**{field: value})
    with pytest.raises(ValueError, match="workload.server_ranks"):
        EdgeOffload(server_ranks=(4,)).programs(4)
    with pytest.raises(ValueError, match="workload.devices"):
        EdgeOffload(server_ranks=(1,), devices=(0, 1)).programs(4)
    with pytest.raises(ValueError, match="workload.devices"):
        EdgeOffload(server_ranks=(0, 1)).programs(2)


def test_offload_nothing_runs_locally():
    w = EdgeOffload(tasks=7, task_flops=3e10, offload_fraction=0.0)
    topo = switch(4, link=LinkSpec(B, latency_s=L), node=NodeSpec(flops_per_s=F))
    assert makespan(topo, w) == pytest.approx(7 * 3e10 / F, rel=1e-9)


def test_offload_everything_one_device():
    tasks, tf, i, o = 5, 2e10, 3_000_000, 100_000
    w = EdgeOffload(tasks=tasks, task_flops=tf, input_bytes=i, output_bytes=o, offload_fraction=1.0)
    topo = switch(2, link=LinkSpec(B, latency_s=L), node=NodeSpec(flops_per_s=F))
    expected = tasks * (i / B + 2 * L + tf / F + o / B + 2 * L)
    assert makespan(topo, w) == pytest.approx(expected, rel=1e-9)


def test_offload_everything_server_bound():
    # All first inputs share the server's link; after that the server is the
    # bottleneck (each device's next input arrives while it serves the others).
    devices, tasks, tf, i, o = 3, 4, 1e10, 1_000_000, 100_000
    w = EdgeOffload(tasks=tasks, task_flops=tf, input_bytes=i, output_bytes=o, offload_fraction=1.0)
    topo = switch(devices + 1, link=LinkSpec(B, latency_s=L), node=NodeSpec(flops_per_s=F))
    slot = tf / F + o / B + 2 * L
    assert (devices - 1) * slot > i / B + 2 * L
    expected = devices * i / B + 2 * L + tasks * devices * slot
    assert makespan(topo, w) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("task_flops", [1e9, 2e11])
def test_offload_half_overlaps_local_work(task_flops):
    # One device, one edge server 20x faster, over Wi-Fi: each offloaded task
    # overlaps the local task after it; whichever is longer sets the pace.
    i, o, bw, lw = 200_000, 20_000, 10e6, 5e-3
    topo = edge_cloud(n_devices=1, n_edge=1, n_cloud=0, device=NodeSpec(flops_per_s=1e12),
                      edge=NodeSpec(flops_per_s=20e12), wireless=LinkSpec(bw, latency_s=lw))
    w = EdgeOffload(tasks=4, task_flops=task_flops, input_bytes=i, output_bytes=o, offload_fraction=0.5)
    local, remote = task_flops / 1e12, task_flops / 20e12 + o / bw + lw
    expected = 2 * (i / bw + lw + max(local, remote))
    assert makespan(topo, w) == pytest.approx(expected, rel=1e-9)


# ---------------------------------------------------------------------------
# example scenarios


def _scenario_files():
    return sorted(p for p in SCENARIOS.glob("*.yaml") if p.name.startswith(PREFIXES))


def test_every_workload_has_an_example():
    names = [p.name for p in _scenario_files()]
    for prefix in PREFIXES:
        assert any(n.startswith(prefix) for n in names), f"no example scenario {prefix}*.yaml"


@pytest.mark.parametrize("path", _scenario_files(), ids=lambda p: p.name)
def test_example_scenario_runs(path):
    scenario = load_scenario(path)
    assert scenario.name and scenario.description
    assert path.name.startswith(scenario.workload.kind + "_")
    result = get_executor("sim").run(scenario)
    assert result.summary["makespan_s"] > 0
    assert set(result.records["rank"]) <= set(range(scenario.nranks))
    assert workload_from_dict(scenario.workload.to_dict()) == scenario.workload
