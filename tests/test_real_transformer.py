"""The transformer workload run for real: the simulator's per-rank programs over MPI and gloo.

``experiments/scenarios/gpt_real_small.yaml`` (8 ranks, tp=2 pp=2 dp=2) runs
over MPI in native and algorithm mode, every collective's bytes checked
(``check=True``): TP all-reduces on tp, isend/irecv pairs with distinct tags
on pp, many DP buckets in flight on dp, memory-bound computes.  Over gloo,
whose 8 processes take most of a minute to start on 2 cores, one launch per
mode runs a 4-rank program made of two transformer steps back to back: a
dense one (tp=2, pp=2, sequence parallel: all-gathers and reduce-scatters
on tp) and a mixture of experts (dp=4, ep=2, ZeRO-3: alltoall on ep,
all-gathers and reduce-scatters on dp and edp); the 8-rank scenario over
gloo is ``slow``.  In every run the real
records and the simulator's have the same (rank, op_index, group) keys.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from executors import get_executor
from executors.real import RealBackend, RealOptions, RealRunError, run_real
from executors.real.mpi import MPIExecutor
from executors.real.runner import MOVE_CHUNK_BYTES
from executors.real.torchdist import TorchExecutor
from workloads.ops import Collective, Compute, Irecv, Isend, Wait, op_to_dict
from workloads.scenario import load_scenario, read_scenario_file, scenario_from_dict

needs_mpi = pytest.mark.skipif(not MPIExecutor.is_available(), reason=MPIExecutor.unavailable_reason() or "-")
needs_torch = pytest.mark.skipif(not TorchExecutor.is_available(), reason=TorchExecutor.unavailable_reason() or "-")

SCENARIO = Path(__file__).resolve().parents[1] / "experiments" / "scenarios" / "gpt_real_small.yaml"
CHECKED = dict(check=True, warmup=0, repeats=1, timing="free", timeout_s=60.0)
KEYS = ["rank", "op_index", "group"]
TOPOLOGY4 = {"builder": "hierarchical", "levels": [2, 2], "bandwidths_bytes_per_s": [5.0e9, 2.0e9],
             "latencies_s": [5.0e-6, 2.0e-5], "flops_per_s": 1.0e10}


def variant(name: str, topology: dict | None = None, **workload):
    """gpt_real_small with some workload fields changed (and another topology)."""
    data = read_scenario_file(SCENARIO)
    data["name"] = name
    data["workload"] = {**data["workload"], **workload}
    if topology is not None:
        data["topology"] = topology
    return scenario_from_dict(data)


def dense4():
    return variant("dense4", TOPOLOGY4, tp=2, pp=2, dp=1, global_batch=4, sequence_parallel=True)


MOE_MODEL = {"name": "moe", "layers": 2, "hidden": 64, "heads": 4, "seq_len": 32, "vocab": 256, "experts": 4,
             "top_k": 2}


def moe4():
    return variant("moe4", TOPOLOGY4, model=MOE_MODEL, tp=1, pp=1, dp=4, ep=2, zero=3, global_batch=8)


def moe8():
    """8 ranks: pp=2, dp=4, ep=2 (so edp=2), ZeRO-3, on gpt_real_small's topology."""
    return variant("moe8", model=MOE_MODEL, tp=1, pp=2, dp=4, ep=2, zero=3, global_batch=8)


def back_to_back(name: str, topology: dict, *parts):
    """One ``programs`` scenario on ``topology`` that runs each part's programs in turn: part i's groups
    and handles renamed with suffix / prefix ``i`` so that they never meet."""
    nranks = parts[0].nranks
    groups: dict[str, list[list[int]]] = {}
    ranks: list[list[dict]] = [[] for _ in range(nranks)]
    for i, part in enumerate(parts):
        assert part.nranks == nranks
        # Only the groups the part's operations use: each group costs every rank a set-up (torch's new_group).
        used = {getattr(op, "group", "") for program in part.programs() for op in program}
        for group, family in part.groups.explicit().items():
            if group in used:
                groups[f"{group}{i}"] = family

        def renamed(op):
            changes = {}
            if hasattr(op, "group") and op.group:
                changes["group"] = f"{op.group}{i}"
            if isinstance(op, (Isend, Irecv)) or (isinstance(op, Collective) and op.handle):
                changes["handle"] = f"p{i}{op.handle}"
            if isinstance(op, Wait):
                changes["handles"] = tuple(f"p{i}{h}" for h in op.handles)
            return dataclasses.replace(op, **changes) if changes else op

        for rank, program in enumerate(part.programs()):
            ranks[rank] += [op_to_dict(renamed(op)) for op in program]
    return scenario_from_dict({"name": name, "topology": topology, "groups": groups,
                               "workload": {"kind": "programs", "ranks": ranks}})


def assert_keys_match_simulation(result, scenario, groups: set):
    sim = get_executor("sim").run(scenario).records
    real = result.records[result.records["repeat"] == 0]
    assert len(real) == sum(len(p) for p in scenario.programs())
    assert sorted(map(tuple, real[KEYS].values.tolist())) == sorted(map(tuple, sim[KEYS].values.tolist()))
    columns = KEYS + ["kind", "peer", "nbytes", "flops"]
    assert sorted(map(tuple, real[columns].values.tolist())) == sorted(map(tuple, sim[columns].values.tolist()))
    assert set(real["group"]) >= groups
    assert result.summary["timing"] == "free"
    assert (result.per_rank[["compute_s", "comm_s", "wait_s"]] >= 0).all().all()


# -- the programs (no processes) --------------------------------------------------------------


