"""The topology model: a validated ``nx.Graph`` of nodes and full-duplex links.

Nodes are compute ranks, switches, routers or gateways; each undirected edge
is two directed links ``(u, v)`` and ``(v, u)``, each with the edge's full
bandwidth.  ``Topology`` freezes everything the simulator needs per step into
plain tuples indexed by rank or link id, and routes point-to-point traffic on
demand (single-pair Dijkstra with early termination, cached per pair).
"""
from __future__ import annotations

import bisect
import math
import numbers
import operator
from collections.abc import Mapping
from typing import Any, NamedTuple

import networkx as nx
import numpy as np

from .routing import Graph
from .text import is_finite_number, short, short_list, short_name

ROLES = ("compute", "switch", "router", "gateway")
NODE_NUMERIC_FIELDS = ("flops_per_s", "idle_power_w", "busy_power_w")
# What a compute node's hardware is (topologies.hardware fills them from a
# node type): peaks per precision, memory, the GEMM efficiency table.
HARDWARE_FIELDS = (
    "node_type", "default_precision", "peak_flops_per_s", "memory_bytes", "memory_bandwidth_bytes_per_s",
    "gemm_efficiency",
)
NODE_FIELDS = ("role",) + NODE_NUMERIC_FIELDS + ("group", "tier") + HARDWARE_FIELDS
LINK_FIELDS = ("bandwidth_bytes_per_s", "latency_s", "energy_per_byte_j")
# A source asked for routes to this share of the ranks (and at least 8) has all its others found at once
# (one compiled call, not one each): an all-to-all or a collective asks for them all; random traffic, a
# few per source, would pay for routes it never asks for.
ROUTES_AT_ONCE_SHARE = 8
ROUTES_AT_ONCE_MIN = 8


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


def _link_name(u, v) -> str:
    return f"{short_name(u)}-{short_name(v)}"


# -- hardware tables (shared by Topology and topologies.hardware.NodeType) ------


def check_peak_table(value, what: str) -> dict[str, float]:
    """``{precision: FLOP/s}``, non-empty, names non-empty strings, values finite and > 0."""
    if not isinstance(value, Mapping) or not value:
        raise TopologyError(f"{what} must be a non-empty mapping of precision -> FLOP/s, got {short(value)}")
    out = {}
    for precision, peak in value.items():
        if not isinstance(precision, str) or not precision:
            raise TopologyError(f"{what}: precision names must be non-empty strings, got {short(precision)}")
        peak = _number(peak, f"{what}[{short_name(precision)}]")
        if peak <= 0:
            raise TopologyError(f"{what}[{short_name(precision)}] must be > 0, got {short(peak)}")
        out[precision] = peak
    return out


