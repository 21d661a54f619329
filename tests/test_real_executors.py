"""Real executors (MPI, torch.distributed) against the simulator's contract.

Launched runs start real processes (``mpiexec -n N`` or torchrun) on this
machine, so the scenarios are tiny: at most 4 ranks and a few kB per message.
What is checked is exact, never a timing: the records have the simulator's
columns and the same operations in the same order, every collective's bytes
are right (``check=True``), and a dead or stuck rank ends the run with an
error naming it, leaving no process behind.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from executors import get_executor
from executors.real.mpi import MPIExecutor
from executors.real import RealBackend, RealOptions, RealRunError, run_real
from executors.real.torchdist import TorchExecutor
from simcore.result import RECORD_COLUMNS
from workloads.collectives import ALGORITHMS
from workloads.scenario import scenario_from_dict

needs_mpi = pytest.mark.skipif(not MPIExecutor.is_available(), reason=MPIExecutor.unavailable_reason() or "-")
needs_torch = pytest.mark.skipif(not TorchExecutor.is_available(), reason=TorchExecutor.unavailable_reason() or "-")

# A run that fails must end within its per-operation timeout plus process
# start-up (torchrun imports torch in three processes: about 6 s on 2 cores).
FAULT_TIMEOUT_S = 5.0
FAULT_DEADLINE_S = FAULT_TIMEOUT_S + 30.0
KEYS = ["rank", "op_index", "kind", "algorithm", "peer", "nbytes"]


# -- scenarios ----------------------------------------------------------------------


def _scenario(ranks: list[list[dict]], name: str, topology: dict | None = None):
    topology = topology or {"builder": "switch", "n": len(ranks)}
    return scenario_from_dict({"name": name, "topology": topology, "workload": {"kind": "programs", "ranks": ranks}})


def contract_scenario(p: int):
    """Compute, point-to-point between pairs, every collective, and a non-blocking all-reduce."""
    ranks = []
    for r in range(p):
        ops: list[dict] = [{"kind": "compute", "flops": 2.0e6}]
        if r % 2 == 0 and r + 1 < p:
            ops.append({"kind": "send", "peer": r + 1, "nbytes": 3000, "tag": 7})
        elif r % 2 == 1:
            ops.append({"kind": "recv", "peer": r - 1, "nbytes": 3000, "tag": 7})
        ops += [
            {"kind": "allreduce", "nbytes": 4096},
            {"kind": "broadcast", "nbytes": 1001, "root": 1},
            {"kind": "reduce", "nbytes": 2048, "root": 0, "algorithm": "ring"},
            {"kind": "allgather", "nbytes": 1001},
            {"kind": "reduce_scatter", "nbytes": 4096},
            {"kind": "alltoall", "nbytes": 1000},
            {"kind": "allreduce", "nbytes": 2048, "blocking": False, "handle": "g"},
            {"kind": "compute", "flops": 1.0e6},
            {"kind": "wait", "handles": ["g"]},
            {"kind": "barrier"},
        ]
        ranks.append(ops)
    return _scenario(ranks, f"contract-{p}")


def alltoallv_counts(src: int, dst: int, nbytes: int) -> int:
    """Bytes group rank ``src`` sends ``dst`` in an alltoallv of about ``nbytes`` per rank: uneven, some 0."""
    return 0 if (src + dst) % 3 == 0 else nbytes // 4 + 13 * src + 7 * dst


def collective_entry(op: str, algorithm: str, nbytes: int, rank: int, p: int, root: int, **extra) -> dict:
    """One collective of ``rank`` (a group rank of ``p``) as a scenario entry; alltoallv's counts from ``nbytes``."""
    entry = {"kind": op, "algorithm": algorithm, **extra}
    if op == "alltoallv":
        entry["send_nbytes"] = [alltoallv_counts(rank, j, nbytes) for j in range(p)]
        entry["recv_nbytes"] = [alltoallv_counts(j, rank, nbytes) for j in range(p)]
    else:
        entry["nbytes"] = 0 if op == "barrier" else nbytes
    if op in ("broadcast", "reduce", "scatter", "gather"):
        entry["root"] = root
    return entry


