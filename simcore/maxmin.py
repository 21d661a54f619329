"""Max-min fair rates by progressive filling.

Flows share links; the max-min fair allocation is the one progressive
filling gives: raise every flow's rate together, and fix a flow when a link
on its path fills.  It is also the one allocation in which every flow has a
*bottleneck*: a link of its path that is full and on which no flow has a
higher rate (Bertsekas and Gallager, Data Networks, sec. 6.5.2);
``bottlenecks`` checks that condition, as the tests do.

Flows are objects with ``fid`` and ``links``; ``flows_on[link]`` maps fid ->
flow for every flow on the link.
"""
from __future__ import annotations

import heapq


def fill(flows: dict, flows_on, spare: dict[int, float], count: dict[int, int]) -> list[tuple[object, float]]:
    """Progressive filling of ``flows`` (fid -> flow) on ``spare`` (link -> bandwidth left to them),
    ``count`` (link -> how many of them cross it): (flow, rate) in the order they are fixed.
    ``spare`` and ``count`` are used up."""
    heap = [(spare[l] / count[l], l) for l in spare if count[l]]
    heapq.heapify(heap)
    fixed: list[tuple[object, float]] = []
    done: set[int] = set()
    while heap:
        share, link = heapq.heappop(heap)
        n = count[link]
        if n == 0 or share != spare[link] / n:
            continue  # stale entry
        for fid, flow in flows_on[link].items():
            if fid in done or fid not in flows:
                continue
            done.add(fid)
            fixed.append((flow, share))
            for other in flow.links:
                spare[other] = max(spare[other] - share, 0.0)
                count[other] -= 1
                if count[other] and other != link:
                    heapq.heappush(heap, (spare[other] / count[other], other))
    return fixed


def bottlenecks(rates: dict, paths: dict, capacity, slack: float = 1e-12) -> dict:
    """fid -> a bottleneck link of that flow under ``rates`` (fid -> rate) on ``paths`` (fid -> links), or
    None where it has none: the allocation is max-min fair iff no link is over capacity and no flow has None.
    ``slack``: relative, for loads and rates summed in another order."""
    load: dict[int, float] = {}
    top: dict[int, float] = {}
    for fid, links in paths.items():
        for link in links:
            load[link] = load.get(link, 0.0) + rates[fid]
            top[link] = max(top.get(link, 0.0), rates[fid])
    found = {}
    for fid, links in paths.items():
        found[fid] = next((link for link in links if load[link] >= capacity[link] * (1.0 - slack)
                           and rates[fid] >= top[link] * (1.0 - slack)), None)
    return found
