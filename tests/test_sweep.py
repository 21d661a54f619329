"""experiments/sweep.py: points on Dask give the serial results, each point cached, a sweep resumes."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from experiments import common, sweep, whatif

SCENARIOS = Path(__file__).resolve().parents[1] / "experiments" / "scenarios"
RING = str(SCENARIOS / "ring8_allreduce.yaml")
# 4 points: small enough to run in a fraction of a second each.
VARY = ["--vary", "topology.bandwidth_bytes_per_s=1e9,1e10", "--vary", "topology.n=4,8"]


def whatif_run(out: Path, jobs: int, capsys, argv=(RING, *VARY)) -> tuple[int, str]:
    code = whatif.main([*argv, "--out", str(out), "--jobs", str(jobs), "--no-plots"])
    return code, capsys.readouterr().err


def counts(err: str) -> tuple[int, int, int, int]:
    """(computed, reused, failed, total) from the sweep's summary line."""
    m = re.search(r"sweep: (\d+) computed, (\d+) reused, (\d+) failed of (\d+) points", err)
    assert m, err
    return tuple(int(x) for x in m.groups())


def test_local_dask_cluster_matches_serial_and_rerun_reuses_every_point(tmp_path, capsys):
    assert whatif_run(tmp_path / "serial", 1, capsys)[0] == 0
    code, err = whatif_run(tmp_path / "dask", 2, capsys)
    assert code == 0 and counts(err) == (4, 0, 0, 4)
    serial = (tmp_path / "serial" / "whatif.csv").read_bytes()
    assert (tmp_path / "dask" / "whatif.csv").read_bytes() == serial
    assert len(list((tmp_path / "dask" / "points").glob("*.json"))) == 4
    # The same sweep again: nothing to compute (no cluster is started), same bytes.
    code, err = whatif_run(tmp_path / "dask", 2, capsys)
    assert code == 0 and "reused 4 of 4 points" in err and counts(err) == (0, 4, 0, 4)
    assert (tmp_path / "dask" / "whatif.csv").read_bytes() == serial


def test_fresh_computes_every_point_again(tmp_path, capsys):
    out = tmp_path / "w"
    assert whatif_run(out, 1, capsys)[0] == 0
    first = (out / "whatif.csv").read_bytes()
    code, err = whatif_run(out, 1, capsys, argv=(RING, *VARY, "--fresh"))
    assert code == 0 and "reused 0 of 4 points" in err and counts(err) == (4, 0, 0, 4)
    assert (out / "whatif.csv").read_bytes() == first


def test_a_partly_cached_sweep_computes_only_the_rest(tmp_path, capsys):
    out = tmp_path / "w"
    assert whatif_run(out, 1, capsys)[0] == 0
    first = (out / "whatif.csv").read_bytes()
    points = sorted((out / "points").glob("*.json"))
    assert len(points) == 4
    for path in points[:3]:
        path.unlink()
    code, err = whatif_run(out, 1, capsys)
    assert code == 0 and "reused 1 of 4 points" in err and counts(err) == (3, 1, 0, 4)
    assert (out / "whatif.csv").read_bytes() == first
    assert len(list((out / "points").glob("*.json"))) == 4


def mismatched_programs(tmp_path: Path) -> str:
    """A two-rank program whose receive size is varied: a size other than the send's 10 B fails at run time."""
    path = tmp_path / "pair.yaml"
    path.write_text(
        "topology: {builder: ring, n: 2}\n"
        "workload:\n  kind: programs\n  ranks:\n"
        "    - [{kind: send, peer: 1, nbytes: 10}]\n"
        "    - [{kind: recv, peer: 0, nbytes: 10}]\n"
    )
    return str(path)


def test_a_failing_point_does_not_stop_a_dask_sweep_and_is_listed(tmp_path, capsys):
    argv = (mismatched_programs(tmp_path), "--vary", "workload.ranks.1.0.nbytes=10,11", "--vary", "seed=1,2")
    out = tmp_path / "w"
    code, err = whatif_run(out, 2, capsys, argv)
    assert code == 1
    assert counts(err) == (2, 0, 2, 4)
    listed = [line for line in err.splitlines() if line.startswith("  workload.ranks.1.0.nbytes=11")]
    assert len(listed) == 2 and all("11 B" in line or "10 B" in line for line in listed), err
    # Successes are cached, failures are not: a rerun retries exactly the failures.
    assert len(list((out / "points").glob("*.json"))) == 2
    code, err = whatif_run(out, 1, capsys, argv)
    assert code == 1 and counts(err) == (0, 2, 2, 4)


def test_run_points_records_errors_and_keeps_non_finite_floats(tmp_path):
    tasks = [(math.sqrt, (4.0,)), (math.sqrt, (-1.0,)), (float, ("nan",)), (float, ("-inf",))]
    results, stats = sweep.run_points(tasks, jobs=1, cache_dir=tmp_path)
    assert results[0] == 2.0 and results[1] is None
    assert math.isnan(results[2]) and results[3] == -math.inf
    assert stats.computed == 3 and [i for i, _ in stats.failed] == [1]
    assert "ValueError" in stats.failed[0][1]
    again, stats = sweep.run_points(tasks, jobs=1, cache_dir=tmp_path)
    assert stats.reused == 3 and stats.computed == 0 and len(stats.failed) == 1
    assert again[0] == 2.0 and math.isnan(again[2]) and again[3] == -math.inf
    with pytest.raises(common.SweepError) as info:
        common.run_many(tasks, jobs=1, cache_dir=tmp_path)
    assert info.value.failures[0][0] == 1 and info.value.results[0] == 2.0


def _interrupt_at_three(x: int) -> int:
    if x == 3:
        raise KeyboardInterrupt
    return x * x


def test_an_interrupted_sweep_keeps_what_finished(tmp_path):
    tasks = [(_interrupt_at_three, (x,)) for x in range(5)]
    with pytest.raises(KeyboardInterrupt):
        common.run_many(tasks, jobs=1, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 3  # points 0, 1 and 2
    results, stats = sweep.run_points(tasks[:3], jobs=1, cache_dir=tmp_path)
    assert results == [0, 1, 4] and stats.reused == 3


def test_point_key_depends_on_the_point_and_the_version():
    data = {"name": "x", "seed": 1, "topology": {"builder": "ring", "n": 4}}
    key = sweep.point_key(common.run_scenario_dict, (data, "sim"), "0.1.0")
    assert key == sweep.point_key(common.run_scenario_dict, (dict(reversed(list(data.items()))), "sim"), "0.1.0")
    assert key != sweep.point_key(common.run_scenario_dict, (data, "mpi"), "0.1.0")
    assert key != sweep.point_key(common.run_scenario_dict, (data, "sim"), "0.2.0")
    assert key != sweep.point_key(common.run_scenario_dict, ({**data, "seed": 2}, "sim"), "0.1.0")
