"""Non-blocking collectives on the communication stream, and when aligned timing is valid."""
from __future__ import annotations

import re

import pytest

from executors.real.mpi import MPIExecutor
from executors.real import RealOptions, RealRunError, aligned_problem, choose_timing, read_status
from executors.real.torchdist import TorchExecutor
from workloads.ops import Collective, Compute, Recv, Send, Wait
from workloads.scenario import scenario_from_dict

needs_mpi = pytest.mark.skipif(not MPIExecutor.is_available(), reason=MPIExecutor.unavailable_reason() or "-")
needs_torch = pytest.mark.skipif(not TorchExecutor.is_available(), reason=TorchExecutor.unavailable_reason() or "-")


def test_aligned_timing_needs_sends_and_receives_at_the_same_index():
    matched = [[Send(1, 4), Compute(1.0)], [Recv(0, 4), Compute(1.0)]]
    crossed = [[Send(1, 4), Compute(1.0)], [Compute(1.0), Recv(0, 4)]]
    assert aligned_problem(matched) is None
    assert choose_timing(matched, "auto") == "aligned"
    assert "rank 0 op 0 (send with rank 1) is not matched by rank 1 op 0" in aligned_problem(crossed)
    assert choose_timing(crossed, "auto") == "free"
    uneven = [[Compute(1.0)], [Compute(1.0), Compute(1.0)]]
    assert "different numbers" in aligned_problem(uneven)
    background = [[Collective("allreduce", 8, blocking=False, handle="a"), Wait("a")]] * 2
    assert "non-blocking" in aligned_problem(background)


def _background_scenario():
    program = [
        {"kind": "allreduce", "nbytes": 65536, "blocking": False, "handle": "a"},
        {"kind": "alltoall", "nbytes": 65537, "blocking": False, "handle": "b"},
        {"kind": "allgather", "nbytes": 4099, "blocking": False, "handle": "c"},
        {"kind": "compute", "flops": 2.0e7},
        {"kind": "wait", "handles": ["a", "b", "c"]},
        {"kind": "allreduce", "nbytes": 1000},
    ]
    return scenario_from_dict({"name": "background", "topology": {"builder": "switch", "n": 2},
                               "workload": {"kind": "programs", "ranks": [program, list(program)]}})


def _check_background(result):
    records = result.records[result.records["repeat"] == 0]
    for rank in (0, 1):
        mine = records[records["rank"] == rank].set_index("op_index")
        # On one stream the background collectives run one after another, in issue order.
        assert mine.loc[0, "end_s"] <= mine.loc[1, "start_s"] <= mine.loc[1, "end_s"] <= mine.loc[2, "start_s"]
        # The wait ends once the last of them has.
        assert mine.loc[4, "end_s"] >= mine.loc[2, "end_s"]
        assert list(mine.index) == [0, 1, 2, 3, 4, 5]


@needs_mpi
@pytest.mark.mpi
@pytest.mark.parametrize("mode", ["native", "algorithm"])
def test_mpi_background_collectives_run_on_the_stream_and_give_right_results(mode):
    # check=True: a wrong byte in any of them (in flight together) is an error.
    result = MPIExecutor(RealOptions(mode=mode, check=True, warmup=0, repeats=2, timeout_s=30)).run(
        _background_scenario())
    _check_background(result)


@needs_torch
@pytest.mark.torch
def test_torch_background_collectives_run_on_the_stream_and_give_right_results():
    result = TorchExecutor(RealOptions(mode="native", check=True, warmup=0, repeats=1, timeout_s=30)).run(
        _background_scenario())
    _check_background(result)


@needs_mpi
@pytest.mark.mpi
def test_forced_aligned_timing_that_would_deadlock_is_refused():
    crossed = scenario_from_dict({
        "topology": {"builder": "switch", "n": 2},
        "workload": {"kind": "programs", "ranks": [
            [{"kind": "send", "peer": 1, "nbytes": 8}, {"kind": "compute", "flops": 1.0e3}],
            [{"kind": "compute", "flops": 1.0e3}, {"kind": "recv", "peer": 0, "nbytes": 8}]]}})
    with pytest.raises(RealRunError, match="would deadlock"):
        MPIExecutor(RealOptions(timing="aligned", warmup=0, repeats=1, timeout_s=10)).run(crossed)
    # auto picks free timing and the run completes.
    result = MPIExecutor(RealOptions(warmup=0, repeats=1, timeout_s=10)).run(crossed)
    assert result.summary["timing"] == "free"


@needs_mpi
@pytest.mark.mpi
def test_a_python_error_in_one_rank_ends_the_run_at_once_and_names_it():
    import time

    program = [{"kind": "compute", "flops": 1.0e3}, {"kind": "allreduce", "nbytes": 1024}]
    scenario = scenario_from_dict({"topology": {"builder": "switch", "n": 2},
                                   "workload": {"kind": "programs", "ranks": [program, list(program)]}})
    started = time.monotonic()
    with pytest.raises(RealRunError, match=r"rank 1 failed in op 0 \(compute\): RuntimeError: injected fault in op 0") as info:
        # A 300 s per-op timeout: the run must end because the rank failed, not by timing out.
        MPIExecutor(RealOptions(fault="raise:1:0", timeout_s=300, warmup=0, repeats=1)).run(scenario)
    assert "timed out" not in str(info.value)
    assert time.monotonic() - started < 120


@needs_mpi
@pytest.mark.mpi
def test_a_rank_killed_from_outside_is_named(tmp_path, monkeypatch):
    import glob
    import os
    import signal
    import tempfile
    import threading
    import time

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    program = [{"kind": "allreduce", "nbytes": 1024}, {"kind": "compute", "flops": 1.0e3}]
    scenario = scenario_from_dict({"topology": {"builder": "switch", "n": 2},
                                   "workload": {"kind": "programs", "ranks": [program, list(program)]}})
    killed = []

    def kill_rank_1():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            for path in glob.glob(str(tmp_path / "distsim-mpi-*" / "rank1.pid")):
                # Once it is inside op 0, not still in the barrier before it.
                if read_status(path.replace(".pid", ".status")).startswith("op 0 "):
                    os.kill(int(open(path).read()), signal.SIGKILL)
                    killed.append(path)
            time.sleep(0.05)

    threading.Thread(target=kill_rank_1, daemon=True).start()
    # Rank 0 stops in op 0, so rank 1 waits there in the all-reduce until it is killed.
    # How it ended comes from /proc, or its pidfd, where the kernel tells it.
    with pytest.raises(RealRunError, match=r"rank 1 died in op 0 \(allreduce\): "
                                           r"(killed by SIGKILL|its process vanished)") as info:
        MPIExecutor(RealOptions(fault="hang:0:0", timeout_s=60, warmup=0, repeats=1)).run(scenario)
    assert killed
    # Rank 0, stopped as well, is ended by the launcher because rank 1 failed.
    assert re.search(r"^  rank 0: stopped by the launcher after rank 1 failed \(was in op 0 allreduce; "
                     r"it had stopped responding", str(info.value), re.M), str(info.value)
