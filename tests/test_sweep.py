"""experiments/sweep.py: points on Dask give the serial results, each point cached, a sweep resumes."""
from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments import common, plan, scaling, sweep, whatif

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "experiments" / "scenarios"
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
    # Progress: the cached point first, then each computed one with the time so far and left.
    lines = [line for line in err.splitlines() if line.startswith("[")]
    assert re.fullmatch(r"\[1/4 reused\] topology\.\S+=.* N=\d+  makespan .* s", lines[0]), lines
    assert re.match(r"\[2/4 \d+\.\d s elapsed\] topology", lines[1]), lines
    assert re.match(r"\[3/4 \d+\.\d s elapsed, ~\d+(\.\d)? s left\] topology", lines[2]), lines
    assert re.match(r"\[4/4 \d+\.\d s elapsed\] topology", lines[3]), lines
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


def test_point_key_follows_the_code(tmp_path, monkeypatch):
    assert sweep.source_hash() == sweep.tree_hash(ROOT)
    data = {"topology": {"builder": "ring", "n": 4}}
    key = sweep.point_key(common.run_scenario_dict, (data, "sim"), "0.1.0")
    monkeypatch.setattr(sweep, "_SOURCE_HASH", "another version of the code")
    assert sweep.point_key(common.run_scenario_dict, (data, "sim"), "0.1.0") != key
    # The code's hash: modules and presets, not example scenarios nor caches.
    (tmp_path / "topologies" / "presets").mkdir(parents=True)
    (tmp_path / "experiments" / "scenarios").mkdir(parents=True)
    (tmp_path / "topologies" / "builders.py").write_text("A = 1\n")
    (tmp_path / "topologies" / "presets" / "gpu.yaml").write_text("flops: 1\n")
    first = sweep.tree_hash(tmp_path)
    (tmp_path / "experiments" / "scenarios" / "x.yaml").write_text("seed: 1\n")
    (tmp_path / "topologies" / "__pycache__").mkdir()
    (tmp_path / "topologies" / "__pycache__" / "builders.py").write_text("stale")
    assert sweep.tree_hash(tmp_path) == first
    (tmp_path / "topologies" / "presets" / "gpu.yaml").write_text("flops: 2\n")
    second = sweep.tree_hash(tmp_path)
    assert second != first
    (tmp_path / "experiments" / "sweep.py").write_text("B = 2\n")
    assert sweep.tree_hash(tmp_path) != second


def test_point_key_follows_the_files_a_point_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "scen").mkdir()
    topo = tmp_path / "scen" / "topo.yaml"
    node = tmp_path / "gpu.yaml"
    node.write_text("flops_per_s: 1.0e+12\n")
    topo.write_text("builder: ring\nn: 4\nnode_type: gpu.yaml\n")

    def key(data, base_dir="scen"):
        # As whatif hands a point over: the scenario, the backend, the scenario's folder.
        return sweep.point_key(common.run_scenario_dict, (data, "sim", base_dir, "w", None), "0.1.0")

    named = {"topology": "topo.yaml", "workload": {"kind": "collective"}}
    first = key(named)
    topo.write_text(topo.read_text())  # rewritten, same bytes: same key
    assert key(named) == first
    topo.write_text("builder: ring\nn: 4\nnode_type: gpu.yaml\nlatency_s: 1.0e-6\n")
    second = key(named)
    assert second != first
    node.write_text("flops_per_s: 2.0e+12\n")  # named by the topology file, from the working directory
    assert key(named) != second
    # Absolute names count too.
    absolute = {"topology": str(topo)}
    before = key(absolute, None)
    topo.write_text("builder: ring\nn: 8\n")
    assert key(absolute, None) != before
    # A point that names no file: files around it do not matter.
    plain = {"topology": {"builder": "ring", "n": 4}, "name": "ring4"}
    alone = key(plain)
    (tmp_path / "notes.txt").write_text("unrelated")
    (tmp_path / "scen" / "other.yaml").write_text("seed: 3\n")
    assert key(plain) == alone
    # A file past the size limit enters by its size only.
    monkeypatch.setattr(sweep, "MAX_HASHED_FILE_BYTES", 4)
    big = key(named)
    topo.write_text("builder: ring\nn: 9\n")  # same size, other bytes
    assert key(named) == big


