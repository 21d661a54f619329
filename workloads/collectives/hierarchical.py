"""The two-level (hierarchical) all-reduce: inside each server, then among the servers' leaders."""
from __future__ import annotations

from functools import lru_cache
from typing import Iterator

from workloads.collectives.binomial import broadcast_binomial, reduce_binomial
from workloads.collectives.registry import LOWERERS
from workloads.collectives.steps import Groups, Step, renamed


class GroupPlan:
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
def group_plan(groups: Groups) -> GroupPlan:
    return GroupPlan(groups)


def hierarchical_allreduce(r: int, nbytes: int, plan: GroupPlan, inter: str) -> Iterator[Step]:
    # Binomial reduce to each group's leader (its lowest rank), all-reduce
    # among the leaders, binomial broadcast back inside each group.  It takes
    # the servers' plan and the leaders' algorithm, not (p, root), so ``lower``
    # calls it by name rather than through the registry.
    members = plan.members[r]
    i, q = plan.index[r], len(members)
    if q > 1:
        yield from renamed(reduce_binomial(i, q, nbytes, 0), members)
    if i == 0 and len(plan.leaders) > 1:
        lower_inter = LOWERERS["allreduce", inter]
        yield from renamed(
            lower_inter(plan.leader_index[r], len(plan.leaders), nbytes, 0), plan.leaders
        )
    if q > 1:
        yield from renamed(broadcast_binomial(i, q, nbytes, 0), members)
