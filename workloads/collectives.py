"""Collective algorithms lowered to the point-to-point steps each rank runs.

The algorithms and their names follow Thakur, Rabenseifner and Gropp (2005),
"Optimization of Collective Communication Operations in MPICH", and MPICH's
own implementations of them.  ``lower(op, rank, nranks)`` yields the
``Step`` s of one rank, in order; every executor runs exactly these steps (the
simulator as flows, a real backend as ``Isend``/``Irecv`` then ``Waitall``).

Buffer model.  Each rank has one buffer of ``op.nbytes`` bytes and every
collective works in place, except alltoall (see ``alltoall_output_layout``).
A send reads ``nbytes`` at ``offset``; a receive writes ``nbytes`` at
``offset``, adding to what is there when ``reduce`` is true.  Sends read the
buffer as it is when the step starts, receives land when the step ends, so a
reducing receive may cover bytes that the same step sends (the executor
receives into scratch and adds after the wait); an overwriting receive never
overlaps a send of its own step.  Where the vector is cut into blocks, the cut
is ``block_layout``: sizes differ by at most one byte, larger blocks first.

Matching.  Between an ordered pair of ranks the k-th send matches the k-th
receive (MPI's non-overtaking order), and every step is deadlock-free even if
sends complete only once the receiver has posted (rendezvous).  The message
pattern does not depend on ``nbytes``: blocks that come out empty, and
``nbytes == 0``, still travel as 0-byte transfers, so a collective of nothing
still synchronizes like the real one does.

Steps are plain NamedTuples built on the fly from precomputed block edges:
the simulator lowers ring all-reduce on 1024 ranks (2046 steps per rank) and
must never hold all ranks' steps at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, NamedTuple

from topologies.limits import short

if TYPE_CHECKING:  # the vocabulary imports this table, not the other way round
    from workloads.ops import Collective

__all__ = [
    "ALGORITHMS",
    "COLLECTIVES",
    "DEFAULT_ALGORITHM",
    "SEMANTICS",
    "Expectation",
    "Semantics",
    "Step",
    "Transfer",
    "alltoall_output_layout",
    "block_layout",
    "check",
    "exchange_layouts",
    "group_server_groups",
    "lower",
    "lower_in_group",
    "lowered_size",
    "output_nbytes",
    "root_peer",
    "scatter_layout",
]

class Transfer(NamedTuple):
    """One point-to-point transfer inside a lowered collective step.

    ``offset`` and ``nbytes`` locate the bytes in the rank's buffer.  A send
    reads the buffer; a receive writes it, combining with what is there when
    ``reduce`` is true.  Alltoall is the one collective with separate buffers:
    its sends read the input buffer and its receives write the output buffer.
    """

    peer: int
    nbytes: int
    offset: int = 0
    reduce: bool = False


class Step(NamedTuple):
    """Transfers that a rank starts together and waits for together.

    A step ends when all its sends are delivered and all its receives have
    arrived (``Isend``/``Irecv`` then ``Waitall`` in a real run).  Local
    copies (alltoall's own block) are the executor's business and cost nothing
    in the simulator.
    """

    sends: tuple[Transfer, ...] = ()
    recvs: tuple[Transfer, ...] = ()


class Expectation(NamedTuple):
    """Bytes a collective must leave behind when rank r started with every byte r + 1 (mod 256).

    ``where`` is ``"buffer"`` (the rank's in-place buffer) or ``"output"``
    (alltoall's separate output buffer); ``offset``/``nbytes`` locate them.
    """

    where: str
    offset: int
    nbytes: int
    value: int
    what: str


def _sum_of_fills(nranks: int) -> int:
    return sum(range(1, nranks + 1)) % 256


def _expect_allreduce(op, rank, nranks):
    nbytes = op.nbytes
    return [Expectation("buffer", 0, nbytes, _sum_of_fills(nranks), "the sum")]


def _expect_reduce(op, rank, nranks):
    nbytes, root = op.nbytes, op.root
    # Only the root's buffer is defined after a reduce.
    return [Expectation("buffer", 0, nbytes, _sum_of_fills(nranks), "the sum")] if rank == root else []


def _expect_broadcast(op, rank, nranks):
    nbytes, root = op.nbytes, op.root
    return [Expectation("buffer", 0, nbytes, (root + 1) % 256, "the root's data")]


def _expect_allgather(op, rank, nranks):
    nbytes = op.nbytes
    return [Expectation("buffer", off, size, (j + 1) % 256, f"block {j} from rank {j}")
            for j, (off, size) in enumerate(block_layout(nbytes, nranks))]


def _expect_reduce_scatter(op, rank, nranks):
    nbytes = op.nbytes
    off, size = block_layout(nbytes, nranks)[rank]
    return [Expectation("buffer", off, size, _sum_of_fills(nranks), f"the sum of block {rank}")]


def _expect_alltoall(op, rank, nranks):
    nbytes = op.nbytes
    return [Expectation("output", off, size, (j + 1) % 256, f"block {j} from rank {j}")
            for j, (off, size) in enumerate(alltoall_output_layout(nbytes, rank, nranks))]


def _expect_scatter(op, rank, nranks):
    # Rank r's block, where scatter_layout puts it, holds the root's data.
    off, size = scatter_layout(op.nbytes, nranks, op.root)[rank]
    return [Expectation("buffer", off, size, (op.root + 1) % 256, f"block {rank} from the root")]


def _expect_gather(op, rank, nranks):
    if rank != op.root:
        return []
    return [Expectation("buffer", off, size, (j + 1) % 256, f"block {j} from rank {j}")
            for j, (off, size) in enumerate(scatter_layout(op.nbytes, nranks, op.root))]


def _expect_alltoallv(op, rank, nranks):
    return [Expectation("output", off, size, (j + 1) % 256, f"block {j} from rank {j}")
            for j, (off, size) in enumerate(_counts_layout(op.recv_nbytes))]


def _expect_nothing(op, rank, nranks):
    return []


@dataclass(frozen=True)
class Semantics:
    """What one collective means, for every executor and every report.

    ``algorithms``: the names ``lower`` knows, the default first; ``aliases``
    maps another accepted name to the algorithm it runs.  ``rooted``: it has
    a root, which its records name as their ``peer``.  ``reduces``: it
    combines the ranks' data (a lowered step receives into scratch and adds).
    ``writes_output``: the library's own call writes a separate output buffer
    (alltoall's result, reduce-scatter's block).  ``busbw_factor(n)``: busbw /
    algbw as nccl-tests define it, None where bandwidth means nothing.
    ``expected(op, rank, nranks)``: the ``Expectation`` s a checked run
    verifies (``rank`` and ``nranks`` within the op's group).
    """

    op: str
    algorithms: tuple[str, ...]
    expected: Callable[["Collective", int, int], list[Expectation]]
    aliases: dict[str, str] = field(default_factory=dict)
    rooted: bool = False
    reduces: bool = False
    writes_output: bool = False
    busbw_factor: Callable[[int], float] | None = None

    @property
    def default_algorithm(self) -> str:
        return self.algorithms[0]

    def accepted(self) -> tuple[str, ...]:
        return self.algorithms + tuple(self.aliases)


SEMANTICS: dict[str, Semantics] = {s.op: s for s in (
    Semantics("allreduce", ("ring", "recursive_doubling", "rabenseifner", "binomial", "hierarchical"),
              _expect_allreduce, reduces=True, busbw_factor=lambda n: 2.0 * (n - 1) / n),
    Semantics("broadcast", ("binomial", "ring", "scatter_allgather"), _expect_broadcast, rooted=True,
              busbw_factor=lambda n: 1.0),
    Semantics("reduce", ("binomial", "ring", "rabenseifner"), _expect_reduce, rooted=True, reduces=True,
              busbw_factor=lambda n: 1.0),
    Semantics("allgather", ("ring", "recursive_doubling", "binomial"), _expect_allgather,
              busbw_factor=lambda n: (n - 1) / n),
    Semantics("reduce_scatter", ("ring", "recursive_halving"), _expect_reduce_scatter, reduces=True,
              writes_output=True, busbw_factor=lambda n: (n - 1) / n),
    # "ring": step k sends to r+k, as a ring shift does, which is the pairwise exchange.
    Semantics("alltoall", ("pairwise",), _expect_alltoall, aliases={"ring": "pairwise"}, writes_output=True,
              busbw_factor=lambda n: (n - 1) / n),
    Semantics("alltoallv", ("pairwise",), _expect_alltoallv, aliases={"ring": "pairwise"}, writes_output=True,
              busbw_factor=lambda n: (n - 1) / n),
    Semantics("scatter", ("binomial", "linear"), _expect_scatter, rooted=True, busbw_factor=lambda n: (n - 1) / n),
    Semantics("gather", ("binomial", "linear"), _expect_gather, rooted=True, busbw_factor=lambda n: (n - 1) / n),
    # "recursive_doubling": the same partners at distance 2^k as dissemination.
    Semantics("barrier", ("dissemination",), _expect_nothing, aliases={"recursive_doubling": "dissemination"}),
)}

COLLECTIVES: tuple[str, ...] = tuple(SEMANTICS)
# The algorithm a collective runs when none is named.
DEFAULT_ALGORITHM: dict[str, str] = {op: s.default_algorithm for op, s in SEMANTICS.items()}
# Every accepted algorithm name per op, aliases included.
ALGORITHMS: dict[str, tuple[str, ...]] = {op: s.accepted() for op, s in SEMANTICS.items()}


def root_peer(op: "Collective") -> int:
    """The ``peer`` a collective's record carries: its root where it has one, else -1."""
    return op.root if SEMANTICS[op.op].rooted else -1



Groups = tuple[tuple[int, ...], ...]


# ---------------------------------------------------------------------------
# Layout


def block_layout(nbytes: int, nparts: int) -> tuple[tuple[int, int], ...]:
    """``(offset, size)`` of each of ``nparts`` blocks of ``nbytes`` bytes.

    Sizes differ by at most one byte and the larger blocks come first, as in
    MPICH's reduce-scatter and scatter counts.
    """
    if not (isinstance(nbytes, int) and nbytes >= 0):
        raise ValueError(f"block_layout: nbytes must be an integer >= 0, got {short(nbytes)}")
    if not (isinstance(nparts, int) and nparts >= 1):
        raise ValueError(f"block_layout: nparts must be an integer >= 1, got {short(nparts)}")
    edges = _edges(nbytes, nparts)
    return tuple((edges[i], edges[i + 1] - edges[i]) for i in range(nparts))


def alltoall_output_layout(nbytes: int, rank: int, nranks: int) -> tuple[tuple[int, int], ...]:
    """``(offset, size)`` of each block of ``rank``'s alltoall output buffer.

    Block j of the output is block ``rank`` of rank j's input, so every output
    block has the size of input block ``rank`` and the output buffer holds
    ``nranks`` times that (it equals ``nbytes`` when ``nranks`` divides
    ``nbytes``; otherwise this is MPI_Alltoallv with ``block_layout`` counts).
    The executor copies the rank's own block locally; it is not a transfer.
    """
    edges = _edges(nbytes, nranks)
    size = edges[rank + 1] - edges[rank]
    return tuple((j * size, size) for j in range(nranks))


def scatter_layout(nbytes: int, nranks: int, root: int) -> tuple[tuple[int, int], ...]:
    """``(offset, size)`` of each rank's block in a scatter's or gather's buffer.

    Rank r's block has the size of ``block_layout`` block r, but the blocks
    lie in the order root, root+1, ..., root-1 (mod nranks), as MPICH rotates
    the root's buffer, so that every subtree of the binomial tree holds one
    contiguous run of bytes.  With root 0 this is ``block_layout``.
    """
    edges = _rotated_edges(nbytes, nranks, root)
    return tuple((edges[(r - root) % nranks], edges[(r - root) % nranks + 1] - edges[(r - root) % nranks])
                 for r in range(nranks))


def exchange_layouts(op: "Collective", rank: int, nranks: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    """(input, output) layouts of ``rank``'s alltoall or alltoallv: ``(offset, size)`` of the
    block it sends to each rank and of the block it receives from each (its own block is a
    local copy, ``input[rank]`` to ``output[rank]``)."""
    if op.op == "alltoallv":
        return _counts_layout(op.send_nbytes), _counts_layout(op.recv_nbytes)
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
def _rotated_edges(nbytes: int, nranks: int, root: int) -> tuple[int, ...]:
    # edges[k]: offset of the block of relative rank k (rank (root + k) % nranks).
    plain = _edges(nbytes, nranks)
    out = [0]
    for k in range(nranks):
        r = (root + k) % nranks
        out.append(out[-1] + plain[r + 1] - plain[r])
    return tuple(out)


def _counts_layout(counts: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    offsets = [0]
    for c in counts:
        offsets.append(offsets[-1] + c)
    return tuple((offsets[j], counts[j]) for j in range(len(counts)))


@lru_cache(maxsize=256)
def _edges(nbytes: int, nparts: int) -> tuple[int, ...]:
    # edges[i] is the offset of block i; edges[nparts] == nbytes.
    base, extra = divmod(nbytes, nparts)
    return tuple(i * base + min(i, extra) for i in range(nparts + 1))


# ---------------------------------------------------------------------------
# Validation


def check(op: Collective, nranks: int, groups: Iterable[Iterable[int]] | None = None) -> None:
    """Raise ValueError naming the problem if ``op`` cannot run on ``nranks`` ranks."""
    _validate(op, nranks, _normalize_groups(groups))


def _validate(op: Collective, nranks: int, groups: Groups | None) -> None:
    if getattr(op, "op", None) not in SEMANTICS or not hasattr(op, "nbytes"):
        raise ValueError(f"collectives: expected a Collective, got {short(op)}")
    _check(op, nranks, groups)


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


def _normalize_groups(groups) -> Groups | None:
    if groups is None:
        return None
    try:
        normalized = tuple(tuple(g) for g in groups)
        hash(normalized)
    except TypeError:
        raise ValueError(f"groups must be a sequence of sequences of ranks, got {short(groups)}") from None
    return normalized


# ---------------------------------------------------------------------------
# Size, without lowering


def _size_bound(op: str, algorithm: str, p: int) -> tuple[int, int]:
    # (steps, (rank, peer) pairs) over all p ranks; lg = ceil(lg p).  Upper
    # bounds read off the lowerers below (tests check them against lowering):
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


# ---------------------------------------------------------------------------
# Entry point


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
    groups = _normalize_groups(groups)
    _validate(op, nranks, groups)
    if isinstance(rank, bool) or not (isinstance(rank, int) and 0 <= rank < nranks):
        raise ValueError(f"{op.op}: rank {short(rank)} out of range for {nranks} ranks")
    if nranks == 1:
        return iter(())
    if op.algorithm == "hierarchical":
        return _hierarchical_allreduce(rank, op.nbytes, _group_plan(groups), op.inter_algorithm)
    if op.op == "alltoallv":
        return _alltoallv_pairwise(rank, nranks, op.send_nbytes, op.recv_nbytes)
    return _LOWERERS[op.op, op.algorithm](rank, nranks, op.nbytes, op.root)


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
    server_groups = _normalize_groups(server_groups)
    local = group_server_groups(members, server_groups) if op.algorithm == "hierarchical" else None
    steps = lower(op, index, len(members), local)
    return steps if members == tuple(range(len(members))) else _renamed(steps, members)


# ---------------------------------------------------------------------------
# Building blocks.  Each lowerer takes (rank, p, nbytes, root) over ranks
# 0..p-1 and yields Steps; the hierarchical all-reduce renames the peers.


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


def _ring_reduce_scatter(
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


def _ring_allgather(
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


# --- allreduce -------------------------------------------------------------


def _allreduce_ring(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    edges = _edges(nbytes, p)
    left, right = (r - 1) % p, (r + 1) % p
    yield from _ring_reduce_scatter(r, p, edges, left, right)
    yield from _ring_allgather(r, p, edges, left, right)


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


def _allreduce_rabenseifner(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    pof2, rem = _fold(p)
    yield from _fold_in(r, rem, nbytes)
    newrank = _newrank(r, rem)
    if newrank >= 0:
        edges = _edges(nbytes, pof2)
        yield from _halving(newrank, pof2, rem, edges, _identity)
        yield from _doubling_gather(newrank, pof2, rem, edges, _identity)
    yield from _fold_out(r, rem, nbytes)


def _allreduce_binomial(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    yield from _reduce_binomial(r, p, nbytes, 0)
    yield from _broadcast_binomial(r, p, nbytes, 0)


# --- broadcast -------------------------------------------------------------


def _broadcast_binomial(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
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


def _broadcast_ring(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    # A chain root -> root+1 -> ... -> root+p-1, whole message per hop.
    rel = (r - root) % p
    if rel > 0:
        yield Step((), (Transfer((r - 1) % p, nbytes, 0, False),))
    if rel < p - 1:
        yield Step((Transfer((r + 1) % p, nbytes, 0, False),), ())


def _broadcast_scatter_allgather(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    # van de Geijn: binomial scatter (relative rank i gets block i, a subtree
    # gets its contiguous run of blocks), then ring allgather.
    rel = (r - root) % p
    edges = _edges(nbytes, p)
    yield from _binomial_scatter(r, p, rel, edges)
    yield from _ring_allgather(rel, p, edges, (r - 1) % p, (r + 1) % p)


# --- reduce ----------------------------------------------------------------


def _reduce_binomial(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
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


def _reduce_ring(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    # A chain root+1 -> root+2 -> ... -> root+p-1 -> root, every hop to r+1
    # (the ring direction of the other ring algorithms), reducing on the way.
    rel = (r - root) % p
    if rel != 1:
        yield Step((), (Transfer((r - 1) % p, nbytes, 0, True),))
    if rel != 0:
        yield Step((Transfer((r + 1) % p, nbytes, 0, False),), ())


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
        edges = _edges(nbytes, pof2)
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


# --- allgather -------------------------------------------------------------


def _allgather_ring(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    yield from _ring_allgather(r, p, _edges(nbytes, p), (r - 1) % p, (r + 1) % p)


def _allgather_recursive_doubling(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    # Folded ranks hand their block to their partner; survivor n then stands
    # for real ranks [_first(n), _first(n+1)), so the blocks an aligned run of
    # survivors holds are one contiguous run and each step is one transfer.
    pof2, rem = _fold(p)
    edges = _edges(nbytes, p)
    if r < 2 * rem:
        if r & 1:
            yield Step((), (Transfer(r - 1, edges[r] - edges[r - 1], edges[r - 1], False),))
        else:
            yield Step((Transfer(r + 1, edges[r + 1] - edges[r], edges[r], False),), ())
    newrank = _newrank(r, rem)
    if newrank >= 0:
        yield from _doubling_gather(newrank, pof2, rem, edges, lambda n: _first(n, rem))
    yield from _fold_out(r, rem, nbytes)


def _allgather_binomial(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    # Binomial gather to rank 0 (rank r's subtree holds blocks r..r+mask-1),
    # then binomial broadcast of the whole vector.
    edges = _edges(nbytes, p)
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
    yield from _broadcast_binomial(r, p, nbytes, 0)


# --- reduce_scatter --------------------------------------------------------


def _reduce_scatter_ring(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    yield from _ring_reduce_scatter(r, p, _edges(nbytes, p), (r - 1) % p, (r + 1) % p)


def _reduce_scatter_recursive_halving(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    # MPICH MPIR_Reduce_scatter_intra_recursive_halving: fold whole vectors,
    # halve among survivors over the blocks of the ranks each one stands for,
    # then each survivor hands its dropped partner that partner's block.
    pof2, rem = _fold(p)
    edges = _edges(nbytes, p)
    yield from _fold_in(r, rem, nbytes)
    newrank = _newrank(r, rem)
    if newrank >= 0:
        yield from _halving(newrank, pof2, rem, edges, lambda n: _first(n, rem))
    if r < 2 * rem:
        even = r & ~1
        yield from _fold_out(r, rem, edges[even + 1] - edges[even], edges[even])


# --- alltoall and barrier --------------------------------------------------


def _alltoall_pairwise(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    edges = _edges(nbytes, p)
    size = edges[r + 1] - edges[r]
    for k in range(1, p):
        dst = (r + k) % p
        src = (r - k) % p
        yield Step(
            (Transfer(dst, edges[dst + 1] - edges[dst], edges[dst], False),),
            (Transfer(src, size, src * size, False),),
        )


def _alltoallv_pairwise(r: int, p: int, send: tuple[int, ...], recv: tuple[int, ...]) -> Iterator[Step]:
    # MPICH's pairwise exchange with per-peer counts: sends read the input
    # at the prefix sums of send, receives write the output at those of recv.
    sends, recvs = _counts_layout(send), _counts_layout(recv)
    for k in range(1, p):
        dst = (r + k) % p
        src = (r - k) % p
        yield Step(
            (Transfer(dst, sends[dst][1], sends[dst][0], False),),
            (Transfer(src, recvs[src][1], recvs[src][0], False),),
        )


# --- scatter and gather ----------------------------------------------------


def _scatter_binomial(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    # MPICH MPIR_Scatter_intra_binomial.  Thakur et al.: lg p alpha + (p-1)/p n beta.
    yield from _binomial_scatter(r, p, (r - root) % p, _rotated_edges(nbytes, p, root))


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


def _gather_binomial(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    # MPICH MPIR_Gather_intra_binomial: collect the children's subtrees,
    # nearest first, then send the whole subtree's run to the parent.
    rel = (r - root) % p
    edges = _rotated_edges(nbytes, p, root)
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


def _scatter_linear(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    # The root posts one send per rank and waits for all (MPICH's linear
    # Scatterv); the others receive their block.
    layout = scatter_layout(nbytes, p, root)
    if r == root:
        yield Step(tuple(Transfer(j, layout[j][1], layout[j][0], False) for j in _others(root, p)), ())
    else:
        yield Step((), (Transfer(root, layout[r][1], layout[r][0], False),))


def _gather_linear(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    layout = scatter_layout(nbytes, p, root)
    if r == root:
        yield Step((), tuple(Transfer(j, layout[j][1], layout[j][0], False) for j in _others(root, p)))
    else:
        yield Step((Transfer(root, layout[r][1], layout[r][0], False),), ())


def _others(root: int, p: int) -> tuple[int, ...]:
    # Root+1 first, as the blocks lie in the buffer.
    return tuple((root + k) % p for k in range(1, p))


def _barrier_dissemination(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    # Hensgen, Finkel and Manber's dissemination barrier; it carries no data,
    # so the op's nbytes is ignored.
    dist = 1
    while dist < p:
        yield Step((Transfer((r + dist) % p, 0, 0, False),), (Transfer((r - dist) % p, 0, 0, False),))
        dist <<= 1


# --- hierarchical ----------------------------------------------------------


class _GroupPlan:
    __slots__ = ("members", "index", "leaders", "leader_index")

    def __init__(self, groups: Groups):
        self.members: dict[int, tuple[int, ...]] = {}
        self.index: dict[int, int] = {}
        for g in groups:
            members = tuple(sorted(g))
            for i, r in enumerate(members):
                self.members[r] = members
                self.index[r] = i
        # Leaders in rank order, so the plan does not depend on group order.
        self.leaders = tuple(sorted(min(g) for g in groups))
        self.leader_index = {r: i for i, r in enumerate(self.leaders)}


@lru_cache(maxsize=64)
def _group_plan(groups: Groups) -> _GroupPlan:
    return _GroupPlan(groups)


def _renamed(steps: Iterator[Step], names: tuple[int, ...]) -> Iterator[Step]:
    for step in steps:
        yield Step(
            tuple(Transfer(names[t.peer], t.nbytes, t.offset, t.reduce) for t in step.sends),
            tuple(Transfer(names[t.peer], t.nbytes, t.offset, t.reduce) for t in step.recvs),
        )


def _hierarchical_allreduce(r: int, nbytes: int, plan: _GroupPlan, inter: str) -> Iterator[Step]:
    # Binomial reduce to each group's leader (its lowest rank), all-reduce
    # among the leaders, binomial broadcast back inside each group.
    members = plan.members[r]
    i, q = plan.index[r], len(members)
    if q > 1:
        yield from _renamed(_reduce_binomial(i, q, nbytes, 0), members)
    if i == 0 and len(plan.leaders) > 1:
        lower_inter = _LOWERERS["allreduce", inter]
        yield from _renamed(
            lower_inter(plan.leader_index[r], len(plan.leaders), nbytes, 0), plan.leaders
        )
    if q > 1:
        yield from _renamed(_broadcast_binomial(i, q, nbytes, 0), members)


_LOWERERS: dict[tuple[str, str], Callable[[int, int, int, int], Iterator[Step]]] = {
    ("allreduce", "ring"): _allreduce_ring,
    ("allreduce", "recursive_doubling"): _allreduce_recursive_doubling,
    ("allreduce", "rabenseifner"): _allreduce_rabenseifner,
    ("allreduce", "binomial"): _allreduce_binomial,
    ("broadcast", "binomial"): _broadcast_binomial,
    ("broadcast", "ring"): _broadcast_ring,
    ("broadcast", "scatter_allgather"): _broadcast_scatter_allgather,
    ("reduce", "binomial"): _reduce_binomial,
    ("reduce", "ring"): _reduce_ring,
    ("reduce", "rabenseifner"): _reduce_rabenseifner,
    ("allgather", "ring"): _allgather_ring,
    ("allgather", "recursive_doubling"): _allgather_recursive_doubling,
    ("allgather", "binomial"): _allgather_binomial,
    ("reduce_scatter", "ring"): _reduce_scatter_ring,
    ("reduce_scatter", "recursive_halving"): _reduce_scatter_recursive_halving,
    ("alltoall", "pairwise"): _alltoall_pairwise,
    ("alltoall", "ring"): _alltoall_pairwise,
    ("scatter", "binomial"): _scatter_binomial,
    ("scatter", "linear"): _scatter_linear,
    ("gather", "binomial"): _gather_binomial,
    ("gather", "linear"): _gather_linear,
    ("barrier", "dissemination"): _barrier_dissemination,
    ("barrier", "recursive_doubling"): _barrier_dissemination,
}
