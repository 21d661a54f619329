"""Topologies from plain dicts and from YAML/JSON files.

Two forms, told apart by the ``builder`` key:

- builder form: ``{"builder": "ring", "n": 8, "latency_s": 2e-6}``; the other
  keys are the builder's shape arguments (lists become tuples) and its specs'
  fields, flat (``latency_s``, ``wan_latency_s``) or as a mapping under the
  spec's argument (``link: {latency_s: 2e-6}``), which become ``LinkSpec``
  and ``NodeSpec`` objects (``topologies.builders.BUILDER_SPEC_KEYS``);
- explicit form: ``{"name": ..., "defaults": {"node": {...}, "link": {...}},
  "nodes": [{"id": "n0", "role": "compute", ...}], "links": [{"src": "n0",
  "dst": "n1", "bandwidth_bytes_per_s": ...}]}`` (``name``, ``params`` and
  ``defaults`` optional); this is what ``Topology.to_dict`` writes.

Unknown keys are errors (typo protection); every error names where it is,
e.g. ``topology.links[3]: unknown node 'n9'``.
"""
from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from pathlib import Path

import networkx as nx

from .builders import BUILDER_SIZES, BUILDER_SPEC_KEYS, BUILDERS
# The bounded reader lives in .datafile (the builders' presets need it too);
# re-exported here, where scenario, profile and model code import it from.
from .datafile import check_plain_data, parse_yaml, read_data_file, shown_path  # noqa: F401
from .limits import over_limit_message, resolve_max_memory_bytes, topology_bytes
from .text import format_count, is_finite_number, short, short_list, short_name
from .model import LINK_FIELDS, NODE_FIELDS, NODE_NUMERIC_FIELDS, Topology, TopologyError
from .specs import specs_from_file

EXPLICIT_KEYS = ("name", "params", "defaults", "nodes", "links")


def topology_from_dict(data: Mapping, *, where: str = "topology", max_memory_bytes: int | None = None) -> Topology:
    """Build a ``Topology`` from either form (see the module docstring).

    A topology whose estimated memory exceeds ``max_memory_bytes`` (default:
    ``topologies.limits.resolve_max_memory_bytes()``) is refused before it is built.
    """
    if not isinstance(data, Mapping):
        raise TopologyError(f"{where}: must be a mapping, got {type(data).__name__}")
    check_plain_data(data, where)
    try:
        limit = resolve_max_memory_bytes(max_memory_bytes)
    except ValueError as exc:
        raise TopologyError(f"{where}: {exc}") from None
    if "builder" in data:
        return _from_builder(data, where, limit)
    return _from_explicit(data, where, limit)


def topology_memory_bytes(topology: Topology) -> int:
    """Estimated memory of a built ``topology`` (the same estimate that admitted it)."""
    return topology_bytes(topology.graph.number_of_nodes(), topology.graph.number_of_edges())


def _check_topology_memory(nodes: int, links: int, limit: int, what: str) -> None:
    estimate = topology_bytes(nodes, links)
    if estimate > limit:
        raise TopologyError(over_limit_message(
            f"{what} {format_count(nodes)} nodes and {format_count(links)} links, which need", estimate, limit))


