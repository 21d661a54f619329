"""Binomial-tree algorithms: a tree rooted at the root, whole vectors for broadcast and reduce, each
subtree's contiguous run of blocks for scatter, gather and the allgather's gather."""
from __future__ import annotations

from typing import Iterator

from workloads.collectives.layouts import block_edges, rotated_edges
from workloads.collectives.registry import lowerer
from workloads.collectives.ring import ring_allgather
from workloads.collectives.steps import Step, Transfer


@lowerer("broadcast", "binomial")
def broadcast_binomial(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    # MPICH MPIR_Bcast_intra_binomial: receive from the parent (relative rank
    # minus its lowest set bit), then send to children, farthest first.
    rel = (r - root) % p
    mask = 1
    while mask < p:
        if rel & mask:
            yield Step((), (Transfer((r - mask) % p, nbytes, 0, False),))
            break
        mask <<= 1
    mask >>= 1
    while mask:
        if rel + mask < p:
            yield Step((Transfer((r + mask) % p, nbytes, 0, False),), ())
        mask >>= 1


@lowerer("reduce", "binomial")
def reduce_binomial(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    # MPICH MPIR_Reduce_intra_binomial: receive from children nearest first,
    # then send the partial result to the parent.
    rel = (r - root) % p
    mask = 1
    while mask < p:
        if rel & mask:
            yield Step((Transfer((r - mask) % p, nbytes, 0, False),), ())
            return
        if rel + mask < p:
            yield Step((), (Transfer((r + mask) % p, nbytes, 0, True),))
        mask <<= 1


@lowerer("allreduce", "binomial")
def _allreduce_binomial(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    yield from reduce_binomial(r, p, nbytes, 0)
    yield from broadcast_binomial(r, p, nbytes, 0)


@lowerer("broadcast", "scatter_allgather")
def _broadcast_scatter_allgather(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    # van de Geijn: binomial scatter (relative rank i gets block i, a subtree
    # gets its contiguous run of blocks), then ring allgather.
    rel = (r - root) % p
    edges = block_edges(nbytes, p)
    yield from _binomial_scatter(r, p, rel, edges)
    yield from ring_allgather(rel, p, edges, (r - 1) % p, (r + 1) % p)


@lowerer("allgather", "binomial")
def _allgather_binomial(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    # Binomial gather to rank 0 (rank r's subtree holds blocks r..r+mask-1),
    # then binomial broadcast of the whole vector.
    edges = block_edges(nbytes, p)
    mask = 1
    while mask < p:
        if r & mask:
            hi = min(r + mask, p)
            yield Step((Transfer(r - mask, edges[hi] - edges[r], edges[r], False),), ())
            break
        src = r + mask
        if src < p:
            hi = min(src + mask, p)
            yield Step((), (Transfer(src, edges[hi] - edges[src], edges[src], False),))
        mask <<= 1
    yield from broadcast_binomial(r, p, nbytes, 0)


@lowerer("scatter", "binomial")
def _scatter_binomial(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    # MPICH MPIR_Scatter_intra_binomial.  Thakur et al.: lg p alpha + (p-1)/p n beta.
    yield from _binomial_scatter(r, p, (r - root) % p, rotated_edges(nbytes, p, root))


def _binomial_scatter(r: int, p: int, rel: int, edges: tuple[int, ...]) -> Iterator[Step]:
    # Receive the subtree's blocks (relative ranks rel .. rel + lowbit(rel) - 1,
    # at edges[rel:]) from the parent, then hand each child its subtree's
    # blocks, farthest first.
    mask = 1
    while mask < p:
        if rel & mask:
            hi = min(rel + mask, p)
            yield Step((), (Transfer((r - mask) % p, edges[hi] - edges[rel], edges[rel], False),))
            break
        mask <<= 1
    mask >>= 1
    while mask:
        lo = rel + mask
        if lo < p:
            hi = min(lo + mask, p)
            yield Step((Transfer((r + mask) % p, edges[hi] - edges[lo], edges[lo], False),), ())
        mask >>= 1


@lowerer("gather", "binomial")
def _gather_binomial(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    # MPICH MPIR_Gather_intra_binomial: collect the children's subtrees,
    # nearest first, then send the whole subtree's run to the parent.
    rel = (r - root) % p
    edges = rotated_edges(nbytes, p, root)
    mask = 1
    while mask < p:
        if rel & mask:
            hi = min(rel + mask, p)
            yield Step((Transfer((r - mask) % p, edges[hi] - edges[rel], edges[rel], False),), ())
            return
        src = rel + mask
        if src < p:
            hi = min(src + mask, p)
            yield Step((), (Transfer((r + mask) % p, edges[hi] - edges[src], edges[src], False),))
        mask <<= 1
