"""The topology model: a validated ``nx.Graph`` of nodes and full-duplex links.

Nodes are compute ranks, switches, routers or gateways; each undirected edge
is two directed links ``(u, v)`` and ``(v, u)``, each with the edge's full
bandwidth.  ``Topology`` freezes everything the simulator needs per step into
plain tuples indexed by rank or link id, and routes point-to-point traffic on
demand (single-pair Dijkstra with early termination, cached per pair).
"""
from __future__ import annotations

import heapq
import numbers
import operator
from typing import Any, NamedTuple

import networkx as nx

from .limits import is_finite_number, short, short_list, short_name

ROLES = ("compute", "switch", "router", "gateway")
NODE_NUMERIC_FIELDS = ("flops_per_s", "idle_power_w", "busy_power_w")
NODE_FIELDS = ("role",) + NODE_NUMERIC_FIELDS + ("group", "tier")
LINK_FIELDS = ("bandwidth_bytes_per_s", "latency_s", "energy_per_byte_j")


class TopologyError(ValueError):
    """A topology (or its file, or a builder's arguments) is invalid."""


class Route(NamedTuple):
    links: tuple[int, ...]  # directed link ids along the path, in order
    latency_s: float  # sum of link latencies


def _number(value: Any, what: str) -> float:
    # bool is an int subclass; `latency_s: true` is a typo, not a number.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TopologyError(f"{what} must be a number, got {short(value)}")
    if not is_finite_number(value):
        raise TopologyError(f"{what} must be finite, got {short(value)}")
    return float(value)


def _ecmp_hash(src: int, dst: int, node: int) -> int:
    # A fixed integer mix (not Python's hash(), which is salted per process).
    h = ((src + 1) * 0x9E3779B1) ^ ((dst + 1) * 0x85EBCA77) ^ ((node + 1) * 0xC2B2AE3D)
    h &= 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x7FEB352D) & 0xFFFFFFFF
    return h ^ (h >> 15)


def _link_name(u, v) -> str:
    return f"{short_name(u)}-{short_name(v)}"