def all_collectives_scenario(p: int, mode: str, sizes=(1000, 1001), topology: dict | None = None):
    """Every collective (every algorithm in algorithm mode), sizes divisible by p and not, roots p - 1."""
    ranks = []
    for rank in range(p):
        program = []
        for op, algorithms in ALGORITHMS.items():
            names = [a for a in algorithms if a != "hierarchical"] if mode == "algorithm" else algorithms[:1]
            for algorithm in names:
                for nbytes in ((0,) if op == "barrier" else sizes):
                    program.append(collective_entry(op, algorithm, nbytes, rank, p, root=p - 1))
        program.append({"kind": "allreduce", "nbytes": 0})
        ranks.append(program)
    return _scenario(ranks, f"all-collectives-{p}-{mode}", topology)


CHECKED = dict(check=True, warmup=0, repeats=1, timeout_s=30.0)


def assert_matches_simulation(result, scenario, backend: str, repeats: int):
    records = result.records
    assert list(records.columns) == list(RECORD_COLUMNS) + ["repeat"]
    assert sorted(records["repeat"].unique()) == list(range(repeats))
    sim = get_executor("sim").run(scenario).records
    first = records[records["repeat"] == 0].sort_values(["rank", "op_index"])
    real_ops = list(first[KEYS].itertuples(index=False, name=None))
    sim_ops = list(sim.sort_values(["rank", "op_index"])[KEYS].itertuples(index=False, name=None))
    assert real_ops == sim_ops
    for repeat, part in records.groupby("repeat"):
        assert len(part) == len(sim)
    assert (records["end_s"] >= records["start_s"]).all()
    assert (records["start_s"] >= 0).all()
    flops = records.loc[records["kind"] == "compute", "flops"]
    assert set(flops) <= {2.0e6, 1.0e6}
    assert result.summary["backend"] == backend
    assert result.summary["nranks"] == scenario.nranks
    assert result.summary["makespan_s"] > 0


# -- the contract: same operations as the simulator ----------------------------------


@pytest.mark.parametrize("p", [2, 4])
@pytest.mark.mpi
@needs_mpi
def test_mpi_records_match_simulation(p):
    scenario = contract_scenario(p)
    result = MPIExecutor(RealOptions(warmup=1, repeats=2, timeout_s=30.0)).run(scenario)
    assert_matches_simulation(result, scenario, "mpi", repeats=2)
    assert result.summary["timing"] == "free"  # a non-blocking collective rules out aligned timing


@pytest.mark.torch
@needs_torch
def test_torch_gloo_records_match_simulation():
    scenario = contract_scenario(2)
    result = TorchExecutor(RealOptions(warmup=1, repeats=2, timeout_s=30.0)).run(scenario)
    assert_matches_simulation(result, scenario, "torch", repeats=2)


# -- correct results, native and algorithm --------------------------------------------


@pytest.mark.parametrize("mode", ["native", "algorithm"])
@pytest.mark.mpi
@needs_mpi
def test_mpi_collectives_correct_4_ranks(mode):
    scenario = all_collectives_scenario(4, mode)
    result = MPIExecutor(RealOptions(mode=mode, **CHECKED)).run(scenario)
    assert result.summary["timing"] == "aligned"
    assert len(result.records) == 4 * len(scenario.programs()[0])


@pytest.mark.mpi
@needs_mpi
def test_mpi_algorithms_correct_non_power_of_two():
    # 3 ranks: recursive doubling, Rabenseifner and halving fold the extra rank in and out.
    scenario = all_collectives_scenario(3, "algorithm", sizes=(999, 1000, 1001))
    MPIExecutor(RealOptions(mode="algorithm", **CHECKED)).run(scenario)


@pytest.mark.mpi
@needs_mpi
def test_mpi_hierarchical_allreduce_correct():
    program = [{"kind": "allreduce", "nbytes": n, "algorithm": "hierarchical", "inter_algorithm": inter}
               for n in (1000, 1001) for inter in ("ring", "recursive_doubling")]
    scenario = _scenario([program] * 4, "hierarchical-4", {"builder": "hierarchical", "levels": [2, 2]})
    MPIExecutor(RealOptions(mode="algorithm", **CHECKED)).run(scenario)


