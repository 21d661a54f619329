"""Symmetries of a topology: a permutation of its ranks extended to every node, and checked.

A rank permutation is a symmetry of the machine when it extends to a graph
automorphism: every node maps to a node of the same attributes, every link
to a link of the same bandwidth, latency and energy, and servers (the
``group`` attribute) to servers.  ``automorphism`` finds the extension
greedily, outwards from the ranks (a NIC is the one neighbour of its GPU's
image that is free and alike, a leaf the one its NIC's image reaches), and
then checks every link and node, so a wrong guess is refused, never used.
"""
from __future__ import annotations

import weakref
from collections import deque
from typing import Sequence

import numpy as np

from .model import Topology

_PER_NODE_KEYS_SKIPPED = ("group",)


_KINDS: dict[int, tuple] = {}


def _node_kinds(topology: Topology) -> tuple[dict, dict]:
    """(per node, what an automorphism must keep: its degree and its attributes but ``group``, as one
    comparable value; the adjacency as plain dicts), found once per topology: the search looks up
    hundreds of thousands of pairs, which networkx's views make several times slower."""
    cached = _KINDS.get(id(topology))
    if cached is not None and cached[0]() is topology:
        return cached[1]
    g = topology.graph
    adj = {u: dict(nbrs) for u, nbrs in g.adjacency()}
    kinds = {u: (len(adj[u]), repr(sorted((k, v) for k, v in attrs.items() if k not in _PER_NODE_KEYS_SKIPPED)))
             for u, attrs in g.nodes(data=True)}
    _KINDS.clear()  # one topology at a time: a sweep's topologies come and go
    _KINDS[id(topology)] = (weakref.ref(topology), (kinds, adj))
    return kinds, adj


def automorphism(topology: Topology, rank_perm: Sequence[int]) -> tuple[np.ndarray | None, str]:
    """(link permutation, "") where ``rank_perm`` (rank r -> rank_perm[r]) extends to an automorphism of
    ``topology``: ``links[i]`` maps to ``links[perm[i]]``; (None, why) where it does not."""
    g = topology.graph
    ranks = topology.ranks
    if sorted(rank_perm) != list(range(topology.nranks)):
        return None, "not a permutation of the ranks"
    image: dict = {}
    taken: set = set()
    for r, node in enumerate(ranks):
        target = ranks[rank_perm[r]]
        image[node] = target
        taken.add(target)
    nodes = g.nodes
    kind, adj = _node_kinds(topology)

    queue = deque(ranks)
    while queue:
        u = queue.popleft()
        mu = image[u]
        for v in adj[u]:
            if v in image:
                continue
            mapped = [w for w in adj[v] if w in image]
            pick = None
            for c in adj[mu]:
                if c in taken or kind[v] != kind[c]:
                    continue
                if all(image[w] in adj[c] for w in mapped):
                    pick = c
                    break
            if pick is None:
                return None, f"node {v!r} has no image next to {mu!r}"
            image[v] = pick
            taken.add(pick)
            queue.append(v)
    if len(image) != g.number_of_nodes():
        return None, "part of the graph is not reached from the ranks"
    for u, v, attrs in g.edges(data=True):
        mu, mv = image[u], image[v]
        if mv not in adj[mu] or adj[mu][mv] != attrs:
            return None, f"link {u!r}-{v!r} maps to {mu!r}-{mv!r}, which is not a link alike"
    for u in g.nodes:
        if kind[u] != kind[image[u]]:
            return None, f"node {u!r} maps to {image[u]!r}, which differs"
    servers: dict = {}
    for node in ranks:
        a, b = nodes[node].get("group"), nodes[image[node]].get("group")
        if servers.setdefault(a, b) != b:
            return None, f"server {a!r} is split by the map"
    index = topology.link_index
    perm = np.fromiter((index[(image[u], image[v])] for u, v in topology.links), dtype=np.int64,
                       count=len(topology.links))
    return perm, ""
