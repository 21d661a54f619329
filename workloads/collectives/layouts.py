"""Where each block of a collective's buffer lies: the cuts every lowering and every executor share."""
from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from topologies.text import short

if TYPE_CHECKING:  # the vocabulary imports this package, not the other way round
    from workloads.ops import Collective


def block_layout(nbytes: int, nparts: int) -> tuple[tuple[int, int], ...]:
    """``(offset, size)`` of each of ``nparts`` blocks of ``nbytes`` bytes.

    Sizes differ by at most one byte and the larger blocks come first, as in
    MPICH's reduce-scatter and scatter counts.
    """
    if not (isinstance(nbytes, int) and nbytes >= 0):
        raise ValueError(f"block_layout: nbytes must be an integer >= 0, got {short(nbytes)}")
    if not (isinstance(nparts, int) and nparts >= 1):
        raise ValueError(f"block_layout: nparts must be an integer >= 1, got {short(nparts)}")
    edges = block_edges(nbytes, nparts)
    return tuple((edges[i], edges[i + 1] - edges[i]) for i in range(nparts))


def alltoall_output_layout(nbytes: int, rank: int, nranks: int) -> tuple[tuple[int, int], ...]:
    """``(offset, size)`` of each block of ``rank``'s alltoall output buffer.

    Block j of the output is block ``rank`` of rank j's input, so every output
    block has the size of input block ``rank`` and the output buffer holds
    ``nranks`` times that (it equals ``nbytes`` when ``nranks`` divides
    ``nbytes``; otherwise this is MPI_Alltoallv with ``block_layout`` counts).
    The executor copies the rank's own block locally; it is not a transfer.
    """
    edges = block_edges(nbytes, nranks)
    size = edges[rank + 1] - edges[rank]
    return tuple((j * size, size) for j in range(nranks))


def scatter_layout(nbytes: int, nranks: int, root: int) -> tuple[tuple[int, int], ...]:
    """``(offset, size)`` of each rank's block in a scatter's or gather's buffer.

    Rank r's block has the size of ``block_layout`` block r, but the blocks
    lie in the order root, root+1, ..., root-1 (mod nranks), as MPICH rotates
    the root's buffer, so that every subtree of the binomial tree holds one
    contiguous run of bytes.  With root 0 this is ``block_layout``.
    """
    edges = rotated_edges(nbytes, nranks, root)
    return tuple((edges[(r - root) % nranks], edges[(r - root) % nranks + 1] - edges[(r - root) % nranks])
                 for r in range(nranks))


def exchange_layouts(op: "Collective", rank: int, nranks: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    """(input, output) layouts of ``rank``'s alltoall or alltoallv: ``(offset, size)`` of the
    block it sends to each rank and of the block it receives from each (its own block is a
    local copy, ``input[rank]`` to ``output[rank]``)."""
    if op.op == "alltoallv":
        return counts_layout(op.send_nbytes), counts_layout(op.recv_nbytes)
    if op.op == "alltoall":
        return block_layout(op.nbytes, nranks), alltoall_output_layout(op.nbytes, rank, nranks)
    raise ValueError(f"exchange_layouts: {op.op} is not an all-to-all")


def output_nbytes(op: "Collective", rank: int, nranks: int) -> int:
    """Bytes of the separate output buffer ``op`` writes on ``rank`` (alltoall, alltoallv), else 0."""
    if op.op == "alltoall":
        return sum(s for _, s in alltoall_output_layout(op.nbytes, rank, nranks))
    if op.op == "alltoallv":
        return sum(op.recv_nbytes)
    return 0


@lru_cache(maxsize=256)
def rotated_edges(nbytes: int, nranks: int, root: int) -> tuple[int, ...]:
    # edges[k]: offset of the block of relative rank k (rank (root + k) % nranks).
    plain = block_edges(nbytes, nranks)
    out = [0]
    for k in range(nranks):
        r = (root + k) % nranks
        out.append(out[-1] + plain[r + 1] - plain[r])
    return tuple(out)


def counts_layout(counts: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """``(offset, size)`` of per-rank counts laid end to end, as alltoallv's buffers hold them."""
    offsets = [0]
    for c in counts:
        offsets.append(offsets[-1] + c)
    return tuple((offsets[j], counts[j]) for j in range(len(counts)))


@lru_cache(maxsize=256)
def block_edges(nbytes: int, nparts: int) -> tuple[int, ...]:
    # edges[i] is the offset of block i; edges[nparts] == nbytes.
    base, extra = divmod(nbytes, nparts)
    return tuple(i * base + min(i, extra) for i in range(nparts + 1))