@pytest.mark.parametrize("mode", ["native", "algorithm"])
@pytest.mark.torch
@needs_torch
def test_torch_collectives_correct_2_ranks(mode):
    scenario = all_collectives_scenario(2, mode)
    result = TorchExecutor(RealOptions(mode=mode, **CHECKED)).run(scenario)
    assert len(result.records) == 2 * len(scenario.programs()[0])


class _LoopbackBackend(RealBackend):
    """Rank 0 of a pretend 2-rank run, in-process: collectives write what the
    real call would leave (the other rank started with bytes 2), except where
    ``corrupt`` says to spoil one byte, so that the check must catch it."""

    name = "loopback"

    def __init__(self, corrupt: dict[str, int] | None = None):
        self.rank, self.size = 0, 2
        self.corrupt = corrupt or {}

    def barrier(self):
        pass

    def buffer(self, nbytes):
        return np.zeros(nbytes, dtype=np.uint8)

    def fill(self, buf, value):
        buf.fill(value % 256)

    def to_numpy(self, buf):
        return buf

    def send(self, buf, peer, tag):
        raise AssertionError("no point-to-point in this test")

    recv = isend = irecv = send

    def waitall(self, requests):
        pass

    def add_(self, dst, src):
        np.add(dst, src, out=dst)

    def copy_(self, dst, src):
        dst[...] = src

    def matmul(self, rows):
        pass

    def gather(self, obj):
        return [obj]

    def share(self, obj):
        return obj

    def collective(self, op, buf, out, blocking):
        half = (op.nbytes + 1) // 2  # block_layout: rank 0's block is the larger one
        if op.op == "allreduce":
            buf[:] = 3
        elif op.op == "allgather":
            buf[half:] = 2
        elif op.op == "reduce_scatter":
            buf[:half] = 3
        elif op.op == "alltoall":
            out[:half] = 1
            out[half: 2 * half] = 2
        if op.op in self.corrupt:
            target = out if op.op == "alltoall" else buf
            target[self.corrupt[op.op]] ^= 0x40
        return None


@pytest.mark.parametrize("op, byte", [("allreduce", 17), ("allgather", 900), ("reduce_scatter", 0), ("alltoall", 700)])
def test_result_check_catches_a_wrong_byte(op, byte):
    ops = [{"kind": kind, "nbytes": 1001} for kind in ("allreduce", "allgather", "reduce_scatter", "alltoall")]
    scenario = _scenario([ops, ops], "loopback")
    options = RealOptions(check=True, warmup=0, repeats=1)
    # The honest backend passes: the check is not simply always failing.
    assert len(run_real(_LoopbackBackend(), scenario, options).records) == 4
    with pytest.raises(RealRunError, match=rf"rank 0: {op} \(native .*\) gave a wrong result: .* byte \d+ is"):
        run_real(_LoopbackBackend(corrupt={op: byte}), scenario, options)


# -- failures end the run, name the rank and op, and leave nothing behind -------------


def _pair_scenario():
    # Op 0 is a collective, so that with one rank stuck in it the other is
    # stuck in op 0 too, whichever watchdog fires first.
    return _scenario([[{"kind": "allreduce", "nbytes": 100}, {"kind": "send", "peer": 1, "nbytes": 100}],
                      [{"kind": "allreduce", "nbytes": 100}, {"kind": "recv", "peer": 0, "nbytes": 100}]], "pair")


def _workers_under(folder: Path) -> list[str]:
    """Command lines of live processes running a worker of a run folder inside ``folder``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "executors.real.worker" in cmdline and str(folder) in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


@pytest.fixture
def run_folder(tmp_path, monkeypatch):
    """Launched runs put their run folder here, so leftover workers are ours to find
    (other runs may be going on on this machine at the same time)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


# The failing rank is named first; the other is named as stopped because of
# it (or, a hang, as waiting for it), never as having failed on its own.  A
# rank stopped after another's exit may not have begun op 0 yet (seen once in
# a fresh-clone CI run of 5: "before it ran any operation").
FAULTS = [
    ("exit:1:0", r"run failed: rank 1 died in op 0 \(allreduce\): (exited with code 9 )?\(injected fault\)\n"
                 r"  rank 0: stopped (by the launcher )?after rank 1 failed "
                 r"\((was in op 0 allreduce|before it ran any operation)"),
    ("hang:1:0", r"run failed: rank 1 hung in op 0 \(allreduce\): no heartbeat for [\d.]+ s .*\n"
                 r"  rank 0: waiting in op 0 \(allreduce\) for the hung rank; "),
]


