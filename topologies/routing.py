"""Lowest-latency routes, compiled: one search per source, every route from it read off the search.

``Topology.route`` documents the rule: least latency, then fewest hops, and
among equal paths the ECMP choice (a fixed hash of source, destination and
node picks one of the equal-cost predecessors at each node, candidates
sorted by (node, link)).  A search from a source settles every node that is
not a dead end (a node linked to one neighbour only lies on no path but its
own: it is reached only as a destination); a route to any destination is
then a walk back from it, taking at each node the ECMP choice among the
in-links whose tail is one hop and exactly that link's latency nearer the
source.  That is the same route the pairwise search finds (its
predecessors are exactly those in-links), for every destination at the
cost of one search.

The graph is held as compressed rows (``Graph``); searches are kept per
source up to a memory bound, least recently used dropped first.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
from numba import njit

# Searches kept, in bytes of their arrays (a float and an integer per node each).
TREE_CACHE_BYTES = 64 * 2**20


class Graph:
    """Out-links of every node that is not a dead end (for the search) and in-links of every node (for
    the walk back), as compressed rows in insertion order; ``dead_end`` flags per node."""

    def __init__(self, nnodes: int, links: list[tuple[int, int]], latency_s: list[float], dead_end: list[bool]):
        self.nnodes = nnodes
        self.dead_end = np.array(dead_end, dtype=np.bool_)
        out = [[] for _ in range(nnodes)]
        into = [[] for _ in range(nnodes)]
        for link_id, (u, v) in enumerate(links):
            if not dead_end[v]:
                out[u].append((v, link_id))
            into[v].append((u, link_id))
        self.out_ptr, self.out_node, self.out_link = _rows(out)
        self.in_ptr, self.in_node, self.in_link = _rows(into)
        self.tail = np.array([u for u, _ in links], dtype=np.int64)
        self.head = np.array([v for _, v in links], dtype=np.int64)
        self.latency_s = np.array(latency_s, dtype=np.float64)
        # A search's arrays cover the nodes that are not dead ends (on a cluster, the switches: a
        # sixteenth of the nodes or fewer), and its source.
        live = [i for i in range(nnodes) if not dead_end[i]]
        self.live_index = np.full(nnodes, -1, np.int64)
        self.live_index[live] = np.arange(len(live))
        self.nlive = len(live)
        # A search pushes at most once per link it scans: those out of live nodes, and the source's.
        degree = np.diff(self.out_ptr)
        self.heap_room = int(degree[live].sum() + (degree.max() if nnodes else 0) + 1)
        self._trees: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._keep = max(1, TREE_CACHE_BYTES // max(1, 16 * (self.nlive + 1)))
        self._links = np.empty(self.nlive + 3, np.int64)  # a route walked back: see route

    def route(self, s: int, t: int, src_rank: int, dst_rank: int) -> tuple[tuple[int, ...], float] | None:
        """(links, latency) of the route from node ``s`` to node ``t`` (ECMP hashed on the ranks), or None
        where ``t`` cannot be reached."""
        lat, hops = self._tree(s)
        links = self._links
        n = _walk_back(s, t, src_rank, dst_rank, lat, hops, self.live_index, self.in_ptr, self.in_node,
                       self.in_link, self.latency_s, links)
        if n < 0:
            return None
        # links[0] holds the route's latency's bits; its links follow, destination first.
        return tuple(links[n:0:-1].tolist()), float(links[:1].view(np.float64)[0])

    def unique(self, s: int, links: tuple[int, ...]) -> bool:
        """Whether ``links`` (a route from node ``s``, source first) is the only path of its latency and
        hops: no node on it had two equal-cost predecessors, so no ECMP hash chose it, and a graph
        automorphism maps it to the route between the images of its ends."""
        if not links:
            return True
        lat, hops = self._tree(s)
        nlive = self.nlive
        live_index = self.live_index

        def at(v):
            i = live_index[v]
            return i if i >= 0 else (nlive if v == s else -1)

        latency_s = self.latency_s
        v_lat = sum(latency_s[link] for link in links)
        v_hops = len(links)
        in_ptr, in_node, in_link = self.in_ptr, self.in_node, self.in_link
        for link in reversed(links):
            head_candidates = 0
            head = self.head[link]
            for e in range(in_ptr[head], in_ptr[head + 1]):
                iu = at(in_node[e])
                if iu < 0 or hops[iu] < 0:
                    continue
                if hops[iu] + 1 == v_hops and lat[iu] + latency_s[in_link[e]] == v_lat:
                    head_candidates += 1
            if head_candidates != 1:
                return False
            iu = at(self.tail[link])
            v_lat, v_hops = lat[iu], hops[iu]
        return True

    def _tree(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        """The search from node ``s``, kept (least recently used dropped first past the bound)."""
        tree = self._trees.get(s)
        if tree is None:
            tree = _search(s, self.nlive, self.live_index, self.out_ptr, self.out_node, self.out_link,
                           self.latency_s, self.heap_room)
            self._trees[s] = tree
            if len(self._trees) > self._keep:
                self._trees.popitem(last=False)
        else:
            self._trees.move_to_end(s)
        return tree

    def routes_from(self, s: int, src_rank: int, targets: np.ndarray, dst_ranks: np.ndarray):
        """The routes from node ``s`` to each of ``targets`` (nodes; ECMP hashed on ``src_rank`` and
        ``dst_ranks``) in one compiled call: a list of (links, latency), None where unreachable."""
        lat, hops = self._tree(s)
        flat, ends, latency = _walk_all(s, src_rank, targets, dst_ranks, lat, hops, self.live_index, self.in_ptr,
                                        self.in_node, self.in_link, self.latency_s, self.nlive + 3)
        flat = flat.tolist()
        out = []
        start = 0
        for end, latency_s in zip(ends.tolist(), latency.tolist()):
            if end < 0:
                out.append(None)
                continue
            out.append((tuple(flat[start:end][::-1]), latency_s))
            start = end
        return out


def _rows(lists):
    ptr = np.zeros(len(lists) + 1, np.int64)
    for i, row in enumerate(lists):
        ptr[i + 1] = ptr[i] + len(row)
    node = np.array([v for row in lists for v, _ in row], dtype=np.int64)
    link = np.array([l for row in lists for _, l in row], dtype=np.int64)
    return ptr, node, link


@njit(cache=True)
def _less(la, ha, na, lb, hb, nb):
    return la < lb or (la == lb and (ha < hb or (ha == hb and na < nb)))


@njit(cache=True)
def _at(v, s, live_index, nlive):
    """Where node ``v``'s values are in a search from ``s``: its live index, the last slot for the source
    (a dead end, as a cluster's ranks are), or -1 (a dead end the search does not settle)."""
    i = live_index[v]
    if i >= 0:
        return i
    return nlive if v == s else -1


@njit(cache=True)
def _search(s, nlive, live_index, out_ptr, out_node, out_link, latency_s, room):
    """Least (latency, hops) from ``s`` to every node the search settles, indexed by ``_at`` (hops -1:
    not reached)."""
    lat = np.full(nlive + 1, np.inf)
    hops = np.full(nlive + 1, -1, np.int64)
    settled = np.zeros(nlive + 1, np.bool_)
    hl = np.empty(room)
    hh = np.empty(room, np.int64)
    hn = np.empty(room, np.int64)
    i = _at(s, s, live_index, nlive)
    lat[i] = 0.0
    hops[i] = 0
    hl[0] = 0.0
    hh[0] = 0
    hn[0] = s
    n = 1
    while n > 0:
        ul, uh, u = hl[0], hh[0], hn[0]
        # pop
        n -= 1
        kl, kh, kn = hl[n], hh[n], hn[n]
        i = 0
        while True:
            c = 2 * i + 1
            if c >= n:
                break
            if c + 1 < n and _less(hl[c + 1], hh[c + 1], hn[c + 1], hl[c], hh[c], hn[c]):
                c += 1
            if _less(hl[c], hh[c], hn[c], kl, kh, kn):
                hl[i], hh[i], hn[i] = hl[c], hh[c], hn[c]
                i = c
            else:
                break
        hl[i], hh[i], hn[i] = kl, kh, kn
        iu = _at(u, s, live_index, nlive)
        if settled[iu]:
            continue
        settled[iu] = True
        for e in range(out_ptr[u], out_ptr[u + 1]):
            v = out_node[e]
            iv = live_index[v]  # out-links lead to live nodes only
            if settled[iv]:
                continue
            cl = ul + latency_s[out_link[e]]
            ch = uh + 1
            if hops[iv] < 0 or cl < lat[iv] or (cl == lat[iv] and ch < hops[iv]):
                lat[iv] = cl
                hops[iv] = ch
                # push
                j = n
                n += 1
                while j > 0:
                    p = (j - 1) // 2
                    if _less(cl, ch, v, hl[p], hh[p], hn[p]):
                        hl[j], hh[j], hn[j] = hl[p], hh[p], hn[p]
                        j = p
                    else:
                        break
                hl[j], hh[j], hn[j] = cl, ch, v
    return lat, hops


@njit(cache=True)
def _key(t, s, lat, hops, live_index, in_ptr, in_node, in_link, latency_s):
    """(latency, hops) of ``t``: the search's, or for a dead end, its best in-link's (hops -1: none)."""
    nlive = lat.shape[0] - 1
    it = _at(t, s, live_index, nlive)
    if it >= 0 and (hops[it] >= 0 or t == s):
        return lat[it], hops[it]
    best_l = np.inf
    best_h = -1
    for e in range(in_ptr[t], in_ptr[t + 1]):
        iu = _at(in_node[e], s, live_index, nlive)
        if iu < 0 or hops[iu] < 0:
            continue
        cl = lat[iu] + latency_s[in_link[e]]
        ch = hops[iu] + 1
        if best_h < 0 or cl < best_l or (cl == best_l and ch < best_h):
            best_l = cl
            best_h = ch
    return best_l, best_h


@njit(cache=True)
def _ecmp_hash(src, dst, node):
    # The same fixed integer mix as topologies.model._ecmp_hash (not Python's salted hash()).
    h = ((src + 1) * 0x9E3779B1) ^ ((dst + 1) * 0x85EBCA77) ^ ((node + 1) * 0xC2B2AE3D)
    h &= 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x7FEB352D) & 0xFFFFFFFF
    return h ^ (h >> 15)


