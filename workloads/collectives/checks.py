"""Whether a collective can run on a communicator: ranks, algorithm, root, and the hierarchical partition."""
from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Iterable

from topologies.text import short
from workloads.collectives.semantics import ALGORITHMS, SEMANTICS
from workloads.collectives.steps import Groups

if TYPE_CHECKING:  # the vocabulary imports this package, not the other way round
    from workloads.ops import Collective


def check(op: Collective, nranks: int, groups: Iterable[Iterable[int]] | None = None) -> None:
    """Raise ValueError naming the problem if ``op`` cannot run on ``nranks`` ranks."""
    validate(op, nranks, normalize_groups(groups))


def validate(op: Collective, nranks: int, groups: Groups | None) -> None:
    """``check`` for groups already normalized (``normalize_groups``)."""
    if getattr(op, "op", None) not in SEMANTICS or not hasattr(op, "nbytes"):
        raise ValueError(f"collectives: expected a Collective, got {short(op)}")
    _check(op, nranks, groups)


def normalize_groups(groups) -> Groups | None:
    """``groups`` as a tuple of tuples (hashable, so checks and plans cache on it), or None."""
    if groups is None:
        return None
    try:
        normalized = tuple(tuple(g) for g in groups)
        hash(normalized)
    except TypeError:
        raise ValueError(f"groups must be a sequence of sequences of ranks, got {short(groups)}") from None
    return normalized


@lru_cache(maxsize=256)
def _check(op: Collective, nranks: int, groups: Groups | None) -> None:
    # Cached: every rank of a large run lowers the same op with the same groups.
    if isinstance(nranks, bool) or not (isinstance(nranks, int) and nranks >= 1):
        raise ValueError(f"{op.op}: nranks must be an integer >= 1, got {short(nranks)}")
    allowed = ALGORITHMS[op.op]
    if op.algorithm not in allowed:
        raise ValueError(
            f"{op.op}: unknown algorithm {short(op.algorithm)}; allowed: {', '.join(allowed)}"
        )
    if op.op == "alltoallv" and len(op.send_nbytes) != nranks:
        raise ValueError(f"alltoallv: send_nbytes and recv_nbytes need one count per rank of the group "
                         f"({nranks}), got {len(op.send_nbytes)}")
    if SEMANTICS[op.op].rooted and not (
        isinstance(op.root, int) and not isinstance(op.root, bool) and 0 <= op.root < nranks
    ):
        raise ValueError(f"{op.op}: root {short(op.root)} out of range for {nranks} ranks")
    if op.algorithm == "hierarchical":
        _check_hierarchical(op, nranks, groups)


def _check_hierarchical(op: Collective, nranks: int, groups: Groups | None) -> None:
    inter = [a for a in ALGORITHMS["allreduce"] if a != "hierarchical"]
    if op.inter_algorithm not in inter:
        raise ValueError(
            f"{op.op} hierarchical: unknown inter_algorithm {short(op.inter_algorithm)}; "
            f"allowed: {', '.join(inter)}"
        )
    if groups is None:
        raise ValueError(f"{op.op} hierarchical: needs groups (a partition of the ranks)")
    seen: set[int] = set()
    for g in groups:
        if not g:
            raise ValueError(f"{op.op} hierarchical: empty group in {short(groups)}")
        for r in g:
            if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r < nranks:
                raise ValueError(
                    f"{op.op} hierarchical: rank {short(r)} in groups is out of range for {nranks} ranks"
                )
            if r in seen:
                raise ValueError(f"{op.op} hierarchical: rank {r} is in more than one group")
            seen.add(r)
    if len(seen) != nranks:
        missing = sorted(set(range(nranks)) - seen)
        raise ValueError(f"{op.op} hierarchical: ranks {short(missing)} are in no group")
