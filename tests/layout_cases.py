"""Random parallel layouts on symmetric machines, for the tests of symmetric rank classes."""
from __future__ import annotations

import numpy as np

from topologies import LinkSpec, gpu_cluster, hierarchical, switch
from workloads.groups import Layout, ProcessGroups
from workloads.ops import Collective, Compute, Irecv, Isend, Recv, Send, Wait


def layout_groups(n: int, tp: int, pp: int) -> ProcessGroups:
    layout = Layout(tp, pp, n // (tp * pp)).resolve(n, "test")
    return ProcessGroups(n, layout.groups(), layout=layout)


def stage_programs(rng, pp: int, ops: int) -> list[list]:
    """One program per pipeline stage: computes, ring collectives on tp and dp, messages down the pipe."""
    programs = [[] for _ in range(pp)]
    for phase in range(ops):
        for s in range(pp):
            programs[s].append(Compute(float(rng.choice([0.0, 1e5, 3e6])) * (1 + s % 2)))
        kind = rng.integers(4)
        if kind == 0:
            op = str(rng.choice(["allreduce", "allgather", "reduce_scatter"]))
            nbytes = int(rng.choice([1000, 65536, 1_000_003]))
            group = str(rng.choice(["tp", "dp"]))
            for s in range(pp):
                programs[s].append(Collective(op, nbytes, algorithm="ring", group=group))
        elif kind == 1 and pp > 1:
            nbytes = int(rng.choice([100, 2_000_000]))
            for s in range(pp - 1):
                programs[s].append(Send(s + 1, nbytes, tag=phase, group="pp"))
                programs[s + 1].append(Recv(s, nbytes, tag=phase, group="pp"))
        elif kind == 2:
            nbytes = int(rng.choice([4096, 3_000_000]))
            for s in range(pp):
                programs[s] += [Collective("allreduce", nbytes, algorithm="ring", group="dp", blocking=False,
                                           handle=f"h{phase}"), Compute(2e6), Wait((f"h{phase}",))]
        elif kind == 3 and pp > 1:
            nbytes = int(rng.choice([100, 500_000]))
            for s in range(pp):
                ops_ = []
                if s + 1 < pp:
                    ops_.append(Isend(s + 1, nbytes, tag=1000 + phase, group="pp", handle=f"s{phase}"))
                if s > 0:
                    ops_.append(Irecv(s - 1, nbytes, tag=1000 + phase, group="pp", handle=f"r{phase}"))
                handles = tuple(o.handle for o in ops_)
                programs[s] += ops_ + ([Wait(handles)] if handles else [])
    return programs


def random_layout_case(case: int):
    """(topology, programs, simulator keywords) of a random layout on a symmetric machine."""
    rng = np.random.default_rng(5000 + case)
    tp = int(rng.choice([1, 2, 4]))
    pp = int(rng.choice([1, 2, 3]))
    dp = int(rng.choice([1, 2, 3, 4]))
    n = tp * pp * dp
    shape = int(rng.integers(3))
    if shape == 0 and n >= 2:
        topo = switch(n, link=LinkSpec(float(rng.choice([1e9, 1e10])), latency_s=2e-6))
    elif shape == 1 and tp > 1:
        topo = hierarchical([n // tp, tp], links=[LinkSpec(4e10, latency_s=1e-6), LinkSpec(1e10, latency_s=3e-6)])
    else:
        topo = gpu_cluster(n // tp if tp > 1 else n, gpus_per_node=tp if tp > 1 else 1,
                           fabric=str(rng.choice(["rail_optimized", "fat_tree"])), nics_per_leaf=4)
    n = topo.nranks
    groups = layout_groups(n, tp, pp)
    per_stage = stage_programs(rng, pp, int(rng.integers(2, 7)))
    layout = groups.layout
    programs = [list(per_stage[layout.coordinates(r)["pp"]]) for r in range(n)]
    return topo, programs, dict(seed=case, process_groups=groups)


def spanning_layout_case(case: int):
    """(topology, programs, simulator keywords) of a layout whose data-parallel groups span leaf switches,
    so that a group folds to several representatives, with pipeline messages that cross its rings' links
    while they run (collectives computed whole, then handed back)."""
    rng = np.random.default_rng(9000 + case)
    tp = int(rng.choice([1, 2]))
    pp = int(rng.choice([2, 3]))
    dp = int(rng.choice([4, 6, 8]))
    topo = gpu_cluster(pp * dp, gpus_per_node=tp, fabric=str(rng.choice(["rail_optimized", "fat_tree"])),
                       nics_per_leaf=int(rng.choice([1, 2, 4])))
    n = topo.nranks
    groups = layout_groups(n, tp, pp)
    programs_by_stage = [[] for _ in range(pp)]
    for phase in range(int(rng.integers(3, 7))):
        # Sizes every group size here divides, so that the rings turn with their groups.
        nbytes = int(rng.choice([48, 4800, 480_000, 4_800_000]))
        op = str(rng.choice(["allreduce", "allgather", "reduce_scatter"]))
        message = int(rng.choice([0, 100, 300_000, 3_000_000]))  # 0: no message in this phase
        buckets = int(rng.integers(1, 4))
        for s in range(pp):
            program = programs_by_stage[s]
            program.append(Compute(float(rng.choice([0.0, 1e5, 2e6])) * (1 + s)))
            # Buckets: collectives on one ring back to back, each started as its rank ends the one before.
            handles = tuple(f"d{phase}b{b}" for b in range(buckets))
            program += [Collective(op, nbytes, algorithm="ring", group="dp", blocking=False, handle=h)
                        for h in handles]
            if s + 1 < pp and message:
                program.append(Send(s + 1, message, tag=phase, group="pp"))
            if s > 0 and message:
                program.append(Recv(s - 1, message, tag=phase, group="pp"))
            program.append(Wait(handles))
    layout = groups.layout
    programs = [list(programs_by_stage[layout.coordinates(r)["pp"]]) for r in range(n)]
    return topo, programs, dict(seed=case, process_groups=groups)
