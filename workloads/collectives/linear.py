"""Linear scatter and gather: the root exchanges with every other rank directly, in one step."""
from __future__ import annotations

from typing import Iterator

from workloads.collectives.layouts import scatter_layout
from workloads.collectives.registry import lowerer
from workloads.collectives.steps import Step, Transfer


@lowerer("scatter", "linear")
def _scatter_linear(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    # The root posts one send per rank and waits for all (MPICH's linear
    # Scatterv); the others receive their block.
    layout = scatter_layout(nbytes, p, root)
    if r == root:
        yield Step(tuple(Transfer(j, layout[j][1], layout[j][0], False) for j in _others(root, p)), ())
    else:
        yield Step((), (Transfer(root, layout[r][1], layout[r][0], False),))


@lowerer("gather", "linear")
def _gather_linear(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    layout = scatter_layout(nbytes, p, root)
    if r == root:
        yield Step((), tuple(Transfer(j, layout[j][1], layout[j][0], False) for j in _others(root, p)))
    else:
        yield Step((Transfer(root, layout[r][1], layout[r][0], False),), ())


def _others(root: int, p: int) -> tuple[int, ...]:
    # Root+1 first, as the blocks lie in the buffer.
    return tuple((root + k) % p for k in range(1, p))
