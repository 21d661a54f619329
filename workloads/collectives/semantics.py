"""What each collective means: its algorithms, root, reduction and the result a checked run expects.

The algorithms and their names follow Thakur, Rabenseifner and Gropp (2005),
"Optimization of Collective Communication Operations in MPICH"; every
executor and every report reads this one table.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, NamedTuple

from workloads.collectives.layouts import alltoall_output_layout, block_layout, counts_layout, scatter_layout

if TYPE_CHECKING:  # the vocabulary imports this table, not the other way round
    from workloads.ops import Collective


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
            for j, (off, size) in enumerate(counts_layout(op.recv_nbytes))]


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