def _assert_fault_ends_cleanly(executor_class, fault, expected, folder):
    started = time.monotonic()
    with pytest.raises(RealRunError, match=expected):
        executor_class(RealOptions(fault=fault, timeout_s=FAULT_TIMEOUT_S, warmup=0, repeats=1)).run(_pair_scenario())
    elapsed = time.monotonic() - started
    assert elapsed < FAULT_DEADLINE_S
    assert _workers_under(folder) == []
    assert list(folder.glob("distsim-*")) == []  # the launcher removed its run folder


@pytest.mark.parametrize("fault, expected", FAULTS, ids=["exit", "hang"])
@pytest.mark.mpi
@needs_mpi
def test_mpi_fault_ends_run(fault, expected, run_folder):
    _assert_fault_ends_cleanly(MPIExecutor, fault, expected, run_folder)


@pytest.mark.parametrize("fault, expected", FAULTS, ids=["exit", "hang"])
@pytest.mark.torch
@needs_torch
def test_torch_fault_ends_run(fault, expected, run_folder):
    # The launcher ends the job itself: torchrun would wait for a stopped rank
    # for 30 s after the others ended.
    _assert_fault_ends_cleanly(TorchExecutor, fault, expected, run_folder)


@pytest.mark.parametrize("command", ["run", "validate"])
def test_a_bad_scenario_file_is_rejected_before_any_process_starts(tmp_path, monkeypatch, capsys, command):
    import importlib
    import subprocess

    def no_processes(*args, **kwargs):
        raise AssertionError("a process was started for an invalid scenario")

    monkeypatch.setattr(subprocess, "Popen", no_processes)
    bad = tmp_path / "bad.yaml"
    bad.write_text("topology: {builder: switch, n: 2}\n"
                   "workload: {kind: programs, ranks: {0: [{kind: send, peer: 5, nbytes: 10}], 1: []}}\n")
    main = importlib.import_module(f"experiments.{command}").main
    assert main([str(bad), "--backend", "mpi", "--out", str(tmp_path / "out")]) == 2
    assert "peer 5" in capsys.readouterr().err


# -- the command line ---------------------------------------------------------------------


@pytest.mark.mpi
@needs_mpi
def test_experiments_run_with_mpi_writes_records(tmp_path):
    from experiments import run

    scenario_path = tmp_path / "pair.json"
    scenario_path.write_text(json.dumps(_pair_scenario().to_dict()))
    out = tmp_path / "out"
    assert run.main([str(scenario_path), "--backend", "mpi", "--repeats", "2", "--warmup", "0",
                     "--out", str(out)]) == 0
    records = pd.read_csv(out / "records.csv")
    assert list(records.columns) == list(RECORD_COLUMNS) + ["repeat"]
    assert len(records) == 2 * 4 and sorted(records["repeat"].unique()) == [0, 1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == "mpi" and summary["repeats"] == 2


# -- NCCL ---------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.torch
@needs_torch
def test_torch_nccl_collectives_correct():
    import torch
    import torch.distributed as dist

    if not (torch.cuda.is_available() and dist.is_nccl_available()):
        pytest.skip("NCCL needs an NVIDIA GPU; none here")
    gpus = torch.cuda.device_count()
    if gpus < 2:
        pytest.skip(f"the NCCL test runs one rank per GPU and needs 2; found {gpus}")
    for mode in ("native", "algorithm"):
        scenario = all_collectives_scenario(2, mode)
        result = TorchExecutor(RealOptions(mode=mode, **CHECKED)).run(scenario)
        assert len(result.records) == 2 * len(scenario.programs()[0])
    scenario = contract_scenario(2)
    result = TorchExecutor(RealOptions(warmup=1, repeats=2, timeout_s=60.0)).run(scenario)
    assert_matches_simulation(result, scenario, "torch", repeats=2)
