"""Max-min fair rates by progressive filling, re-solved only as far as a change reaches.

Flows share links; the max-min fair allocation is the one progressive
filling gives: raise every flow's rate together, and fix a flow when a link
on its path fills.  It is also the one allocation in which every flow has a
*bottleneck*: a link of its path that is full and on which no flow has a
higher rate (Bertsekas and Gallager, Data Networks, sec. 6.5.2);
``bottlenecks`` checks that condition, as the tests do.

When flows start or end, the flows on the links the change touched take or
give back bandwidth, and the change goes on only through the flows whose
rates that moves.  ``resolve`` fills a set S of flows (first: those on the
touched links), the others' rates held, on what the others leave of each
link; then it checks the bottleneck condition for every flow on a link of
S, and a flow without one brings itself, or the held flows that outrun it,
into S, which is filled again.  Where no flow lacks a bottleneck the
allocation is max-min fair; where S grows past ``limit`` flows it gives up,
and the caller fills the whole connected set.

Flows are objects with ``fid``, ``links``, ``rate_bytes_per_s`` and
``t_end_s`` (a flow whose ``t_end_s`` has passed has sent its last byte and
no longer competes); ``flows_on[link]`` maps fid -> flow for every flow on
the link.
"""
from __future__ import annotations

import heapq

# Relative slack of the bottleneck test: rates and loads summed in another
# order differ by rounding, a few units in the last place per flow.
SLACK = 1e-12


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


def resolve(seed: dict, flows_on, capacity, now: float, limit: int) -> list[tuple[object, float]] | None:
    """The (flow, rate) of the flows re-solved after a change, in the order fixed, starting from ``seed``
    (fid -> flow: the flows on the links the change touched); None where more than ``limit`` flows
    would have to be re-solved."""
    solve = dict(seed)
    while True:
        links: dict[int, None] = {}
        for flow in solve.values():
            for link in flow.links:
                links[link] = None
        spare: dict[int, float] = {}
        count: dict[int, int] = {}
        for link in links:
            left = capacity[link]
            n = 0
            for fid, flow in flows_on[link].items():
                if fid in solve:
                    n += 1
                elif flow.t_end_s is None or flow.t_end_s > now:
                    left -= flow.rate_bytes_per_s
            spare[link] = left if left > 0.0 else 0.0
            count[link] = n
        fixed = fill(solve, flows_on, spare, count)
        rate = {flow.fid: r for flow, r in fixed}
        missing = _without_bottleneck(links, rate, solve, flows_on, capacity, now)
        if not missing:
            return fixed
        before = len(solve)
        for flow in missing:
            if flow.fid not in solve:
                solve[flow.fid] = flow
                continue
            # Held flows on its links outrun it: they are re-solved with it.
            for link in flow.links:
                for fid, other in flows_on[link].items():
                    if fid not in solve and (other.t_end_s is None or other.t_end_s > now):
                        solve[fid] = other
        if len(solve) > limit or len(solve) == before:
            return None


def _without_bottleneck(links, rate, solve, flows_on, capacity, now) -> list:
    """The flows on ``links`` without a bottleneck, with the new ``rate`` (fid -> rate) of the flows in
    ``solve`` and the held rates of the others."""
    load: dict[int, float] = {}
    top: dict[int, float] = {}

    def rate_of(fid, flow):
        """Its new rate if re-solved, its held one if still sending, else None."""
        if fid in solve:
            return rate[fid]
        if flow.t_end_s is None or flow.t_end_s > now:
            return flow.rate_bytes_per_s
        return None

    def measure(link):
        total = 0.0
        most = 0.0
        for fid, flow in flows_on[link].items():
            r = rate_of(fid, flow)
            if r is None:
                continue
            total += r
            if r > most:
                most = r
        load[link] = total
        top[link] = most

    for link in links:
        measure(link)
    missing = []
    checked: set[int] = set()
    for link in links:
        for fid, flow in flows_on[link].items():
            if fid in checked:
                continue
            checked.add(fid)
            r = rate_of(fid, flow)
            if r is None:
                continue
            for other in flow.links:
                if other not in load:
                    measure(other)
                if load[other] >= capacity[other] * (1.0 - SLACK) and r >= top[other] * (1.0 - SLACK):
                    break
            else:
                missing.append(flow)
    return missing


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
