"""Topologies from plain dicts and from YAML/JSON files.

Two forms, told apart by the ``builder`` key:

- builder form: ``{"builder": "ring", "n": 8, "latency_s": 2e-6}``; the other
  keys are the builder's keyword arguments (lists become tuples);
- explicit form: ``{"name": ..., "defaults": {"node": {...}, "link": {...}},
  "nodes": [{"id": "n0", "role": "compute", ...}], "links": [{"src": "n0",
  "dst": "n1", "bandwidth_bytes_per_s": ...}]}`` (``name``, ``params`` and
  ``defaults`` optional); this is what ``Topology.to_dict`` writes.

Unknown keys are errors (typo protection); every error names where it is,
e.g. ``topology.links[3]: unknown node 'n9'``.
"""
from __future__ import annotations

import inspect
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

import networkx as nx
import yaml

from .builders import BUILDERS
from .model import LINK_FIELDS, NODE_FIELDS, NODE_NUMERIC_FIELDS, Topology, TopologyError

EXPLICIT_KEYS = ("name", "params", "defaults", "nodes", "links")


def topology_from_dict(data: Mapping, *, where: str = "topology") -> Topology:
    """Build a ``Topology`` from either form (see the module docstring)."""
    if not isinstance(data, Mapping):
        raise TopologyError(f"{where}: must be a mapping, got {type(data).__name__}")
    if "builder" in data:
        return _from_builder(data, where)
    return _from_explicit(data, where)


def _tuples(value):
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _builder_arg(value):
    """Lists to tuples; numeric strings (PyYAML reads ``1e-6`` as one) to numbers."""
    if isinstance(value, list):
        return tuple(_builder_arg(v) for v in value)
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        text = value.strip()
        return int(text) if text.lstrip("+-").isdigit() else float(text)
    return value


def _from_builder(data: Mapping, where: str) -> Topology:
    name = data["builder"]
    if not isinstance(name, str) or name not in BUILDERS:
        raise TopologyError(f"{where}.builder: unknown builder {name!r}; known: {', '.join(BUILDERS)}")
    fn = BUILDERS[name]
    kwargs = {k: _builder_arg(v) for k, v in data.items() if k != "builder"}
    signature = inspect.signature(fn)
    unknown = [k for k in kwargs if k not in signature.parameters]
    if unknown:
        raise TopologyError(
            f"{where}: unknown argument(s) {', '.join(map(repr, unknown))} for builder {name!r}; "
            f"known: {', '.join(signature.parameters)}"
        )
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        raise TopologyError(f"{where}: bad arguments for builder {name!r}: {exc}") from None
    try:
        return fn(**kwargs)
    except (TypeError, ValueError) as exc:
        raise TopologyError(f"{where}: {exc}") from None


def _number(value, what: str) -> float:
    # PyYAML reads 1e-6 or 12.5e9 (no dot or no exponent sign) as strings;
    # accept those rather than make every scenario file write 1.0e-6.
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise TopologyError(f"{what} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TopologyError(f"{what} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise TopologyError(f"{what} must be finite, got {value!r}")
    return float(value)


def _node_id(value, what: str):
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TopologyError(f"{what} must be a string or an int, got {value!r}")
    return value


def _check_keys(entry, allowed, what: str) -> None:
    if not isinstance(entry, Mapping):
        raise TopologyError(f"{what}: must be a mapping, got {type(entry).__name__}")
    unknown = [k for k in entry if k not in allowed]
    if unknown:
        raise TopologyError(
            f"{what}: unknown field(s) {', '.join(map(repr, unknown))}; known: {', '.join(allowed)}"
        )


def _node_attrs(entry: Mapping, what: str) -> dict:
    attrs = {}
    for key, value in entry.items():
        if key in NODE_NUMERIC_FIELDS:
            attrs[key] = _number(value, f"{what}.{key}")
        elif key == "group":
            attrs[key] = _tuples(value)
        elif key in ("role", "tier"):
            if not isinstance(value, str):
                raise TopologyError(f"{what}.{key} must be a string, got {value!r}")
            attrs[key] = value
    return attrs


def _link_attrs(entry: Mapping, what: str) -> dict:
    return {k: _number(v, f"{what}.{k}") for k, v in entry.items() if k in LINK_FIELDS}


def _from_explicit(data: Mapping, where: str) -> Topology:
    _check_keys(data, EXPLICIT_KEYS + ("builder",), where)
    name = data.get("name", "custom")
    if not isinstance(name, str):
        raise TopologyError(f"{where}.name must be a string, got {name!r}")
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

    g = nx.Graph()
    for i, entry in enumerate(nodes):
        what = f"{where}.nodes[{i}]"
        _check_keys(entry, ("id",) + NODE_FIELDS, what)
        if "id" not in entry:
            raise TopologyError(f"{what}: missing field 'id'")
        node = _node_id(entry["id"], f"{what}.id")
        if node in g:
            raise TopologyError(f"{what}: duplicated id {node!r}")
        attrs = {**node_defaults, **_node_attrs(entry, what)}
        if "role" not in attrs:
            raise TopologyError(f"{what}: missing field 'role' (node {node!r})")
        g.add_node(node, **attrs)

    for i, entry in enumerate(links):
        what = f"{where}.links[{i}]"
        _check_keys(entry, ("src", "dst") + LINK_FIELDS, what)
        ends = []
        for end in ("src", "dst"):
            if end not in entry:
                raise TopologyError(f"{what}: missing field {end!r}")
            node = _node_id(entry[end], f"{what}.{end}")
            if node not in g:
                raise TopologyError(f"{what}: unknown node {node!r}")
            ends.append(node)
        u, v = ends
        if u == v:
            raise TopologyError(f"{what}: self-loop on node {u!r}")
        if g.has_edge(u, v):
            raise TopologyError(f"{what}: duplicated link {u}-{v}")
        attrs = {**link_defaults, **_link_attrs(entry, what)}
        if "bandwidth_bytes_per_s" not in attrs:
            raise TopologyError(f"{what}: missing field 'bandwidth_bytes_per_s' (link {u}-{v})")
        g.add_edge(u, v, **attrs)

    try:
        return Topology(g, name=name, params=dict(params))
    except TopologyError as exc:
        raise TopologyError(f"{where}: {exc}") from None


def read_data_file(path, error: type[Exception] = TopologyError):
    """Parse a ``.yaml``/``.yml`` or ``.json`` file; problems raise ``error`` naming the path and line.

    YAML numbers like ``1e-6`` are read as floats (YAML 1.2), not strings.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json"):
        raise error(f"{path}: unsupported file type {suffix!r}; use .yaml, .yml or .json")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise error(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise error(f"{path}: invalid YAML{at}: {problem}") from None


def load_topology(path) -> Topology:
    """Read a topology from a ``.yaml``/``.yml`` or ``.json`` file.

    The file holds either form, optionally under a top-level ``topology:``
    key (so a whole scenario file can be pointed at).
    """
    path = Path(path)
    data = read_data_file(path)
    where = str(path)
    if isinstance(data, Mapping) and "topology" in data:
        data = data["topology"]
        where = f"{path}: topology"
    if data is None:
        raise TopologyError(f"{path}: empty topology")
    return topology_from_dict(data, where=where)


class _Loader(yaml.SafeLoader):
    """SafeLoader reading floats as YAML 1.2 does: ``1e-6`` is a float."""


_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)
