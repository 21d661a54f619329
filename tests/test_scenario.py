"""Scenarios: validation with clear messages, files, round trips, and running them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from executors.simulated import SimulatedExecutor
from simcore.engine import simulate
from topologies import LinkSpec, NodeSpec, fully_connected
from workloads.base import CollectiveWorkload, ProgramsWorkload
from workloads.ops import Collective, Compute, Recv, Send, Wait
from workloads.scenario import Scenario, ScenarioError, load_scenario, scenario_from_dict
from workloads.stragglers import StragglerSpec
from workloads.training import DataParallelStep

EXAMPLES = Path(__file__).resolve().parents[1] / "experiments" / "scenarios" / "topologies"


def base() -> dict:
    return {
        "name": "t",
        "seed": 1,
        "topology": {"builder": "fully_connected", "n": 4, "bandwidth_bytes_per_s": 1e9, "latency_s": 1e-6},
        "workload": {"kind": "collective", "op": "allreduce", "nbytes": 4000, "algorithm": "ring"},
    }


def with_(**changes) -> dict:
    data = base()
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


@pytest.mark.parametrize(
    "data,pattern",
    [
        (with_(topologgy={"builder": "ring", "n": 2}), r"where: unknown key\(s\) topologgy; allowed: name, seed"),
        (with_(workload=None), r"where: missing 'workload'"),
        (with_(topology=None), r"where: missing 'topology'"),
        (with_(seed=-1), r"where: seed must be an integer >= 0, got -1"),
        (with_(seed="1"), r"where: seed must be an integer >= 0, got '1'"),
        (with_(seed=True), r"where: seed must be an integer >= 0, got True"),
        (with_(seed=1.5), r"where: seed must be an integer >= 0, got 1.5"),
        (with_(workload={"kind": "mapreduce"}), r"where: workload.kind: unknown 'mapreduce'; expected one of"),
        (with_(workload={"op": "allreduce"}), r"where: workload.kind: unknown None"),
        (
            with_(workload={"kind": "collective", "nbytess": 4}),
            r"where: workload \(collective\): unknown field\(s\) nbytess; allowed:",
        ),
        (
            with_(workload={"kind": "data_parallel", "paramters": 4}),
            r"where: workload \(data_parallel\): unknown field\(s\) paramters",
        ),
        (with_(workload={"kind": "collective", "op": "allsum"}), r"where: workload.op: unknown collective 'allsum'"),
        (
            with_(workload={"kind": "collective", "algorithm": "bogus"}),
            r"where: rank 0 op 0 \(allreduce\): allreduce: unknown algorithm 'bogus'",
        ),
        (
            with_(workload={"kind": "collective", "algorithm": "hierarchical"}),
            r"where: rank 0 op 0 \(allreduce\): allreduce hierarchical: needs groups",
        ),
        (
            with_(workload={"kind": "programs", "ranks": [[{"kind": "send", "peer": 9, "nbytes": 1}], [], [], []]}),
            r"where: rank 0 op 0 \(send\): peer 9 is not a rank \(there are 4\)",
        ),
        (
            with_(workload={"kind": "programs", "ranks": [[{"kind": "wait", "handles": ["x"]}], [], [], []]}),
            r"where: rank 0 op 0 \(wait\): waits for unknown handle\(s\) x",
        ),
        (
            with_(workload={"kind": "programs", "ranks": [[], []]}),
            r"where: workload \(programs\): 2 rank programs given but the topology has 4 ranks",
        ),
        (
            with_(workload={"kind": "programs", "ranks": [[{"kind": "sned", "peer": 1}], [], [], []]}),
            r"where: workload.ranks\[0\]\[0\]: operation: unknown kind 'sned'",
        ),
        (with_(stragglers={"kind": "gaussian"}), r"where: stragglers.kind: unknown 'gaussian'; expected one of"),
        (with_(stragglers={"kind": "lognormal", "scope": "rack"}), r"where: stragglers.scope: unknown 'rack'"),
        (with_(stragglers={"kind": "fixed", "sigma": 1}), r"where: stragglers: unknown parameter\(s\) sigma"),
        (with_(stragglers={"kind": "fixed", "factor": -2}), r"where: stragglers.factor: invalid value -2.0"),
        (
            with_(stragglers={"kind": "fixed", "ranks": [4]}),
            r"where: stragglers.ranks names rank 4, but there are 4",
        ),
        (with_(energy={"count_idle": True, "x": 1}), r"where: energy: expected \{count_idle: true\|false\}"),
        (with_(topology={"builder": "ring", "n": 1}), r"where: topology: ring: n must be >= 2, got 1"),
        (with_(topology={"builder": "mesh", "n": 4}), r"where: topology.builder: unknown builder 'mesh'"),
        ([1, 2], r"where: expected a mapping at the top level, got list"),
    ],
)
def test_scenario_errors_name_where_and_what(data, pattern):
    with pytest.raises(ScenarioError, match=pattern):
        scenario_from_dict(data, where="where")


def test_scenario_error_is_a_value_error():
    assert issubclass(ScenarioError, ValueError)


def write(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data) if path.suffix != ".json" else json.dumps(data))
    return path


def test_load_scenario_names_the_file(tmp_path):
    path = write(tmp_path / "bad.yaml", with_(seed=-3))
    with pytest.raises(ScenarioError, match=rf"^{str(path)}: seed must be"):
        load_scenario(path)


def test_load_scenario_name_defaults_to_file_stem(tmp_path):
    data = base()
    del data["name"]
    scenario = load_scenario(write(tmp_path / "my_run.json", data))
    assert scenario.name == "my_run"
    assert scenario.seed == 1 and scenario.nranks == 4


def test_missing_scenario_file(tmp_path):
    with pytest.raises(ScenarioError, match=r"nope.yaml: no such (scenario )?file"):
        load_scenario(tmp_path / "nope.yaml")


def test_empty_scenario_file(tmp_path):
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    with pytest.raises(ScenarioError, match=r"empty.yaml: "):
        load_scenario(tmp_path / "empty.yaml")


@pytest.mark.parametrize(
    "name,text,pattern",
    [
        ("broken.yaml", "name: [unclosed\nseed: 1\n", r"broken.yaml: (invalid|not valid) YAML.* line 2"),
        ("broken.json", '{"name": "x", ', r"broken.json: (invalid|not valid) JSON.* line 1"),
    ],
)
def test_bad_syntax_names_the_file(tmp_path, name, text, pattern):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ScenarioError, match=pattern):
        load_scenario(path)


def test_topology_file_errors_carry_the_topology_path(tmp_path):
    topo = tmp_path / "topo.yaml"
    topo.write_text(
        yaml.safe_dump(
            {
                "nodes": [{"id": "a", "role": "compute", "flops_per_s": 1e9}, {"id": "b", "role": "compute", "flops_per_s": 1e9}],
                "links": [{"src": "a", "dst": "c", "bandwidth_bytes_per_s": 1e9}],
            }
        )
    )
    scenario = write(tmp_path / "scn.yaml", with_(topology="topo.yaml"))
    with pytest.raises(ScenarioError) as info:
        load_scenario(scenario)
    msg = str(info.value)
    assert msg.startswith(str(scenario) + ": ")
    assert str(topo) in msg
    assert "'c'" in msg


def test_missing_topology_file_is_reported(tmp_path):
    scenario = write(tmp_path / "scn.yaml", with_(topology="missing.yaml"))
    with pytest.raises(ScenarioError, match=rf"{str(scenario)}: .*missing.yaml: no such file"):
        load_scenario(scenario)


def test_bad_yaml_in_topology_file(tmp_path):
    (tmp_path / "t.yaml").write_text("nodes: [\n")
    scenario = write(tmp_path / "scn.yaml", with_(topology="t.yaml"))
    with pytest.raises(ScenarioError, match=r"t.yaml: (invalid|not valid) YAML.* line"):
        load_scenario(scenario)


def test_topology_path_relative_to_the_scenario(tmp_path):
    sub = tmp_path / "topos"
    sub.mkdir()
    (sub / "two_racks.yaml").write_text((EXAMPLES / "custom_two_racks.yaml").read_text())
    scenario = load_scenario(
        write(tmp_path / "scn.yaml", with_(topology="topos/two_racks.yaml", workload={"kind": "collective", "algorithm": "hierarchical"}))
    )
    assert scenario.nranks == 8
    assert scenario.topology.groups() == ((0, 1, 2, 3), (4, 5, 6, 7))


# ---------------------------------------------------------------------------
# Round trips


def roundtrip_cases():
    topo = fully_connected(4, link=LinkSpec(1e9, latency_s=1e-6))
    programs = (
        (Compute(1e6, label="x"), Send(peer=1, nbytes=10, tag=3), Collective("allreduce", 64, blocking=False, handle="h")),
        (Recv(peer=0, nbytes=10, tag=3), Collective("allreduce", 64, blocking=False, handle="h")),
        (Collective("allreduce", 64, blocking=False, handle="h"),),
        (Collective("allreduce", 64, blocking=False, handle="h"),),
    )
    return [
        Scenario(topology=topo, workload=CollectiveWorkload(op="broadcast", nbytes=1000, root=2, iterations=3, compute_flops=5.0)),
        Scenario(
            topology=topo,
            workload=DataParallelStep(parameters=1000, bucket_bytes=1000, accumulation_steps=2, overlap=False),
            seed=9,
            stragglers=StragglerSpec(kind="lognormal", params={"sigma": 0.1}, scope="node", ranks=(1, 3)),
            name="dp",
        ),
        Scenario(topology=topo, workload=ProgramsWorkload(programs_=programs), seed=2),
    ]


@pytest.mark.parametrize("scenario", roundtrip_cases(), ids=["collective", "data_parallel", "programs"])
def test_to_dict_round_trip(scenario, tmp_path):
    data = scenario.to_dict()
    again = scenario_from_dict(data)
    assert again.programs() == scenario.programs()
    assert again.topology == scenario.topology
    assert again.workload == scenario.workload
    assert again.seed == scenario.seed
    assert again.stragglers == scenario.stragglers
    assert again.energy == scenario.energy
    # Through a file too, and a loaded scenario hands back its file's form.
    loaded = load_scenario(write(tmp_path / "s.yaml", data))
    assert loaded.programs() == scenario.programs()
    assert scenario_from_dict(loaded.to_dict()).programs() == scenario.programs()
    # Same scenario, same result.
    assert SimulatedExecutor().run(loaded).records.equals(SimulatedExecutor().run(scenario).records)


def test_yaml_scientific_sizes_are_integers(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "topology: {builder: ring, n: 4, bandwidth_bytes_per_s: 1e9, latency_s: 1e-6}\n"
        "workload: {kind: collective, op: allreduce, nbytes: 4e6}\n"
    )
    scenario = load_scenario(path)
    (coll,) = scenario.programs()[0]
    assert coll.nbytes == 4_000_000 and isinstance(coll.nbytes, int)


def test_executor_runs_the_scenario_as_given():
    data = with_(stragglers={"kind": "fixed", "factor": 2, "ranks": [3]}, energy={"count_idle": False})
    data["workload"] = {"kind": "collective", "op": "allreduce", "nbytes": 4000, "compute_flops": 1e9}
    scenario = scenario_from_dict(data)
    result = SimulatedExecutor().run(scenario)
    assert result.summary["scenario"] == "t" and result.summary["seed"] == 1
    # The builder's default 100 Tflop/s; rank 3 at half speed.
    assert result.per_rank["compute_s"].tolist() == pytest.approx([1e-5, 1e-5, 1e-5, 2e-5], rel=1e-9)
    assert result.per_rank["energy_j"].tolist() == pytest.approx([400 * 1e-5] * 3 + [400 * 2e-5], rel=1e-9)


# ---------------------------------------------------------------------------
# Non-blocking collectives


def test_unwaited_nonblocking_collective_completes_before_rank_ends():
    topo = fully_connected(2, link=LinkSpec(1e9, latency_s=1e-6), node=NodeSpec(flops_per_s=1e9))
    nbytes = 2_000_000
    ar = 2 * (1e-6 + (nbytes / 2) / 1e9)  # ring all-reduce on 2 ranks
    programs = [[Collective("allreduce", nbytes, blocking=False, handle="g"), Compute(1e5)] for _ in range(2)]
    result = simulate(topo, programs)
    recs = result.records
    assert recs[["rank", "op_index", "kind"]].values.tolist() == [
        [0, 0, "allreduce"], [0, 1, "compute"], [1, 0, "allreduce"], [1, 1, "compute"],
    ]
    colls = recs[recs["kind"] == "allreduce"]
    assert colls["start_s"].tolist() == [0.0, 0.0]
    assert colls["end_s"].tolist() == pytest.approx([ar, ar], rel=1e-9)
    # The compute (0.1 ms) ran under the collective; the rank still ends with it.
    assert recs[recs["kind"] == "compute"]["end_s"].tolist() == pytest.approx([1e-4, 1e-4], rel=1e-9)
    assert result.per_rank["end_s"].tolist() == pytest.approx([ar, ar], rel=1e-9)
    assert result.makespan_s == pytest.approx(ar, rel=1e-9)
    pr = result.per_rank
    assert pr["wait_s"].tolist() == pytest.approx([ar - 1e-4] * 2, rel=1e-9)
    assert (pr["compute_s"] + pr["comm_s"] + pr["wait_s"]).tolist() == pytest.approx([ar] * 2, rel=1e-9)


def test_nonblocking_collectives_run_in_issue_order_on_one_stream():
    topo = fully_connected(2, link=LinkSpec(1e9, latency_s=1e-6), node=NodeSpec(flops_per_s=1e9))
    ar = 2 * (1e-6 + 500_000 / 1e9)
    program = [
        Collective("allreduce", 1_000_000, blocking=False, handle="a"),
        Collective("allreduce", 1_000_000, blocking=False, handle="b"),
        Compute(1e5),
    ]
    program.append(Wait(("a",)))
    result = simulate(topo, [program, list(program)])
    recs = result.records[result.records["rank"] == 0]
    colls = recs[recs["kind"] == "allreduce"]
    assert colls["start_s"].tolist() == pytest.approx([0.0, ar], rel=1e-9)
    assert colls["end_s"].tolist() == pytest.approx([ar, 2 * ar], rel=1e-9)
    wait = recs[recs["kind"] == "wait"]
    assert wait["end_s"].tolist() == pytest.approx([ar], rel=1e-9)
    assert result.makespan_s == pytest.approx(2 * ar, rel=1e-9)
