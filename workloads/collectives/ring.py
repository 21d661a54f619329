"""Ring algorithms: every rank sends to r+1 and receives from r-1, a block or the whole vector per hop."""
from __future__ import annotations

from typing import Iterator

from workloads.collectives.layouts import block_edges
from workloads.collectives.registry import lowerer
from workloads.collectives.steps import Step, Transfer


def ring_reduce_scatter(
    i: int, p: int, edges: tuple[int, ...], left: int, right: int
) -> Iterator[Step]:
    # Block (i-k-1) goes right at step k; after p-1 steps block i is complete here.
    for k in range(p - 1):
        s = (i - k - 1) % p
        q = (i - k - 2) % p
        yield Step(
            (Transfer(right, edges[s + 1] - edges[s], edges[s], False),),
            (Transfer(left, edges[q + 1] - edges[q], edges[q], True),),
        )


def ring_allgather(
    i: int, p: int, edges: tuple[int, ...], left: int, right: int
) -> Iterator[Step]:
    # Position i starts with block i and forwards what it received last step.
    for k in range(p - 1):
        s = (i - k) % p
        q = (i - k - 1) % p
        yield Step(
            (Transfer(right, edges[s + 1] - edges[s], edges[s], False),),
            (Transfer(left, edges[q + 1] - edges[q], edges[q], False),),
        )


@lowerer("allreduce", "ring")
def _allreduce_ring(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    edges = block_edges(nbytes, p)
    left, right = (r - 1) % p, (r + 1) % p
    yield from ring_reduce_scatter(r, p, edges, left, right)
    yield from ring_allgather(r, p, edges, left, right)


@lowerer("broadcast", "ring")
def _broadcast_ring(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    # A chain root -> root+1 -> ... -> root+p-1, whole message per hop.
    rel = (r - root) % p
    if rel > 0:
        yield Step((), (Transfer((r - 1) % p, nbytes, 0, False),))
    if rel < p - 1:
        yield Step((Transfer((r + 1) % p, nbytes, 0, False),), ())


@lowerer("reduce", "ring")
def _reduce_ring(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    # A chain root+1 -> root+2 -> ... -> root+p-1 -> root, every hop to r+1
    # (the ring direction of the other ring algorithms), reducing on the way.
    rel = (r - root) % p
    if rel != 1:
        yield Step((), (Transfer((r - 1) % p, nbytes, 0, True),))
    if rel != 0:
        yield Step((Transfer((r + 1) % p, nbytes, 0, False),), ())


@lowerer("allgather", "ring")
def _allgather_ring(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    yield from ring_allgather(r, p, block_edges(nbytes, p), (r - 1) % p, (r + 1) % p)


@lowerer("reduce_scatter", "ring")
def _reduce_scatter_ring(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    yield from ring_reduce_scatter(r, p, block_edges(nbytes, p), (r - 1) % p, (r + 1) % p)
