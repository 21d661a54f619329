"""The collective algorithms, one registry keyed by (op, algorithm name).

Each lowerer takes (rank, p, nbytes, root) over ranks 0..p-1 and yields
Steps; the hierarchical all-reduce renames the peers.  A family's module
registers its lowerers with ``@lowerer(op, name)``; ``lower`` resolves an
alias (``Semantics.aliases``) to the name it runs before it looks one up.
"""
from __future__ import annotations

from typing import Callable, Iterator

from workloads.collectives.steps import Step

Lowerer = Callable[[int, int, int, int], Iterator[Step]]

LOWERERS: dict[tuple[str, str], Lowerer] = {}


def lowerer(op: str, name: str) -> Callable[[Lowerer], Lowerer]:
    """Register the decorated function as ``op``'s algorithm ``name``."""
    def register(fn: Lowerer) -> Lowerer:
        if (op, name) in LOWERERS:
            raise ValueError(f"collectives: {op} algorithm {name!r} registered twice")
        LOWERERS[op, name] = fn
        return fn
    return register
