"""Checks per-rank programs before any backend runs them."""
from __future__ import annotations

from typing import Sequence

from topologies.limits import short, short_names
from workloads.collectives import check as check_collective
from workloads.ops import Collective, Compute, Operation, Recv, Send, Wait


def validate_programs(programs: Sequence[Sequence[Operation]], nranks: int, groups=None) -> None:
    """Raise ValueError naming the rank, the op index and what is wrong."""
    if len(programs) != nranks:
        raise ValueError(f"workload has {len(programs)} rank programs but the topology has {nranks} ranks")
    checked: set = set()
    for rank, program in enumerate(programs):
        handles: set[str] = set()
        for index, op in enumerate(program):
            where = f"rank {rank} op {index} ({getattr(op, 'kind', type(op).__name__)})"
            if isinstance(op, (Send, Recv)):
                if op.peer >= nranks:
                    raise ValueError(f"{where}: peer {op.peer} is not a rank (there are {nranks})")
                if op.peer == rank:
                    raise ValueError(f"{where}: a rank cannot {op.kind} to itself")
            elif isinstance(op, Collective):
                key = (op.op, op.algorithm, op.root, op.inter_algorithm)
                if key not in checked:
                    try:
                        check_collective(op, nranks, groups)
                    except ValueError as exc:
                        raise ValueError(f"{where}: {exc}") from None
                    checked.add(key)
                if not op.blocking:
                    if op.handle in handles:
                        raise ValueError(f"{where}: handle {short(op.handle)} is already in use")
                    handles.add(op.handle)
            elif isinstance(op, Wait):
                missing = [h for h in op.handles if h not in handles]
                if missing:
                    raise ValueError(f"{where}: waits for unknown handle(s) {short_names(missing)}")
            elif not isinstance(op, Compute):
                raise ValueError(f"{where}: not an operation: {short(op)}")