@njit(cache=True)
def _walk_back(s, t, src_rank, dst_rank, lat, hops, live_index, in_ptr, in_node, in_link, latency_s, links):
    """The route's latency (its bits) into links[0] and its links from ``t`` back to ``s`` into links[1:];
    returns how many links, -1 if unreachable."""
    nlive = lat.shape[0] - 1
    vl, vh = _key(t, s, lat, hops, live_index, in_ptr, in_node, in_link, latency_s)
    if vh < 0:
        return -1
    links[:1].view(np.float64)[0] = vl
    v = t
    n = 0
    cand_u = np.empty(64, np.int64)
    cand_l = np.empty(64, np.int64)
    while v != s:
        k = 0
        for e in range(in_ptr[v], in_ptr[v + 1]):
            u = in_node[e]
            iu = _at(u, s, live_index, nlive)
            if iu < 0 or hops[iu] < 0 or hops[iu] + 1 != vh or lat[iu] + latency_s[in_link[e]] != vl:
                continue
            if k == cand_u.shape[0]:
                grown_u = np.empty(2 * k, np.int64)
                grown_l = np.empty(2 * k, np.int64)
                grown_u[:k] = cand_u
                grown_l[:k] = cand_l
                cand_u, cand_l = grown_u, grown_l
            # insertion by (node, link), as sorted() orders the pairs
            j = k
            while j > 0 and (cand_u[j - 1] > u or (cand_u[j - 1] == u and cand_l[j - 1] > in_link[e])):
                cand_u[j] = cand_u[j - 1]
                cand_l[j] = cand_l[j - 1]
                j -= 1
            cand_u[j] = u
            cand_l[j] = in_link[e]
            k += 1
        pick = 0 if k == 1 else _ecmp_hash(src_rank, dst_rank, v) % k
        n += 1
        links[n] = cand_l[pick]
        v = cand_u[pick]
        iv = _at(v, s, live_index, nlive)
        vl = lat[iv]
        vh = hops[iv]
    return n


@njit(cache=True)
def _walk_all(s, src_rank, targets, dst_ranks, lat, hops, live_index, in_ptr, in_node, in_link, latency_s, room):
    """Every route of ``routes_from`` walked back, into one flat array (each route's links destination
    first, ending at ends[i]; -1: unreachable) with their latencies."""
    n = targets.shape[0]
    flat = np.empty(n * 4 + 16, np.int64)
    ends = np.empty(n, np.int64)
    latency = np.empty(n)
    links = np.empty(room, np.int64)
    used = 0
    for i in range(n):
        k = _walk_back(s, targets[i], src_rank, dst_ranks[i], lat, hops, live_index, in_ptr, in_node, in_link,
                       latency_s, links)
        if k < 0:
            ends[i] = -1
            latency[i] = np.inf
            continue
        if used + k > flat.shape[0]:
            grown = np.empty(2 * (used + k), np.int64)
            grown[:used] = flat[:used]
            flat = grown
        for j in range(k):
            flat[used + j] = links[1 + j]
        used += k
        ends[i] = used
        latency[i] = links[:1].view(np.float64)[0]
    return flat[:used], ends, latency