def test_editing_a_named_topology_file_recomputes_the_points(tmp_path, capsys):
    topo = tmp_path / "topo.yaml"
    topo.write_text("builder: ring\nn: 4\nbandwidth_bytes_per_s: 1.0e+9\n")
    scenario = tmp_path / "s.yaml"
    scenario.write_text("topology: topo.yaml\nworkload: {kind: collective, op: allreduce, nbytes: 1000000}\n")
    argv = (str(scenario), "--vary", "seed=1,2")
    out = tmp_path / "w"
    assert whatif_run(out, 1, capsys, argv)[0] == 0
    first = (out / "whatif.csv").read_text()
    code, err = whatif_run(out, 1, capsys, argv)
    assert code == 0 and counts(err) == (0, 2, 0, 2)
    topo.write_text("builder: ring\nn: 4\nbandwidth_bytes_per_s: 1.0e+10\n")
    code, err = whatif_run(out, 1, capsys, argv)
    assert code == 0 and "reused 0 of 2 points" in err and counts(err) == (2, 0, 0, 2)
    assert (out / "whatif.csv").read_text() != first


def test_progress_text():
    assert common.progress_text(12, 96, 3.1, 0.25) == "[12/96 3.1 s elapsed, ~21 s left]"
    assert common.progress_text(3, 4, 1.0, 0.5) == "[3/4 1.0 s elapsed, ~0.5 s left]"
    assert common.progress_text(1, 4, 1.0) == "[1/4 1.0 s elapsed]"  # no pace yet
    assert common.progress_text(4, 4, 2.25, 0.5) == "[4/4 2.2 s elapsed]"


# -- --slurm ---------------------------------------------------------------------------


def fake_sbatch(tmp_path: Path, monkeypatch) -> None:
    """An ``sbatch`` on PATH that must never run (the tests submit nothing)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho 'sbatch called' >&2\nexit 1\n")
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")


def test_slurm_is_refused_without_sbatch(tmp_path, monkeypatch, capsys):
    pytest.importorskip("dask_jobqueue")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch there
    code, err = whatif_run(tmp_path / "w", 2, capsys, (RING, *VARY, "--slurm"))
    assert code == 2 and "--slurm: sbatch is not on PATH" in err
    assert "reused" not in err and not (tmp_path / "w" / "points").exists()  # nothing ran


@pytest.mark.parametrize("command", ["whatif", "scaling", "plan"])
def test_slurm_without_dask_jobqueue_says_how_to_install_it(command, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # import dask_jobqueue raises ImportError
    out = str(tmp_path / "out")
    argv = {"whatif": [RING, *VARY, "--out", out, "--no-plots"],
            "scaling": ["--sizes", "2", "4", "--topologies", "ring", "--out", out, "--no-plots"],
            "plan": ["--model", "gpt3_175b", "--cluster", "dgx_a100", "--gpus", "8", "--out", out, "--no-plots"],
            }[command]
    main = {"whatif": whatif.main, "scaling": scaling.main, "plan": plan.main}[command]
    assert main([*argv, "--slurm"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["error: --slurm needs dask-jobqueue: pip install -e '.[slurm]'"]
    assert not (tmp_path / "out" / "points").exists()


def test_slurm_options_reach_the_job_script():
    pytest.importorskip("dask_jobqueue")
    args = whatif.build_parser().parse_args(
        [RING, *VARY, "--slurm", "--slurm-partition", "short", "--slurm-walltime", "02:30:00",
         "--slurm-cores", "4", "--slurm-jobs", "3", "--slurm-memory", "24GiB"])
    options = common.slurm_options(args)
    assert options == sweep.SlurmOptions(jobs=3, cores=4, walltime="02:30:00", partition="short", memory="24GiB")
    cluster = sweep.slurm_cluster(options)  # the sweep's own helper; nothing is submitted
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in ("#SBATCH -p short", "#SBATCH --cpus-per-task=4", "#SBATCH --mem=24G", "#SBATCH -t 02:30:00"):
        assert line in script.splitlines(), script
    assert "--nworkers 4" in script and "--nthreads 1" in script  # one single-threaded worker per core
    # The defaults: 1 core, 2 GB per core, one hour, the cluster's default partition.
    defaults = common.slurm_options(whatif.build_parser().parse_args([RING, *VARY, "--slurm"]))
    assert defaults == sweep.SlurmOptions()
    cluster = sweep.slurm_cluster(defaults)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH -t 01:00:00" in script and "#SBATCH --cpus-per-task=1" in script
    assert not any(line.startswith("#SBATCH -p") for line in script.splitlines())


@pytest.mark.parametrize("extra, why", [
    (["--slurm", "--scheduler", "tcp://127.0.0.1:8786"], "not allowed with argument"),
    (["--slurm", "--slurm-walltime", "90"], "expected HH:MM:SS"),
    (["--slurm", "--slurm-jobs", "0"], "must be >= 1"),
    (["--slurm", "--slurm-memory", "12 apples"], "expected a size"),
])
def test_slurm_option_errors(extra, why, capsys):
    with pytest.raises(SystemExit) as info:
        whatif.build_parser().parse_args([RING, *VARY, *extra])
    assert info.value.code == 2 and why in capsys.readouterr().err


def test_slurm_options_need_slurm(tmp_path, capsys):
    code, err = whatif_run(tmp_path / "w", 1, capsys, (RING, *VARY, "--slurm-cores", "4", "--slurm-jobs", "2"))
    assert code == 2 and "error: --slurm-cores, --slurm-jobs needs --slurm" in err


def test_a_slurm_sweep_scales_to_the_jobs_and_closes_the_cluster(tmp_path, monkeypatch, capsys):
    """The --slurm path end to end, with a local cluster standing in for SLURMCluster."""
    pytest.importorskip("dask_jobqueue")
    from distributed import LocalCluster

    fake_sbatch(tmp_path, monkeypatch)
    made = []

    class FakeSlurmCluster(LocalCluster):
        def scale(self, n=0, jobs=0, **kwargs):
            self.scaled.append(jobs)
            return super().scale(jobs)

        def close(self, *args, **kwargs):
            self.closed = True
            return super().close(*args, **kwargs)

    def fake_slurm_cluster(options):
        cluster = FakeSlurmCluster(n_workers=0, processes=False, threads_per_worker=1, dashboard_address=None)
        cluster.scaled = []
        made.append((options, cluster))
        return cluster

    monkeypatch.setattr(sweep, "slurm_cluster", fake_slurm_cluster)
    code, err = whatif_run(tmp_path / "w", 1, capsys, (RING, *VARY, "--slurm", "--slurm-jobs", "2"))
    assert code == 0 and counts(err) == (4, 0, 0, 4), err
    options, cluster = made[0]
    assert options.jobs == 2 and cluster.scaled[0] == 2 and cluster.closed
    assert "slurm: submitted 2 job(s) of 1 core(s)" in err and "sbatch called" not in err
    serial = tmp_path / "serial"
    assert whatif_run(serial, 1, capsys)[0] == 0
    assert (tmp_path / "w" / "whatif.csv").read_bytes() == (serial / "whatif.csv").read_bytes()


# -- Ctrl-C: a real sweep stopped halfway and run again ---------------------------------


def start_sweep(out: Path, n: int, jobs: int) -> subprocess.Popen:
    """``python -m experiments.whatif`` on 8 points of ``n`` ranks, in its own process group."""
    argv = [sys.executable, "-m", "experiments.whatif", RING, "--vary", f"topology.n={n}",
            "--vary", "seed=1,2,3,4,5,6,7,8", "--jobs", str(jobs), "--out", str(out), "--no-plots"]
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def cached(out: Path) -> int:
    return len(list((out / "points").glob("*.json")))


def interrupt_after(proc: subprocess.Popen, out: Path, points: int, watch=None, timeout_s: float = 60.0) -> str:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) once ``points``
    are cached; ``watch()`` runs while waiting.  Returns the sweep's stderr."""
    deadline = time.monotonic() + timeout_s
    while cached(out) < points:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the sweep cached too few points in time"
        if watch is not None:
            watch()
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted: the points that finished are kept" in err and "Traceback" not in err, err
    return err


