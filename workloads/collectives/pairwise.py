"""Pairwise exchange for the all-to-alls: at step k every rank sends to r+k and receives from r-k."""
from __future__ import annotations

from typing import Iterator

from workloads.collectives.layouts import block_edges, counts_layout
from workloads.collectives.registry import lowerer
from workloads.collectives.steps import Step, Transfer


@lowerer("alltoall", "pairwise")
def _alltoall_pairwise(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    edges = block_edges(nbytes, p)
    size = edges[r + 1] - edges[r]
    for k in range(1, p):
        dst = (r + k) % p
        src = (r - k) % p
        yield Step(
            (Transfer(dst, edges[dst + 1] - edges[dst], edges[dst], False),),
            (Transfer(src, size, src * size, False),),
        )


def alltoallv_pairwise(r: int, p: int, send: tuple[int, ...], recv: tuple[int, ...]) -> Iterator[Step]:
    # MPICH's pairwise exchange with per-peer counts: sends read the input
    # at the prefix sums of send, receives write the output at those of recv.
    # Its counts come from the op, not from (nbytes, root), so ``lower`` calls
    # it by name rather than through the registry.
    sends, recvs = counts_layout(send), counts_layout(recv)
    for k in range(1, p):
        dst = (r + k) % p
        src = (r - k) % p
        yield Step(
            (Transfer(dst, sends[dst][1], sends[dst][0], False),),
            (Transfer(src, recvs[src][1], recvs[src][0], False),),
        )