def test_the_small_scenario_has_every_kind_of_operation_the_transformer_emits():
    scenario = load_scenario(SCENARIO)
    assert scenario.nranks == 8
    kinds = {(type(op).__name__, getattr(op, "op", ""), getattr(op, "group", ""), bool(getattr(op, "blocking", 1)))
             for program in scenario.programs() for op in program}
    assert ("Collective", "allreduce", "tp", True) in kinds
    assert ("Collective", "allreduce", "dp", False) in kinds  # DP buckets, in flight together
    assert {("Isend", "", "pp", True), ("Irecv", "", "pp", True)} <= kinds
    program = scenario.programs()[0]
    assert any(isinstance(op, Compute) and op.flops == 0 and op.nbytes > 0 for op in program)
    # Each isend or irecv on pp has a tag of its own (micro-batch and direction).
    tags = [(type(op), op.tag) for op in program if isinstance(op, (Isend, Irecv))]
    assert len(tags) == len(set(tags)) > 1
    # Milliseconds of compute on a CPU, not seconds: a rank's FLOPs per step.
    assert max(sum(op.flops for op in p if isinstance(op, Compute)) for p in scenario.programs()) < 5e7
    assert dense4().nranks == moe4().nranks == 4 and moe8().nranks == 8


@pytest.mark.parametrize("executor", [MPIExecutor, TorchExecutor])
def test_aligned_timing_is_refused_before_any_process_starts(executor):
    # Pipeline stages run different programs, with isends, irecvs and DP buckets in flight.
    with pytest.raises(RealRunError, match="aligned.*would deadlock: the ranks run different numbers of operations"):
        executor(RealOptions(timing="aligned", timeout_s=1.0)).run(load_scenario(SCENARIO))


class _CopyCounter(RealBackend):
    """Rank 0 of a pretend 2-rank run in-process that counts the bytes its copies move."""

    name = "copies"

    def __init__(self):
        self.rank, self.size = 0, 2
        self.copied = 0
        self.products = 0

    def barrier(self):
        pass

    def buffer(self, nbytes):
        return np.zeros(nbytes, dtype=np.uint8)

    def fill(self, buf, value):
        buf.fill(value % 256)

    def to_numpy(self, buf):
        return buf

    def send(self, buf, peer, tag):
        raise AssertionError("no communication in this test")

    recv = isend = irecv = collective = send

    def waitall(self, requests):
        pass

    def add_(self, dst, src):
        np.add(dst, src, out=dst)

    def copy_(self, dst, src):
        assert len(dst) == len(src)
        dst[...] = src
        self.copied += len(dst)

    def matmul(self, rows):
        self.products += 1

    def gather(self, obj):
        return [obj]

    def share(self, obj):
        return obj


def test_a_memory_bound_compute_copies_its_bytes_in_bounded_pieces():
    big = 3 * MOVE_CHUNK_BYTES + 1001  # bytes read plus written
    ops = [{"kind": "compute", "flops": 0, "nbytes": big}, {"kind": "compute", "flops": 0, "nbytes": 10},
           {"kind": "compute", "flops": 0}, {"kind": "compute", "flops": 2.0e6, "nbytes": 4096}]
    scenario = scenario_from_dict({"name": "copies", "topology": {"builder": "switch", "n": 2},
                                   "workload": {"kind": "programs", "ranks": [ops, ops]}})
    backend = _CopyCounter()
    result = run_real(backend, scenario, RealOptions(warmup=0, repeats=1))
    # Half of nbytes is read and half written; a compute with FLOPs runs products, not copies.
    assert backend.copied == big // 2 + 5
    assert backend.products > 0
    records = result.records.set_index("op_index")
    assert records.loc[0, "nbytes"] == big and records.loc[0, "flops"] == 0
    assert len(records) == 4


# -- MPI --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["native", "algorithm"])
@pytest.mark.mpi
@needs_mpi
def test_mpi_gpt_real_small_runs_checked(mode):
    # Native: the scenario file as it is; algorithm: its programs, then an MoE step's (one launch).
    scenario = load_scenario(SCENARIO)
    groups = {"tp", "pp", "dp"}
    if mode == "algorithm":
        scenario, groups = back_to_back("gpt-then-moe", read_scenario_file(SCENARIO)["topology"], scenario, moe8()), {"tp0", "pp0", "dp0", "pp1", "ep1", "edp1"}
    result = MPIExecutor(RealOptions(mode=mode, **CHECKED)).run(scenario)
    assert_keys_match_simulation(result, scenario, groups)
    assert result.summary["mode"] == mode
    if mode == "algorithm":
        assert {"alltoall", "allgather", "reduce_scatter"} <= set(result.records["kind"])


# -- torch (gloo) -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["native", "algorithm"])
@pytest.mark.torch
@needs_torch
def test_torch_dense_and_moe_steps_run_checked(mode):
    # One launch per mode (gloo's start-up is most of the time): a dense step, then an MoE step.
    scenario = back_to_back(f"dense-moe-{mode}", TOPOLOGY4, dense4(), moe4())
    result = TorchExecutor(RealOptions(mode=mode, **CHECKED)).run(scenario)
    assert_keys_match_simulation(result, scenario, {"tp0", "pp0", "dp1", "ep1", "edp1"})
    real = result.records
    assert {"allgather", "reduce_scatter", "alltoall", "isend", "irecv"} <= set(real["kind"])


@pytest.mark.parametrize("mode", ["native", "algorithm"])
@pytest.mark.torch
@pytest.mark.slow
@needs_torch
def test_torch_gpt_real_small_runs_checked(mode):
    scenario = load_scenario(SCENARIO)
    result = TorchExecutor(RealOptions(mode=mode, **CHECKED)).run(scenario)
    assert_keys_match_simulation(result, scenario, {"tp", "pp", "dp"})
