"""How large a collective's lowering is, in closed form: what a workload's memory estimate counts
before any program is built."""
from __future__ import annotations

from workloads.collectives.semantics import DEFAULT_ALGORITHM


def _size_bound(op: str, algorithm: str, p: int) -> tuple[int, int]:
    # (steps, (rank, peer) pairs) over all p ranks; lg = ceil(lg p).  Upper
    # bounds read off the lowerers (ring, binomial, recursive, pairwise,
    # linear, dissemination; tests check them against lowering):
    # a binomial tree has p - 1 edges, each one step on either end; the
    # others are p times the busiest rank.
    if p <= 1:
        return 0, 0
    lg = (p - 1).bit_length()
    tree = 2 * (p - 1)
    per_rank = {
        ("allreduce", "ring"): (2 * (p - 1), 2),
        ("allreduce", "recursive_doubling"): (lg + 2, lg + 1),
        ("allreduce", "rabenseifner"): (2 * lg + 2, lg + 1),
        ("broadcast", "ring"): (2, 2),
        ("broadcast", "scatter_allgather"): (lg + p, lg + 3),
        ("reduce", "ring"): (2, 2),
        ("reduce", "rabenseifner"): (2 * lg + 3, lg + 2),
        ("allgather", "ring"): (p - 1, 2),
        ("allgather", "recursive_doubling"): (lg + 2, lg + 1),
        ("reduce_scatter", "ring"): (p - 1, 2),
        ("reduce_scatter", "recursive_halving"): (lg + 2, lg + 1),
        ("alltoall", "pairwise"): (p - 1, p - 1),
        ("alltoall", "ring"): (p - 1, p - 1),
        ("alltoallv", "pairwise"): (p - 1, p - 1),
        ("alltoallv", "ring"): (p - 1, p - 1),
        ("barrier", "dissemination"): (lg, 2 * lg),
        ("barrier", "recursive_doubling"): (lg, 2 * lg),
    }
    totals = {
        ("broadcast", "binomial"): (tree, tree),
        ("reduce", "binomial"): (tree, tree),
        ("allreduce", "binomial"): (2 * tree, tree),
        ("allgather", "binomial"): (2 * tree, tree),
        ("scatter", "binomial"): (tree, tree),
        ("gather", "binomial"): (tree, tree),
        # The root's one step holds p - 1 transfers; each other rank has one.
        ("scatter", "linear"): (tree, tree),
        ("gather", "linear"): (tree, tree),
    }
    if (op, algorithm) in totals:
        return totals[op, algorithm]
    # An unknown pair is reported by check(); size it like the largest.
    steps, peers = per_rank.get((op, algorithm), (2 * p, p))
    return steps * p, peers * p


def lowered_size(op: str, algorithm: str, nranks: int, groups=None, inter_algorithm: str = "ring") -> tuple[int, int]:
    """Upper bounds on one ``op`` collective's point-to-point steps and (rank, peer) pairs, over all ranks.

    Closed forms, never lowering: what the memory estimate of a workload
    counts before any program is built.  ``groups`` matters for the
    ``hierarchical`` all-reduce only.
    """
    algorithm = algorithm or DEFAULT_ALGORITHM.get(op, "")
    if algorithm == "hierarchical" and groups:
        steps = peers = 0
        for group in groups:
            s, q = _size_bound("allreduce", "binomial", len(group))
            steps, peers = steps + s, peers + q
        s, q = _size_bound("allreduce", inter_algorithm, len(groups))
        return steps + s, peers + q
    return _size_bound(op, algorithm, nranks)
