"""Recursive doubling and halving, and Rabenseifner's algorithms built from them (Thakur et al. sec. 4).

They pair ranks at distances that are powers of two; a p that is not a
power of two first folds to one (``_fold``) and unfolds at the end.
"""
from __future__ import annotations

from typing import Iterator

from workloads.collectives.layouts import block_edges
from workloads.collectives.registry import lowerer
from workloads.collectives.steps import Step, Transfer


def _fold(p: int) -> tuple[int, int]:
    # MPICH's non-power-of-two scheme: p' = largest power of two <= p, and the
    # first 2*rem ranks pair up (even ones drop out, odd ones stand for both).
    pof2 = 1 << (p.bit_length() - 1)
    return pof2, p - pof2


def _newrank(r: int, rem: int) -> int:
    if r < 2 * rem:
        return r // 2 if r & 1 else -1
    return r - rem


def _oldrank(n: int, rem: int) -> int:
    return 2 * n + 1 if n < rem else n + rem


def _first(n: int, rem: int) -> int:
    # First real rank represented by survivor n; survivors [a, b) stand for
    # real ranks [_first(a), _first(b)), always a contiguous run.
    return n + (n if n < rem else rem)


def _fold_in(r: int, rem: int, nbytes: int, offset: int = 0, reduce: bool = True) -> Iterator[Step]:
    if r < 2 * rem:
        if r & 1:
            yield Step((), (Transfer(r - 1, nbytes, offset, reduce),))
        else:
            yield Step((Transfer(r + 1, nbytes, offset, False),), ())


def _fold_out(r: int, rem: int, nbytes: int, offset: int = 0) -> Iterator[Step]:
    if r < 2 * rem:
        if r & 1:
            yield Step((Transfer(r - 1, nbytes, offset, False),), ())
        else:
            yield Step((), (Transfer(r + 1, nbytes, offset, False),))


def _halving(newrank: int, pof2: int, rem: int, edges: tuple[int, ...], blocks_of) -> Iterator[Step]:
    # Recursive halving (Thakur sec. 4.3): distance pof2/2 first, so survivor n
    # ends holding the reduced blocks blocks_of(n)..blocks_of(n+1).
    lo, hi = 0, pof2
    dist = pof2 >> 1
    while dist:
        dst = _oldrank(newrank ^ dist, rem)
        mid = lo + dist
        if newrank & dist:
            slo, shi, lo = lo, mid, mid
        else:
            slo, shi, hi = mid, hi, mid
        a, b = edges[blocks_of(slo)], edges[blocks_of(shi)]
        c, d = edges[blocks_of(lo)], edges[blocks_of(hi)]
        yield Step((Transfer(dst, b - a, a, False),), (Transfer(dst, d - c, c, True),))
        dist >>= 1


def _doubling_gather(newrank: int, pof2: int, rem: int, edges: tuple[int, ...], blocks_of) -> Iterator[Step]:
    # Recursive doubling allgather: at distance d survivor n holds the aligned
    # run of d survivors containing n and swaps it for its partner's run.
    dist = 1
    while dist < pof2:
        partner = newrank ^ dist
        dst = _oldrank(partner, rem)
        mine = newrank & ~(dist - 1)
        theirs = partner & ~(dist - 1)
        a, b = edges[blocks_of(mine)], edges[blocks_of(mine + dist)]
        c, d = edges[blocks_of(theirs)], edges[blocks_of(theirs + dist)]
        yield Step((Transfer(dst, b - a, a, False),), (Transfer(dst, d - c, c, False),))
        dist <<= 1


def _identity(n: int) -> int:
    return n


@lowerer("allreduce", "recursive_doubling")
def _allreduce_recursive_doubling(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    pof2, rem = _fold(p)
    yield from _fold_in(r, rem, nbytes)
    newrank = _newrank(r, rem)
    if newrank >= 0:
        mask = 1
        while mask < pof2:
            dst = _oldrank(newrank ^ mask, rem)
            yield Step((Transfer(dst, nbytes, 0, False),), (Transfer(dst, nbytes, 0, True),))
            mask <<= 1
    yield from _fold_out(r, rem, nbytes)


@lowerer("allreduce", "rabenseifner")
def _allreduce_rabenseifner(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    pof2, rem = _fold(p)
    yield from _fold_in(r, rem, nbytes)
    newrank = _newrank(r, rem)
    if newrank >= 0:
        edges = block_edges(nbytes, pof2)
        yield from _halving(newrank, pof2, rem, edges, _identity)
        yield from _doubling_gather(newrank, pof2, rem, edges, _identity)
    yield from _fold_out(r, rem, nbytes)


@lowerer("reduce", "rabenseifner")
def _reduce_rabenseifner(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    # Reduce-scatter by recursive halving, then a binomial gather to the root.
    # The gather tree pairs survivors by XOR with the root's survivor number,
    # so every subtree holds an aligned, contiguous run of blocks.  A root that
    # dropped out in the fold gets the result from its partner at the end.
    pof2, rem = _fold(p)
    yield from _fold_in(r, rem, nbytes)
    newrank = _newrank(r, rem)
    root_dropped = root < 2 * rem and not root & 1
    newroot = _newrank(root + 1 if root_dropped else root, rem)
    if newrank >= 0:
        edges = block_edges(nbytes, pof2)
        yield from _halving(newrank, pof2, rem, edges, _identity)
        rel = newrank ^ newroot
        mask = 1
        while mask < pof2:
            partner = newrank ^ mask
            dst = _oldrank(partner, rem)
            if rel & mask:
                lo = newrank & ~(mask - 1)
                yield Step((Transfer(dst, edges[lo + mask] - edges[lo], edges[lo], False),), ())
                break
            lo = partner & ~(mask - 1)
            yield Step((), (Transfer(dst, edges[lo + mask] - edges[lo], edges[lo], False),))
            mask <<= 1
    if root_dropped:
        if r == root + 1:
            yield Step((Transfer(root, nbytes, 0, False),), ())
        elif r == root:
            yield Step((), (Transfer(root + 1, nbytes, 0, False),))


@lowerer("allgather", "recursive_doubling")
def _allgather_recursive_doubling(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    # Folded ranks hand their block to their partner; survivor n then stands
    # for real ranks [_first(n), _first(n+1)), so the blocks an aligned run of
    # survivors holds are one contiguous run and each step is one transfer.
    pof2, rem = _fold(p)
    edges = block_edges(nbytes, p)
    if r < 2 * rem:
        if r & 1:
            yield Step((), (Transfer(r - 1, edges[r] - edges[r - 1], edges[r - 1], False),))
        else:
            yield Step((Transfer(r + 1, edges[r + 1] - edges[r], edges[r], False),), ())
    newrank = _newrank(r, rem)
    if newrank >= 0:
        yield from _doubling_gather(newrank, pof2, rem, edges, lambda n: _first(n, rem))
    yield from _fold_out(r, rem, nbytes)


@lowerer("reduce_scatter", "recursive_halving")
def _reduce_scatter_recursive_halving(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    # MPICH MPIR_Reduce_scatter_intra_recursive_halving: fold whole vectors,
    # halve among survivors over the blocks of the ranks each one stands for,
    # then each survivor hands its dropped partner that partner's block.
    pof2, rem = _fold(p)
    edges = block_edges(nbytes, p)
    yield from _fold_in(r, rem, nbytes)
    newrank = _newrank(r, rem)
    if newrank >= 0:
        yield from _halving(newrank, pof2, rem, edges, lambda n: _first(n, rem))
    if r < 2 * rem:
        even = r & ~1
        yield from _fold_out(r, rem, edges[even + 1] - edges[even], edges[even])