class Topology:
    """A validated network of compute ranks, switches and full-duplex links.

    Node attributes: ``role`` (one of ``ROLES``), ``flops_per_s``,
    ``idle_power_w``, ``busy_power_w`` and the optional ``group`` (hashable;
    ranks sharing it form a group, e.g. the GPUs of one server) and ``tier``.
    Missing powers default to 0 W, a missing ``flops_per_s`` to 0 for
    non-compute nodes (a compute node must have ``flops_per_s > 0``).

    Link attributes: ``bandwidth_bytes_per_s`` (required, > 0),
    ``latency_s`` and ``energy_per_byte_j`` (>= 0, default 0).

    Unknown attributes are rejected, so a misspelt ``latncy_s`` cannot
    silently become a zero latency.
    """

    def __init__(self, graph: nx.Graph, *, name: str = "custom", params: dict | None = None):
        if not isinstance(graph, nx.Graph) or graph.is_directed() or graph.is_multigraph():
            raise TopologyError(
                f"topology {short(name)}: graph must be an undirected nx.Graph, got {type(graph).__name__}"
            )
        self.name = str(name)
        self.params = dict(params or {})
        self.graph = self._normalized_copy(graph)
        g = self.graph

        nodes = list(g.nodes)
        self._node_index = {node: i for i, node in enumerate(nodes)}
        self.ranks = tuple(node for node in nodes if g.nodes[node]["role"] == "compute")
        self.nranks = len(self.ranks)
        if self.nranks < 1:
            raise TopologyError(f"topology {short(self.name)}: needs at least 1 compute node, got 0")
        self._rank_of = {node: r for r, node in enumerate(self.ranks)}
        self._check_connected()

        links: list[tuple] = []
        bandwidth, latency, energy = [], [], []
        for u, v, attrs in g.edges(data=True):
            for link in ((u, v), (v, u)):
                links.append(link)
                bandwidth.append(attrs["bandwidth_bytes_per_s"])
                latency.append(attrs["latency_s"])
                energy.append(attrs["energy_per_byte_j"])
        self.links = tuple(links)
        self.link_index = {link: i for i, link in enumerate(self.links)}
        self.link_bandwidth_bytes_per_s = tuple(bandwidth)
        self.link_latency_s = tuple(latency)
        self.link_energy_per_byte_j = tuple(energy)

        self.rank_flops_per_s = tuple(g.nodes[n]["flops_per_s"] for n in self.ranks)
        self.rank_idle_power_w = tuple(g.nodes[n]["idle_power_w"] for n in self.ranks)
        self.rank_busy_power_w = tuple(g.nodes[n]["busy_power_w"] for n in self.ranks)

        # Adjacency by node index, neighbours in insertion order, for routing.
        self._adj: list[list[tuple[int, int, float]]] = [[] for _ in nodes]
        for link_id, (u, v) in enumerate(self.links):
            ui, vi = self._node_index[u], self._node_index[v]
            self._adj[ui].append((vi, link_id, self.link_latency_s[link_id]))
        self._nodes = nodes
        self._routes: dict[tuple[int, int], Route] = {}

    # -- validation ---------------------------------------------------------

    @staticmethod
    def _normalized_copy(graph: nx.Graph) -> nx.Graph:
        g = nx.Graph()
        for node, attrs in graph.nodes(data=True):
            what = f"node {short(node)}"
            unknown = sorted(set(attrs) - set(NODE_FIELDS), key=str)
            if unknown:
                raise TopologyError(
                    f"{what}: unknown attribute(s) {short_list(unknown)}; "
                    f"known: {', '.join(NODE_FIELDS)}"
                )
            role = attrs.get("role")
            if role is None:
                raise TopologyError(f"{what}: missing role (one of {', '.join(ROLES)})")
            if role not in ROLES:
                raise TopologyError(f"{what}: unknown role {short(role)} (one of {', '.join(ROLES)})")
            out = {"role": role}
            for field in NODE_NUMERIC_FIELDS:
                if field not in attrs:
                    if role == "compute" and field == "flops_per_s":
                        raise TopologyError(f"{what} (compute): missing flops_per_s")
                    out[field] = 0.0
                    continue
                value = _number(attrs[field], f"{what}: {field}")
                if value < 0:
                    raise TopologyError(f"{what}: {field} must be >= 0, got {short(value)}")
                out[field] = value
            if role == "compute" and out["flops_per_s"] <= 0:
                raise TopologyError(
                    f"{what} (compute): flops_per_s must be > 0, got {short(out['flops_per_s'])}"
                )
            for field in ("group", "tier"):
                value = attrs.get(field)
                if value is None:
                    continue
                try:
                    hash(value)
                except TypeError:
                    raise TopologyError(f"{what}: {field} must be hashable, got {short(value)}") from None
                out[field] = value
            g.add_node(node, **out)

        for u, v, attrs in graph.edges(data=True):
            what = f"link {_link_name(u, v)}"
            if u == v:
                raise TopologyError(f"{what}: self-loop on node {short(u)}")
            unknown = sorted(set(attrs) - set(LINK_FIELDS), key=str)
            if unknown:
                raise TopologyError(
                    f"{what}: unknown attribute(s) {short_list(unknown)}; "
                    f"known: {', '.join(LINK_FIELDS)}"
                )
            if "bandwidth_bytes_per_s" not in attrs:
                raise TopologyError(f"{what}: missing bandwidth_bytes_per_s")
            bandwidth = _number(attrs["bandwidth_bytes_per_s"], f"{what}: bandwidth_bytes_per_s")
            if bandwidth <= 0:
                raise TopologyError(f"{what}: bandwidth_bytes_per_s must be > 0, got {short(bandwidth)}")
            out = {"bandwidth_bytes_per_s": bandwidth}
            for field in ("latency_s", "energy_per_byte_j"):
                value = _number(attrs.get(field, 0.0), f"{what}: {field}")
                if value < 0:
                    raise TopologyError(f"{what}: {field} must be >= 0, got {short(value)}")
                out[field] = value
            g.add_edge(u, v, **out)
        return g

    def _check_connected(self) -> None:
        component_of = {}
        for i, component in enumerate(nx.connected_components(self.graph)):
            for node in component:
                component_of[node] = i
        first = self.ranks[0]
        for r, node in enumerate(self.ranks):
            if component_of[node] != component_of[first]:
                raise TopologyError(
                    f"topology {short(self.name)}: rank {r} (node {short(node)}) cannot reach "
                    f"rank 0 (node {short(first)})"
                )

    # -- queries ------------------------------------------------------------

    def _check_rank(self, rank, what: str = "rank") -> int:
        if isinstance(rank, bool):
            raise TopologyError(f"{what} must be an int, got {short(rank)}")
        try:
            r = operator.index(rank)
        except TypeError:
            raise TopologyError(f"{what} must be an int, got {short(rank)}") from None
        if not 0 <= r < self.nranks:
            raise TopologyError(f"{what} {r} out of range: topology {short(self.name)} has {self.nranks} ranks")
        return r

    def node_of(self, rank: int):
        """The node id of ``rank``."""
        return self.ranks[self._check_rank(rank)]

    def rank_of(self, node) -> int:
        """The rank of compute node ``node``."""
        try:
            return self._rank_of[node]
        except (KeyError, TypeError):
            raise TopologyError(f"node {short(node)} is not a compute node of topology {short(self.name)}") from None

    def route(self, src_rank: int, dst_rank: int) -> Route:
        """Lowest-latency path from ``src_rank`` to ``dst_rank``.

        Ties on latency break on hop count.  Among paths equal in both, the
        route is chosen as ECMP switches choose: at every node with several
        equal-cost predecessors, a fixed hash of (source, destination, node)
        picks one, so a fat tree's traffic spreads over its core switches the
        same way on every run.  Exact float equality decides ties.
        """
        src = self._check_rank(src_rank, "src_rank")
        dst = self._check_rank(dst_rank, "dst_rank")
        key = (src, dst)
        cached = self._routes.get(key)
        if cached is not None:
            return cached
        route = self._dijkstra(src, dst) if src != dst else Route((), 0.0)
        self._routes[key] = route
        return route

    def _dijkstra(self, src: int, dst: int) -> Route:
        s = self._node_index[self.ranks[src]]
        t = self._node_index[self.ranks[dst]]
        best: dict[int, tuple[float, int]] = {s: (0.0, 0)}
        preds: dict[int, list[tuple[int, int]]] = {}  # node -> equal-cost (predecessor, link id)
        settled = set()
        heap = [(0.0, 0, s)]
        while heap:
            lat, hops, u = heapq.heappop(heap)
            if u in settled:
                continue
            settled.add(u)
            if u == t:
                # Every equal-cost predecessor of t has a strictly smaller key
                # (hops grow by one per link), so all were popped before t and
                # preds[t] is complete: stopping here equals full Dijkstra.
                break
            for v, link_id, w in self._adj[u]:
                if v in settled:
                    continue
                cand = (lat + w, hops + 1)
                old = best.get(v)
                if old is None or cand < old:
                    best[v] = cand
                    preds[v] = [(u, link_id)]
                    heapq.heappush(heap, (cand[0], cand[1], v))
                elif cand == old:
                    preds[v].append((u, link_id))
        links = []
        node = t
        while node != s:
            candidates = preds[node]
            if len(candidates) > 1:
                candidates = sorted(candidates)
                node, link_id = candidates[_ecmp_hash(src, dst, node) % len(candidates)]
            else:
                node, link_id = candidates[0]
            links.append(link_id)
        links.reverse()
        return Route(tuple(links), best[t][0])

    def groups(self) -> tuple[tuple[int, ...], ...] | None:
        """Ranks grouped by node attribute ``group``; ``None`` if no rank has one.

        Groups are ordered by their lowest rank, ranks ascend within a group;
        a rank without ``group`` forms a group of its own.
        """
        attrs = self.graph.nodes
        if not any("group" in attrs[n] for n in self.ranks):
            return None
        by_key: dict[Any, list[int]] = {}
        for r, node in enumerate(self.ranks):
            key = ("group", attrs[node]["group"]) if "group" in attrs[node] else ("rank", r)
            by_key.setdefault(key, []).append(r)
        return tuple(tuple(members) for members in by_key.values())

    # -- serialization and display ------------------------------------------

    def to_dict(self) -> dict:
        """The explicit form, plain lists/dicts/numbers (YAML/JSON-safe)."""
        nodes = []
        for node, attrs in self.graph.nodes(data=True):
            entry = {"id": _plain(node)}
            entry.update({k: _plain(attrs[k]) for k in NODE_FIELDS if k in attrs})
            nodes.append(entry)
        links = [
            {"src": _plain(u), "dst": _plain(v), **{k: attrs[k] for k in LINK_FIELDS}}
            for u, v, attrs in self.graph.edges(data=True)
        ]
        out = {"name": self.name}
        if self.params:
            out["params"] = _plain(self.params)
        out["nodes"] = nodes
        out["links"] = links
        return out

    def describe(self) -> str:
        """One line: name, ranks, non-compute nodes by role, links."""
        counts = {}
        for _, role in self.graph.nodes(data="role"):
            if role != "compute":
                counts[role] = counts.get(role, 0) + 1
        counts = {"switch": counts.pop("switch", 0), **counts}
        parts = [_count(self.nranks, "rank")]
        parts += [_count(n, role) for role, n in counts.items()]
        parts.append(_count(self.graph.number_of_edges(), "link"))
        return f"{self.name}: " + ", ".join(parts)

    def _key(self):
        g = self.graph
        return (
            self.name,
            tuple((n, tuple(sorted(g.nodes[n].items(), key=lambda kv: kv[0]))) for n in g.nodes),
            tuple((u, v, tuple(sorted(a.items()))) for u, v, a in g.edges(data=True)),
        )

    def __eq__(self, other):
        if not isinstance(other, Topology):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None

    def __repr__(self):
        return f"<Topology {self.describe()}>"


def _count(n: int, noun: str) -> str:
    plural = noun + ("es" if noun.endswith("h") else "s")
    return f"{n} {noun if n == 1 else plural}"


def _plain(value):
    """Tuples to lists, recursively, so yaml.safe_dump and json accept it."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
