"""The point-to-point steps a collective lowers to, and the contract every lowering keeps.

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

from typing import Iterator, NamedTuple

# A partition of a communicator's ranks into servers, as the hierarchical all-reduce takes it.
Groups = tuple[tuple[int, ...], ...]


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


def renamed(steps: Iterator[Step], names: tuple[int, ...]) -> Iterator[Step]:
    """``steps`` with each peer p replaced by ``names[p]``: a sub-communicator's ranks as the caller's."""
    for step in steps:
        yield Step(
            tuple(Transfer(names[t.peer], t.nbytes, t.offset, t.reduce) for t in step.sends),
            tuple(Transfer(names[t.peer], t.nbytes, t.offset, t.reduce) for t in step.recvs),
        )
