"""The dissemination barrier: at distance 2^k every rank signals r+2^k and waits for r-2^k."""
from __future__ import annotations

from typing import Iterator

from workloads.collectives.registry import lowerer
from workloads.collectives.steps import Step, Transfer


@lowerer("barrier", "dissemination")
def _barrier_dissemination(r: int, p: int, nbytes: int, root: int) -> Iterator[Step]:
    # Hensgen, Finkel and Manber's dissemination barrier; it carries no data,
    # so the op's nbytes is ignored.
    dist = 1
    while dist < p:
        yield Step((Transfer((r + dist) % p, 0, 0, False),), (Transfer((r - dist) % p, 0, 0, False),))
        dist <<= 1
