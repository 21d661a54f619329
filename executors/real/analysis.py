"""What a program allows: whether a barrier before every operation is safe."""
from __future__ import annotations

from workloads.ops import Collective, Recv, Send, Wait

def aligned_problem(programs) -> str | None:
    """Why a barrier before every operation would deadlock these programs, or None.

    Aligned timing needs every rank to run the same number of operations, no
    non-blocking ones, and every send at index i matched by its receive at the
    same index on the peer (a barrier between them would wait forever).
    """
    if len({len(p) for p in programs}) != 1:
        return "the ranks run different numbers of operations"
    # Indices at which some rank runs a collective: every rank must run one there.
    for index in range(len(programs[0]) if programs else 0):
        kinds = {isinstance(p[index], Collective) for p in programs}
        if kinds == {True, False}:
            return f"op {index} is a collective on some ranks but not on every rank"
    for rank, program in enumerate(programs):
        for index, op in enumerate(program):
            if isinstance(op, Wait) or (isinstance(op, Collective) and not op.blocking):
                return f"rank {rank} op {index} is non-blocking"
            if isinstance(op, (Send, Recv)):
                other = programs[op.peer][index]
                want = Recv if isinstance(op, Send) else Send
                if not (isinstance(other, want) and other.peer == rank and other.tag == op.tag):
                    return (f"rank {rank} op {index} ({op.kind} with rank {op.peer}) is not matched by "
                            f"rank {op.peer} op {index}")
    return None


def choose_timing(programs, timing: str) -> str:
    """'aligned' where it is valid (``aligned_problem``), else 'free'; an explicit choice stays."""
    if timing != "auto":
        return timing
    return "free" if aligned_problem(programs) else "aligned"
