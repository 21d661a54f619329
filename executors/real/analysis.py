"""What a program allows: whether a barrier before every operation is safe."""
from __future__ import annotations

from executors.real.options import RealRunError
from workloads.groups import WORLD, ProcessGroups
from workloads.ops import Collective, Recv, Send, Wait, is_nonblocking


def aligned_problem(programs, groups: ProcessGroups | None = None) -> str | None:
    """Why a barrier before every operation would deadlock these programs, or None.

    Aligned timing needs every rank to run the same number of operations, no
    non-blocking ones (collectives, isend, irecv, and their waits), every
    collective at index i matched by one on the same group at index i on every
    member of its group (a member that is elsewhere would finish its own index
    and wait in the next barrier forever), and every send at index i matched
    by its receive at the same index on the peer.  ``groups``: the scenario's
    process groups (the world only if None); peers and roots are group ranks.
    """
    if len({len(p) for p in programs}) != 1:
        return "the ranks run different numbers of operations"
    pg = groups if groups is not None else ProcessGroups(len(programs))
    # Indices at which some rank runs a collective: every rank must run one there.
    for index in range(len(programs[0]) if programs else 0):
        kinds = {isinstance(p[index], Collective) for p in programs}
        if kinds == {True, False}:
            return f"op {index} is a collective on some ranks but not on every rank"
    for rank, program in enumerate(programs):
        for index, op in enumerate(program):
            if isinstance(op, Wait) or is_nonblocking(op):
                return f"rank {rank} op {index} is non-blocking"
            on = f" of group {op.group}" if getattr(op, "group", WORLD) != WORLD else ""
            if isinstance(op, Collective):
                for member in pg.members(op.group, rank):
                    other = programs[member][index]
                    if not (isinstance(other, Collective) and other.group == op.group):
                        return (f"rank {rank} op {index} ({op.kind} on {op.group or 'the world'}) is not matched "
                                f"by rank {member} op {index}")
            if isinstance(op, (Send, Recv)):
                peer = pg.world_rank(op.group, rank, op.peer)
                other = programs[peer][index]
                want = Recv if isinstance(op, Send) else Send
                if not (isinstance(other, want) and other.group == op.group
                        and other.peer == pg.index(op.group, rank) and other.tag == op.tag):
                    return (f"rank {rank} op {index} ({op.kind} with rank {op.peer}{on}) is not matched by "
                            f"rank {peer} op {index}")
    return None


def choose_timing(programs, timing: str, groups: ProcessGroups | None = None) -> str:
    """'aligned' where it is valid (``aligned_problem``), else 'free'; an explicit choice stays."""
    if timing != "auto":
        return timing
    return "free" if aligned_problem(programs, groups) else "aligned"


def refuse_aligned(programs, timing: str, groups: ProcessGroups | None = None) -> None:
    """Raise RealRunError where ``timing`` is 'aligned' and a barrier before every operation would deadlock."""
    problem = aligned_problem(programs, groups) if timing == "aligned" else None
    if problem:
        raise RealRunError(f"timing 'aligned' (a barrier before every operation) would deadlock: {problem}; "
                           "use --timing free")