def check_gemm_table(value, what: str) -> tuple[tuple[float, float], ...]:
    """``[[min_dim, fraction], ...]``: sizes >= 1 and strictly increasing, fractions in (0, 1]."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)) or not value:
        raise TopologyError(f"{what} must be a non-empty list of [min(m, n, k), fraction of peak] pairs, "
                            f"got {short(value)}")
    out = []
    for i, pair in enumerate(value):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise TopologyError(f"{what}[{i}] must be a pair [min(m, n, k), fraction], got {short(pair)}")
        size = _number(pair[0], f"{what}[{i}] size")
        fraction = _number(pair[1], f"{what}[{i}] fraction")
        if size < 1:
            raise TopologyError(f"{what}[{i}]: size must be >= 1, got {short(size)}")
        if out and size <= out[-1][0]:
            raise TopologyError(f"{what}[{i}]: sizes must increase, got {short(size)} after {short(out[-1][0])}")
        if not 0 < fraction <= 1:
            raise TopologyError(f"{what}[{i}]: fraction must be in (0, 1], got {short(fraction)}")
        out.append((size, fraction))
    return tuple(out)


def gemm_fraction(table: tuple[tuple[float, float], ...], size: float) -> float:
    """The table's fraction of peak at ``size`` (= min(m, n, k)).

    Linear in log(size) between points, since GEMM efficiency curves are
    measured and plotted on a log axis of the size; clamped at both ends.
    A size on a point gives that point's value exactly.
    """
    if size <= table[0][0]:
        return table[0][1]
    if size >= table[-1][0]:
        return table[-1][1]
    i = bisect.bisect_right([x for x, _ in table], size)
    (x0, y0), (x1, y1) = table[i - 1], table[i]
    t = (math.log(size) - math.log(x0)) / (math.log(x1) - math.log(x0))
    return y0 + t * (y1 - y0)


class Topology:
    """A validated network of compute ranks, switches and full-duplex links.

    Node attributes: ``role`` (one of ``ROLES``), ``flops_per_s``,
    ``idle_power_w``, ``busy_power_w`` and the optional ``group`` (hashable;
    ranks sharing it form a group, e.g. the GPUs of one server) and ``tier``.
    Missing powers default to 0 W, a missing ``flops_per_s`` to 0 for
    non-compute nodes (a compute node must have ``flops_per_s > 0``).

    A compute node may describe its hardware (``HARDWARE_FIELDS``, usually
    filled from a node type, see ``topologies.hardware``):
    ``peak_flops_per_s`` (precision -> FLOP/s) with its ``default_precision``
    (then ``flops_per_s`` may be left out: it is that precision's peak, and if
    given must equal it), ``memory_bytes``, ``memory_bandwidth_bytes_per_s``,
    ``gemm_efficiency`` (``[[min(m, n, k), fraction of peak], ...]``) and the
    ``node_type`` name.

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
        # Unknown memory is unlimited: nothing is refused, no time is charged.
        self.rank_memory_bytes = tuple(g.nodes[n].get("memory_bytes", math.inf) for n in self.ranks)
        self.rank_memory_bandwidth_bytes_per_s = tuple(
            g.nodes[n].get("memory_bandwidth_bytes_per_s", math.inf) for n in self.ranks)
        self._rank_peaks = tuple(g.nodes[n].get("peak_flops_per_s") for n in self.ranks)
        self._rank_gemm = tuple(g.nodes[n].get("gemm_efficiency") for n in self.ranks)

        # A node linked (either way) to one neighbour only ("dead end") lies on no path but its
        # own: routing walks past it, which on a cluster skips every other rank.
        neighbours: list[set[int]] = [set() for _ in nodes]
        for u, v in self.links:
            ui, vi = self._node_index[u], self._node_index[v]
            neighbours[ui].add(vi)
            neighbours[vi].add(ui)
        self._dead_end = [len(n) <= 1 for n in neighbours]
        self._graph: Graph | None = None  # built at the first route
        self._asked: dict[int, int] = {}  # routes asked per source, until they are all found at once
        self._nodes = nodes
        self._routes: dict[tuple[int, int], Route] = {}

    # -- validation ---------------------------------------------------------

    @staticmethod
    def _normalized_copy(graph: nx.Graph) -> nx.Graph:
        g = nx.Graph()
        # Builders give every node the same table objects; checking each once
        # and sharing the result keeps a 100k-rank topology's memory flat.
        tables: dict[int, tuple] = {}
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
            hardware = _hardware_attrs(attrs, role, what, tables)
            for field in NODE_NUMERIC_FIELDS:
                if field == "flops_per_s" and "peak_flops_per_s" in hardware:
                    out[field] = _default_peak(attrs, hardware, what)
                    continue
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
            out.update(hardware)
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

    def peak_flops_per_s(self, rank: int, precision: str = "") -> float:
        """The peak FLOP/s of ``rank``'s node in ``precision``.

        ``""``: the node's default precision's peak, which is its
        ``flops_per_s``; a node without a peak table has only ``flops_per_s``,
        whatever the precision.  A precision its table lacks is an error.
        """
        r = self._check_rank(rank)
        if not isinstance(precision, str):
            raise TopologyError(f"precision must be a string such as 'bf16', got {short(precision)}")
        peaks = self._rank_peaks[r]
        if peaks is None or not precision:
            return self.rank_flops_per_s[r]
        peak = peaks.get(precision)
        if peak is None:
            attrs = self.graph.nodes[self.ranks[r]]
            kind = f", node type {short_name(attrs['node_type'])}" if "node_type" in attrs else ""
            raise TopologyError(
                f"rank {r} (node {short_name(self.ranks[r])}{kind}) has no peak for precision "
                f"{short(precision)}; it has: {', '.join(peaks)}"
            )
        return peak

    def gemm_efficiency(self, rank: int, m: int, n: int, k: int) -> float:
        """Fraction of peak an (m, n, k) matrix product reaches on ``rank``'s node
        (its ``gemm_efficiency`` table at min(m, n, k); 1.0 without a table)."""
        r = self._check_rank(rank)
        for name, d in (("m", m), ("n", n), ("k", k)):
            if isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1:
                raise TopologyError(f"gemm_efficiency: {name} must be an integer >= 1, got {short(d)}")
        table = self._rank_gemm[r]
        return 1.0 if table is None else gemm_fraction(table, min(m, n, k))

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
        if src == dst:
            route = Route((), 0.0)
        else:
            # A source asked for many destinations (a collective, an all-to-all) has all its routes found
            # in one compiled call; one asked for a few, each on its own.
            asked = self._asked[src] = self._asked.get(src, 0) + 1
            if asked == max(ROUTES_AT_ONCE_MIN, self.nranks // ROUTES_AT_ONCE_SHARE):
                self._routes_from(src)
                cached = self._routes.get(key)
                if cached is not None:
                    return cached
            route = self._search(src, dst)
        self._routes[key] = route
        return route

    def route_unique(self, src_rank: int, dst_rank: int) -> bool:
        """Whether the route from ``src_rank`` to ``dst_rank`` is the only path of its latency and hops,
        so that no ECMP hash chose it: a graph automorphism then maps it to its image's route."""
        route = self.route(src_rank, dst_rank)
        return self._route_graph().unique(self._node_index[self.ranks[src_rank]], route.links)

    def _routes_from(self, src: int) -> None:
        """Every route from ``src`` not yet known, into the pair cache."""
        graph = self._route_graph()
        dsts = [d for d in range(self.nranks) if d != src and (src, d) not in self._routes]
        if not dsts:
            return
        index = self._node_index
        targets = np.array([index[self.ranks[d]] for d in dsts], dtype=np.int64)
        found = graph.routes_from(index[self.ranks[src]], src, targets, np.array(dsts, dtype=np.int64))
        for d, route in zip(dsts, found):
            if route is not None:
                self._routes[(src, d)] = Route(*route)

    def _search(self, src: int, dst: int) -> Route:
        """The route by the compiled search from ``src`` (topologies.routing), kept per source."""
        found = self._route_graph().route(self._node_index[self.ranks[src]], self._node_index[self.ranks[dst]], src, dst)
        if found is None:
            raise TopologyError(f"no path from rank {src} to rank {dst}")
        links, latency_s = found
        return Route(links, latency_s)

    def _route_graph(self) -> Graph:
        if self._graph is None:
            index = self._node_index
            self._graph = Graph(len(self._nodes), [(index[u], index[v]) for u, v in self.links],
                                list(self.link_latency_s), self._dead_end)
        return self._graph

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


def _hardware_attrs(attrs: dict, role: str, what: str, tables: dict) -> dict:
    """The node's checked ``HARDWARE_FIELDS`` (only compute nodes have hardware)."""
    present = [f for f in HARDWARE_FIELDS if attrs.get(f) is not None]
    if not present:
        return {}
    if role != "compute":
        raise TopologyError(f"{what}: {', '.join(present)} only apply to compute nodes, not to a {role}")
    out = {}
    for field in ("node_type", "default_precision"):
        value = attrs.get(field)
        if value is not None:
            if not isinstance(value, str) or not value:
                raise TopologyError(f"{what}: {field} must be a non-empty string, got {short(value)}")
            out[field] = value
    for field in ("memory_bytes", "memory_bandwidth_bytes_per_s"):
        if attrs.get(field) is not None:
            value = _number(attrs[field], f"{what}: {field}")
            if value <= 0:
                raise TopologyError(f"{what}: {field} must be > 0, got {short(value)}")
            out[field] = value
    for field, check in (("peak_flops_per_s", check_peak_table), ("gemm_efficiency", check_gemm_table)):
        raw = attrs.get(field)
        if raw is None:
            continue
        cached = tables.get(id(raw))
        if cached is None or cached[0] is not raw:
            cached = tables[id(raw)] = (raw, check(raw, f"{what}: {field}"))
        out[field] = cached[1]
    peaks = out.get("peak_flops_per_s")
    default = out.get("default_precision")
    if peaks is None and default is not None:
        raise TopologyError(f"{what}: default_precision {short(default)} needs a peak_flops_per_s table")
    if peaks is not None:
        if default is None:
            raise TopologyError(f"{what}: peak_flops_per_s needs a default_precision (one of {', '.join(peaks)})")
        if default not in peaks:
            raise TopologyError(f"{what}: default_precision {short(default)} is not in peak_flops_per_s "
                                f"({', '.join(peaks)})")
    return out


def _default_peak(attrs: dict, hardware: dict, what: str) -> float:
    # One speed, not two: flops_per_s is the default precision's peak, so
    # everything that reads flops_per_s agrees with the roofline's "" peak.
    peak = hardware["peak_flops_per_s"][hardware["default_precision"]]
    if attrs.get("flops_per_s") is not None:
        given = _number(attrs["flops_per_s"], f"{what}: flops_per_s")
        if not math.isclose(given, peak, rel_tol=1e-9):
            raise TopologyError(
                f"{what}: flops_per_s {short(given)} differs from peak_flops_per_s"
                f"[{short_name(hardware['default_precision'])}] = {short(peak)}; leave flops_per_s out "
                "(it is the default precision's peak) or edit the table"
            )
    return peak


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
