"""experiments/: example scenarios run, and the run/scaling/whatif commands write what they promise."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from executors import get_executor
from experiments import output, run, scaling, whatif
from workloads.scenario import load_scenario

SCENARIOS = Path(__file__).resolve().parents[1] / "experiments" / "scenarios"
EXAMPLES = sorted(p for pattern in ("*.yaml", "*.yml", "*.json") for p in SCENARIOS.glob(pattern))


def test_there_are_examples():
    assert len(EXAMPLES) >= 10


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_scenario_loads_and_runs(path):
    scenario = load_scenario(path)
    assert scenario.description, f"{path.name} should say what question it answers"
    result = get_executor("sim").run(scenario)
    assert result.makespan_s > 0
    assert len(result.records) > 0
    assert result.summary["nranks"] == scenario.nranks


def test_run_writes_records_and_summary(tmp_path, capsys):
    out = tmp_path / "out"
    assert run.main([str(SCENARIOS / "ring8_allreduce.yaml"), "--out", str(out)]) == 0
    records = pd.read_csv(out / "records.csv")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["nranks"] == 8 and summary["makespan_s"] > 0
    assert set(records["kind"]) == {"allreduce"}
    printed = capsys.readouterr().out
    assert "makespan" in printed and "allreduce" in printed and str(out) in printed


def test_run_leaves_out_records_and_trace_on_request(tmp_path):
    out = tmp_path / "out"
    assert run.main([str(SCENARIOS / "ring8_allreduce.yaml"), "--out", str(out), "--records", "none",
                     "--trace", "none"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "per_group.csv", "per_link.csv", "per_node.csv", "per_rank.csv", "summary.json"]


def test_a_merged_trace_covers_every_operation_in_fewer_slices(tmp_path):
    out_full, out_merged = tmp_path / "full", tmp_path / "merged"
    scenario = str(SCENARIOS / "gpt_tiny_3d.yaml")
    assert run.main([scenario, "--out", str(out_full), "--trace", "full"]) == 0
    assert run.main([scenario, "--out", str(out_merged), "--trace", "summary"]) == 0
    full = [e for e in json.loads((out_full / "trace.json").read_text())["traceEvents"] if e["ph"] == "X"]
    merged = [e for e in json.loads((out_merged / "trace.json").read_text())["traceEvents"] if e["ph"] == "X"]
    assert len(merged) < len(full)
    assert sum(e["args"]["operations"] for e in merged) == len(full)
    # Per track, the merged slices start where its first operation starts and end where its last ends.
    for tid in {e["tid"] for e in full}:
        a = [e for e in full if e["tid"] == tid]
        b = [e for e in merged if e["tid"] == tid]
        assert min(e["ts"] for e in b) == min(e["ts"] for e in a)
        assert max(e["ts"] + e["dur"] for e in b) == pytest.approx(max(e["ts"] + e["dur"] for e in a), rel=1e-12)


def test_the_trace_has_a_process_per_server_and_a_thread_per_rank(tmp_path):
    out = tmp_path / "out"
    assert run.main([str(SCENARIOS / "dgx_h100_allreduce.yaml"), "--out", str(out)]) == 0
    scenario = load_scenario(SCENARIOS / "dgx_h100_allreduce.yaml")
    servers = scenario.topology.groups()
    assert servers is not None and len(servers) > 1
    events = json.loads((out / "trace.json").read_text())["traceEvents"]
    assert {e["pid"] for e in events if e["name"] == "process_name"} == set(range(len(servers)))
    server_of = {rank: i for i, ranks in enumerate(servers) for rank in ranks}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e["name"] == "thread_name"}
    for e in events:
        if e["ph"] == "X":
            rank = int(threads[(e["pid"], e["tid"])].split()[1])
            assert e["pid"] == server_of[rank]


def test_run_by_default_leaves_out_what_is_over_its_size_and_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(output, "AUTO_RECORDS_ROWS", 3)
    monkeypatch.setattr(output, "AUTO_TRACE_ROWS", 2)
    out = tmp_path / "out"
    assert run.main([str(SCENARIOS / "ring8_allreduce.yaml"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert not (out / "records.csv").exists() and (out / "trace.json").exists()
    assert "--records csv or --records parquet writes them" in text and "--trace full writes every one" in text


def test_run_records_as_parquet_or_a_clear_error(tmp_path, capsys):
    out = tmp_path / "out"
    code = run.main([str(SCENARIOS / "ring8_allreduce.yaml"), "--out", str(out), "--records", "parquet"])
    if importlib.util.find_spec("pyarrow") is None:
        assert code == 2 and "pip install -e '.[parquet]'" in capsys.readouterr().err
        assert not out.exists()
    else:
        assert code == 0 and len(pd.read_parquet(out / "records.parquet")) == 8


def test_run_seed_override(tmp_path):
    out = tmp_path / "out"
    assert run.main([str(SCENARIOS / "ring8_allreduce.yaml"), "--out", str(out), "--seed", "5"]) == 0
    assert json.loads((out / "summary.json").read_text())["seed"] == 5


def test_run_malformed_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("topology: {builder: ring, n: 8}\nworkload: {kind: collective, op: allreduce, nbytes: -1}\n")
    assert run.main([str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "nbytes" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_run_invalid_yaml_exits_2(tmp_path, capsys):
    bad = tmp_path / "broken.yaml"
    bad.write_text("topology: [\n")
    assert run.main([str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "broken.yaml" in capsys.readouterr().err


def test_run_deadlock_exits_1_and_writes_partial(tmp_path, capsys):
    dead = tmp_path / "dead.yaml"
    dead.write_text(
        "topology: {builder: ring, n: 2}\n"
        "workload:\n  kind: programs\n  ranks:\n"
        "    - [{kind: compute, flops: 1.0e+9}, {kind: recv, peer: 1, nbytes: 10}]\n"
        "    - [{kind: recv, peer: 0, nbytes: 10}]\n"
    )
    out = tmp_path / "out"
    assert run.main([str(dead), "--out", str(out)]) == 1
    assert "deadlock" in capsys.readouterr().err
    assert (out / "records.csv").is_file() and (out / "summary.json").is_file()


SCALING_ARGS = ["--sizes", "2", "4", "--topologies", "ring", "hierarchical", "--mode", "both", "--no-plots"]


def test_scaling_small_study(tmp_path):
    out = tmp_path / "scaling"
    assert scaling.main(SCALING_ARGS + ["--out", str(out), "--jobs", "1"]) == 0
    frame = pd.read_csv(out / "scaling.csv")
    assert list(frame.columns) == list(scaling.COLUMNS)
    # 2 topologies x 2 modes x 2 straggler cases x 2 sizes
    assert len(frame) == 16
    expected = {(t, m, s, n) for t in ("ring", "hierarchical") for m in ("strong", "weak")
                for s in ("off", "on") for n in (2, 4)}
    assert set(zip(frame["topology"], frame["mode"], frame["stragglers"], frame["n"])) == expected
    base = frame[frame["n"] == 2]
    assert (base["speedup"] == 1.0).all() and (base["efficiency"] == 1.0).all()
    strong = frame[frame["mode"] == "strong"]
    assert (strong["global_batch"] == scaling.DEFAULT_GLOBAL_BATCH).all()
    assert set(frame[frame["mode"] == "weak"]["batch_per_rank"]) == {scaling.DEFAULT_BATCH_PER_RANK}
    assert ((frame["comm_share"] >= 0) & (frame["comm_share"] <= 1)).all()
    assert (frame["energy_per_step_j"] > 0).all()
    # strong scaling from 2 to 4 ranks roughly halves a compute-bound step
    ring_strong = strong[(strong["topology"] == "ring") & (strong["stragglers"] == "off")].set_index("n")
    assert 1.5 < ring_strong.loc[4, "speedup"] <= 2.0


def test_scaling_results_do_not_depend_on_jobs(tmp_path):
    args = SCALING_ARGS + ["--mode", "weak", "--seed", "3"]
    assert scaling.main(args + ["--out", str(tmp_path / "a"), "--jobs", "1"]) == 0
    assert scaling.main(args + ["--out", str(tmp_path / "b"), "--jobs", "2"]) == 0
    assert (tmp_path / "a" / "scaling.csv").read_bytes() == (tmp_path / "b" / "scaling.csv").read_bytes()


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "1", "2"], ">= 2"),
    (["--sizes", "2", "12", "--topologies", "hierarchical"], "multiple of 8"),
    (["--sizes", "2", "3", "--topologies", "ring"], "not divisible"),
    (["--algorithm", "hierarchical", "--topologies", "ring", "--sizes", "2"], "groups"),
    (["--straggler-param", "sigma"], "K=V"),
    (["--straggler-param", "alpha=2"], "alpha"),
    (["--jobs", "0"], "--jobs"),
])
def test_scaling_rejects_bad_options(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        scaling.main(argv + ["--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_whatif_bandwidth(tmp_path, capsys):
    out = tmp_path / "whatif"
    argv = [str(SCENARIOS / "ring8_allreduce.yaml"), "--vary", "topology.bandwidth_bytes_per_s=1e9,1e10,1e11",
            "--out", str(out), "--jobs", "1"]
    assert whatif.main(argv) == 0
    frame = pd.read_csv(out / "whatif.csv")
    assert list(frame["topology.bandwidth_bytes_per_s"]) == [1e9, 1e10, 1e11]
    makespans = list(frame["makespan_s"])
    assert makespans[0] > makespans[1] > makespans[2]
    assert frame["speedup"].iloc[0] == 1.0
    assert (frame["n"] == 8).all()
    assert (out / "whatif.png").is_file()
    assert "makespan" in capsys.readouterr().out


def test_whatif_cartesian_product(tmp_path):
    out = tmp_path / "whatif"
    argv = [str(SCENARIOS / "ring8_allreduce.yaml"), "--vary", "topology.n=4,8", "--vary", "seed=1,2",
            "--out", str(out), "--jobs", "1", "--no-plots"]
    assert whatif.main(argv) == 0
    frame = pd.read_csv(out / "whatif.csv")
    assert list(zip(frame["topology.n"], frame["seed"])) == [(4, 1), (4, 2), (8, 1), (8, 2)]
    assert list(frame["n"]) == [4, 4, 8, 8]


def test_whatif_unknown_path_lists_keys(tmp_path, capsys):
    argv = [str(SCENARIOS / "ring8_allreduce.yaml"), "--vary", "topologyy.n=4,8", "--out", str(tmp_path / "x")]
    with pytest.raises(SystemExit) as exc:
        whatif.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "topologyy" in err and "topology" in err and "workload" in err
    assert not (tmp_path / "x").exists()


def test_whatif_bad_value_exits_2(tmp_path, capsys):
    argv = [str(SCENARIOS / "ring8_allreduce.yaml"), "--vary", "topology.n=1", "--out", str(tmp_path / "x")]
    assert whatif.main(argv) == 2
    err = capsys.readouterr().err
    assert "topology.n=1" in err and "n must be >= 2" in err


def test_whatif_set_path_rules():
    data = {"topology": {"builder": "hierarchical", "levels": [4, 8]}, "workload": {"kind": "collective"}}
    whatif.set_path(data, "topology.levels.0", 2)
    whatif.set_path(data, "topology.latency_s", 1e-6)  # a new leaf of an existing mapping
    whatif.set_path(data, "seed", 3)
    assert data["topology"] == {"builder": "hierarchical", "levels": [2, 8], "latency_s": 1e-6}
    assert data["seed"] == 3
    with pytest.raises(whatif.PathError, match="keys there: builder, levels"):
        whatif.set_path(data, "topology.nested.x", 1)
    with pytest.raises(whatif.PathError, match="not an index"):
        whatif.set_path(data, "topology.levels.5", 1)
    assert whatif.parse_vary("topology.levels=[2,8],[4, 4]") == ("topology.levels", [[2, 8], [4, 4]])
    assert whatif.parse_vary("x=1e9,2.5e+3,ring,8") == ("x", [1e9, 2500.0, "ring", 8])


def test_the_default_scaling_study_goes_to_1024_ranks_on_every_topology():
    parser = scaling.build_parser()
    args = parser.parse_args([])
    configs = scaling.configurations(args, {"kind": "none"})
    largest = {}
    for c in configs:
        largest[c["topology"]] = max(largest.get(c["topology"], 0), c["n"])
    assert largest == {"ring": 1024, "tree": 1024, "hierarchical": 1024, "edge_cloud": 1024}
    assert len(configs) == 4 * 2 * 2 * 10  # topologies x modes x straggler cases x sizes
    # --sizes applies to every topology.
    args = parser.parse_args(["--sizes", "4", "8", "--topologies", "ring", "hierarchical"])
    assert {(c["topology"], c["n"]) for c in scaling.configurations(args, {"kind": "none"})} == {
        ("ring", 4), ("ring", 8), ("hierarchical", 4), ("hierarchical", 8)}