def test_a_sweep_interrupted_halfway_recomputes_no_finished_point(tmp_path, capsys):
    out = tmp_path / "w"
    interrupt_after(start_sweep(out, 128, jobs=1), out, 2)
    kept = cached(out)
    assert 2 <= kept < 8
    code, err = whatif_run(out, 1, capsys, (RING, "--vary", "topology.n=128", "--vary", "seed=1,2,3,4,5,6,7,8"))
    assert code == 0 and f"reused {kept} of 8 points" in err
    assert counts(err) == (8 - kept, kept, 0, 8)


def test_ctrl_c_stops_a_local_dask_sweep_and_leaves_no_worker(tmp_path, capsys):
    psutil = pytest.importorskip("psutil")  # comes with distributed
    out = tmp_path / "w"
    proc = start_sweep(out, 192, jobs=2)
    sweep_process = psutil.Process(proc.pid)
    children: set = set()

    def watch():
        try:
            children.update(sweep_process.children(recursive=True))
        except psutil.Error:
            pass

    interrupt_after(proc, out, 2, watch)
    kept = cached(out)
    assert 2 <= kept < 8
    assert len(children) >= 2  # the two workers, at least
    deadline = time.monotonic() + 10
    alive = children
    while alive and time.monotonic() < deadline:
        alive = {p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE}
        time.sleep(0.1)
    assert not alive, [p.cmdline() for p in alive]