def _tuples(value):
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _builder_arg(value):
    """Lists to tuples; numeric strings (PyYAML reads ``1e-6`` as one) to numbers, also in a spec's mapping."""
    if isinstance(value, list):
        return tuple(_builder_arg(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _builder_arg(v) for k, v in value.items()}
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        text = value.strip()
        return int(text) if text.lstrip("+-").isdigit() else float(text)
    return value


def _from_builder(data: Mapping, where: str, limit: int) -> Topology:
    name = data["builder"]
    if not isinstance(name, str) or name not in BUILDERS:
        raise TopologyError(f"{where}.builder: unknown builder {short(name)}; known: {', '.join(BUILDERS)}")
    fn = BUILDERS[name]
    kwargs = {k: _builder_arg(v) for k, v in data.items() if k != "builder"}
    signature = inspect.signature(fn)
    groups = BUILDER_SPEC_KEYS[name]
    known = _file_keys(signature, groups)
    unknown = [k for k in kwargs if k not in known]
    if unknown:
        raise TopologyError(
            f"{where}: unknown argument(s) {short_list(unknown)} for builder {short(name)}; known: {', '.join(known)}"
        )
    try:
        signature.bind(**{k: v for k, v in kwargs.items() if k in signature.parameters})
    except TypeError as exc:
        raise TopologyError(f"{where}: bad arguments for builder {short(name)}: {exc}") from None
    try:
        size = BUILDER_SIZES.get(name)
        if size is not None:
            nodes, links = size(**kwargs)
            _check_topology_memory(nodes, links, limit, f"builder {short(name)} makes")
        spec_keys = {key for group in groups for key in group.keys}
        shape = {k: v for k, v in kwargs.items() if k not in spec_keys}
        return fn(**shape, **specs_from_file(groups, kwargs, f"{name}: "))
    except (TypeError, ValueError) as exc:
        raise TopologyError(f"{where}: {exc}") from None


def _file_keys(signature: inspect.Signature, groups) -> list[str]:
    """A builder's keys in a file, in its signature's order, each spec argument as the keys that write it."""
    by_argument = {group.argument: group.keys for group in groups}
    return [key for parameter in signature.parameters for key in by_argument.get(parameter, (parameter,))]


def _number(value, what: str) -> float:
    # PyYAML reads 1e-6 or 12.5e9 (no dot or no exponent sign) as strings;
    # accept those rather than make every scenario file write 1.0e-6.
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise TopologyError(f"{what} must be a number, got {short(value)}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TopologyError(f"{what} must be a number, got {short(value)}")
    if not is_finite_number(value):
        raise TopologyError(f"{what} must be finite, got {short(value)}")
    return float(value)


def _node_id(value, what: str):
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TopologyError(f"{what} must be a string or an int, got {short(value)}")
    return value


def _check_keys(entry, allowed, what: str) -> None:
    if not isinstance(entry, Mapping):
        raise TopologyError(f"{what}: must be a mapping, got {type(entry).__name__}")
    unknown = [k for k in entry if k not in allowed]
    if unknown:
        raise TopologyError(
            f"{what}: unknown field(s) {short_list(unknown)}; known: {', '.join(allowed)}"
        )


def _node_attrs(entry: Mapping, what: str) -> dict:
    attrs = {}
    for key, value in entry.items():
        if key in NODE_NUMERIC_FIELDS:
            attrs[key] = _number(value, f"{what}.{key}")
        elif key == "group":
            attrs[key] = _tuples(value)
        elif key in ("role", "tier", "node_type", "default_precision"):
            if not isinstance(value, str):
                raise TopologyError(f"{what}.{key} must be a string, got {short(value)}")
            attrs[key] = value
        elif key in ("memory_bytes", "memory_bandwidth_bytes_per_s"):
            attrs[key] = _number(value, f"{what}.{key}")
        elif key == "peak_flops_per_s":
            if not isinstance(value, Mapping):
                raise TopologyError(f"{what}.{key} must be a mapping of precision -> FLOP/s, got {short(value)}")
            attrs[key] = {p: _number(v, f"{what}.{key}.{short_name(p)}") for p, v in value.items()}
        elif key == "gemm_efficiency":
            # Pairs as tuples; the model checks their shape and values.
            attrs[key] = tuple(
                tuple(_number(x, f"{what}.{key}[{i}]") for x in pair) if isinstance(pair, list) else pair
                for i, pair in enumerate(value)
            ) if isinstance(value, list) else value
    return attrs


def _link_attrs(entry: Mapping, what: str) -> dict:
    return {k: _number(v, f"{what}.{k}") for k, v in entry.items() if k in LINK_FIELDS}


def _from_explicit(data: Mapping, where: str, limit: int) -> Topology:
    _check_keys(data, EXPLICIT_KEYS + ("builder",), where)
    name = data.get("name", "custom")
    if not isinstance(name, str):
        raise TopologyError(f"{where}.name must be a string, got {short(name)}")
    params = data.get("params") or {}
    if not isinstance(params, Mapping):
        raise TopologyError(f"{where}.params must be a mapping, got {type(params).__name__}")

    defaults = data.get("defaults") or {}
    _check_keys(defaults, ("node", "link"), f"{where}.defaults")
    node_defaults = defaults.get("node") or {}
    _check_keys(node_defaults, NODE_FIELDS, f"{where}.defaults.node")
    node_defaults = _node_attrs(node_defaults, f"{where}.defaults.node")
    link_defaults = defaults.get("link") or {}
    _check_keys(link_defaults, LINK_FIELDS, f"{where}.defaults.link")
    link_defaults = _link_attrs(link_defaults, f"{where}.defaults.link")

    nodes = data.get("nodes")
    if not isinstance(nodes, list) or not nodes:
        raise TopologyError(f"{where}.nodes: must be a non-empty list of nodes")
    links = data.get("links", [])
    if not isinstance(links, list):
        raise TopologyError(f"{where}.links: must be a list of links")
    _check_topology_memory(len(nodes), len(links), limit, f"{where}: the topology has")

    g = nx.Graph()
    for i, entry in enumerate(nodes):
        what = f"{where}.nodes[{i}]"
        _check_keys(entry, ("id",) + NODE_FIELDS, what)
        if "id" not in entry:
            raise TopologyError(f"{what}: missing field 'id'")
        node = _node_id(entry["id"], f"{what}.id")
        if node in g:
            raise TopologyError(f"{what}: duplicated id {short(node)}")
        attrs = {**node_defaults, **_node_attrs(entry, what)}
        if "role" not in attrs:
            raise TopologyError(f"{what}: missing field 'role' (node {short(node)})")
        g.add_node(node, **attrs)

    for i, entry in enumerate(links):
        what = f"{where}.links[{i}]"
        _check_keys(entry, ("src", "dst") + LINK_FIELDS, what)
        ends = []
        for end in ("src", "dst"):
            if end not in entry:
                raise TopologyError(f"{what}: missing field {short(end)}")
            node = _node_id(entry[end], f"{what}.{end}")
            if node not in g:
                raise TopologyError(f"{what}: unknown node {short(node)}")
            ends.append(node)
        u, v = ends
        if u == v:
            raise TopologyError(f"{what}: self-loop on node {short(u)}")
        if g.has_edge(u, v):
            raise TopologyError(f"{what}: duplicated link {short_name(u)}-{short_name(v)}")
        attrs = {**link_defaults, **_link_attrs(entry, what)}
        if "bandwidth_bytes_per_s" not in attrs:
            raise TopologyError(f"{what}: missing field 'bandwidth_bytes_per_s' (link {short_name(u)}-{short_name(v)})")
        g.add_edge(u, v, **attrs)

    try:
        return Topology(g, name=name, params=dict(params))
    except TopologyError as exc:
        raise TopologyError(f"{where}: {exc}") from None


def load_topology(path, *, max_memory_bytes: int | None = None) -> Topology:
    """Read a topology from a ``.yaml``/``.yml`` or ``.json`` file.

    The file holds either form, optionally under a top-level ``topology:``
    key (so a whole scenario file can be pointed at).  ``max_memory_bytes``
    as for ``topology_from_dict``.
    """
    path = Path(path)
    data = read_data_file(path)
    where = shown_path(path)
    if isinstance(data, Mapping) and "topology" in data:
        data = data["topology"]
        where = f"{where}: topology"
    if data is None:
        raise TopologyError(f"{shown_path(path)}: empty topology")
    return topology_from_dict(data, where=where, max_memory_bytes=max_memory_bytes)
