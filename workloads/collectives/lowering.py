"""The entry point: the steps of one rank for one collective, on the world or on a group.

``lower(op, rank, nranks)`` yields the ``Step`` s of one rank, in order;
every executor runs exactly these steps (the simulator as flows, a real
backend as ``Isend``/``Irecv`` then ``Waitall``).
"""
from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Iterable, Iterator

from topologies.text import short
# Importing a family's module registers its algorithms in LOWERERS.
from workloads.collectives import binomial, dissemination, linear, recursive, ring  # noqa: F401
from workloads.collectives.checks import normalize_groups, validate
from workloads.collectives.hierarchical import group_plan, hierarchical_allreduce
from workloads.collectives.pairwise import alltoallv_pairwise
from workloads.collectives.registry import LOWERERS
from workloads.collectives.semantics import SEMANTICS
from workloads.collectives.steps import Groups, Step, renamed

if TYPE_CHECKING:  # the vocabulary imports this package, not the other way round
    from workloads.ops import Collective


def lower(
    op: Collective,
    rank: int,
    nranks: int,
    groups: Iterable[Iterable[int]] | None = None,
) -> Iterator[Step]:
    """The steps of ``rank`` for collective ``op`` over ``nranks`` ranks, in order.

    ``rank`` and the steps' peers are ranks 0..nranks-1 of the communicator
    the op runs on (its group; ``lower_in_group`` gives world ranks).
    Validates eagerly (``check``), then returns a lazy iterator.  ``groups``
    (a partition of the ranks into servers) is needed by the
    ``hierarchical`` all-reduce and ignored otherwise.  One rank yields
    nothing.
    """
    groups = normalize_groups(groups)
    validate(op, nranks, groups)
    if isinstance(rank, bool) or not (isinstance(rank, int) and 0 <= rank < nranks):
        raise ValueError(f"{op.op}: rank {short(rank)} out of range for {nranks} ranks")
    if nranks == 1:
        return iter(())
    if op.algorithm == "hierarchical":
        return hierarchical_allreduce(rank, op.nbytes, group_plan(groups), op.inter_algorithm)
    if op.op == "alltoallv":
        return alltoallv_pairwise(rank, nranks, op.send_nbytes, op.recv_nbytes)
    name = SEMANTICS[op.op].aliases.get(op.algorithm, op.algorithm)
    return LOWERERS[op.op, name](rank, nranks, op.nbytes, op.root)


@lru_cache(maxsize=1024)
def group_server_groups(members: tuple[int, ...], server_groups: Groups | None) -> Groups | None:
    """The topology's servers (groups of world ranks) seen from a communicator of
    ``members``: each server's members in the communicator, as group ranks, in
    group order; servers with none left out."""
    if server_groups is None:
        return None
    position = {r: i for i, r in enumerate(members)}
    out = []
    for server in server_groups:
        inside = sorted(position[r] for r in server if r in position)
        if inside:
            out.append(tuple(inside))
    return tuple(out)


def lower_in_group(
    op: Collective,
    members: tuple[int, ...],
    index: int,
    server_groups: Iterable[Iterable[int]] | None = None,
) -> Iterator[Step]:
    """``lower`` on the communicator of world ranks ``members`` (in group order),
    for the rank at position ``index``; the steps' peers are world ranks.

    The ring order is the group's order, and the ``hierarchical`` all-reduce
    uses the topology's servers (``server_groups``, world ranks) intersected
    with the group.
    """
    # Only the hierarchical all-reduce reads the servers (checking them costs 1 ms on 2,048 servers).
    local = group_server_groups(members, normalize_groups(server_groups)) if op.algorithm == "hierarchical" else None
    steps = lower(op, index, len(members), local)
    return steps if members == tuple(range(len(members))) else renamed(steps, members)
