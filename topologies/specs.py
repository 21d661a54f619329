"""Link and node specifications: what a builder's links and nodes are made of.

``LinkSpec`` and ``NodeSpec`` are frozen, checked when made, and partial: a
field left ``None`` is the builder's default for that link or node (a
ring's 12.5 GB/s, an edge_cloud device's 1 Tflop/s, a cluster preset's
scale-out latency).  ``DEFAULT_LINK``, ``DEFAULT_NODE`` and
``DEFAULT_SWITCH`` describe a GPU cluster on 100 Gb/s Ethernet: 12.5 GB/s
links with 2 us latency and 10 pJ/byte, 100 Tflop/s per rank at 100 W idle /
400 W busy, switches drawing a constant 150 W.

Scenario files write a spec's fields as flat keys (``wan_latency_s: 20e-3``,
``switch_idle_power_w: 50``) or as a mapping under the builder argument's
name (``wan: {latency_s: 20e-3}``); ``SpecKeys`` turns either into a spec,
and its errors name the key the file wrote.
"""
from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .hardware import NodeType, load_node_type
from .text import MAX_INT, is_finite_number, short, short_list
from .model import LINK_FIELDS, NODE_NUMERIC_FIELDS, TopologyError

POWER_FIELDS = ("idle_power_w", "busy_power_w")


class FieldError(TopologyError):
    """A bad value of one field; ``field`` and ``problem`` let a caller say which key it was written as."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field} {problem}")
        self.field, self.problem = field, problem

    def __reduce__(self):  # unpickled in another process, it is made from both parts again
        return FieldError, (self.field, self.problem)


def check_int(value, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise FieldError(what, f"must be an int, got {short(value)}")
    value = int(value)
    if value < minimum:
        raise FieldError(what, f"must be >= {minimum}, got {short(value)}")
    if value > MAX_INT:
        raise FieldError(what, f"must be <= 2^63-1, got {short(value)}")
    return value


def check_real(value, what: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise FieldError(what, f"must be a number, got {short(value)}")
    if not is_finite_number(value):
        raise FieldError(what, f"must be finite, got {short(value)}")
    value = float(value)
    if positive and value <= 0:
        raise FieldError(what, f"must be > 0, got {short(value)}")
    if value < 0:
        raise FieldError(what, f"must be >= 0, got {short(value)}")
    return value


def _first(*values):
    return next((v for v in values if v is not None), None)


@dataclass(frozen=True)
class LinkSpec:
    """A link: ``bandwidth_bytes_per_s`` (> 0), ``latency_s`` and ``energy_per_byte_j`` (>= 0), all finite."""

    bandwidth_bytes_per_s: float | None = None
    latency_s: float | None = None
    energy_per_byte_j: float | None = None

    def __post_init__(self):
        for name in LINK_FIELDS:
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, check_real(value, name, positive=name == "bandwidth_bytes_per_s"))

    def with_defaults(self, default: LinkSpec) -> LinkSpec:
        """This link with its ``None`` fields taken from ``default``."""
        return LinkSpec(*(_first(getattr(self, name), getattr(default, name)) for name in LINK_FIELDS))

    def attrs(self) -> dict:
        """The topology's link attributes (every field must be set)."""
        return {name: getattr(self, name) for name in LINK_FIELDS}


@dataclass(frozen=True)
class NodeSpec:
    """A node: ``flops_per_s`` (> 0), ``idle_power_w`` and ``busy_power_w`` (>= 0), ``node_type``.

    ``node_type`` (a preset's name such as ``h100_sxm``, a file, or a
    ``topologies.hardware.NodeType``; loaded here) gives a compute node that
    hardware: peaks per precision, memory, GEMM efficiency, its powers
    unless given, and ``flops_per_s``, its default precision's peak, so that
    one cannot be given too.  A switch takes only the powers.
    """

    flops_per_s: float | None = None
    idle_power_w: float | None = None
    busy_power_w: float | None = None
    node_type: NodeType | str | Path | None = None

    def __post_init__(self):
        for name in NODE_NUMERIC_FIELDS:
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, check_real(value, name, positive=name == "flops_per_s"))
        if self.node_type is None:
            return
        kind = load_node_type(self.node_type)
        object.__setattr__(self, "node_type", kind)
        if self.flops_per_s is not None:
            raise FieldError("flops_per_s", (
                f"comes from node_type {kind.name!r} (its {kind.default_precision} peak, {kind.flops_per_s:.6g}); "
                "give one or the other, or edit a copy of the node type's file"))

    def with_defaults(self, default: NodeSpec) -> NodeSpec:
        """This node with its ``None`` fields from its node type, then from ``default``.

        A ``flops_per_s`` given here keeps ``default``'s node type out: the
        speed and the hardware it would come from are one choice.
        """
        kind = self.node_type
        if kind is None and self.flops_per_s is None:
            kind = default.node_type
        return NodeSpec(
            flops_per_s=None if kind is not None else _first(self.flops_per_s, default.flops_per_s),
            idle_power_w=_first(self.idle_power_w, getattr(kind, "idle_power_w", None), default.idle_power_w),
            busy_power_w=_first(self.busy_power_w, getattr(kind, "busy_power_w", None), default.busy_power_w),
            node_type=kind,
        )

    def compute_attrs(self) -> dict:
        """The topology's attributes of a compute node (speed and powers must be set, or come from the type)."""
        attrs = {"role": "compute"}
        if self.node_type is not None:
            attrs.update(self.node_type.node_attrs())
        attrs.update(flops_per_s=_first(self.flops_per_s, getattr(self.node_type, "flops_per_s", None)),
                     idle_power_w=self.idle_power_w, busy_power_w=self.busy_power_w)
        return attrs

    def switch_attrs(self, role: str = "switch") -> dict:
        """The topology's attributes of a switch or router (its powers must be set)."""
        return {"role": role, "flops_per_s": 0.0, "idle_power_w": self.idle_power_w, "busy_power_w": self.busy_power_w}


DEFAULT_LINK = LinkSpec(12.5e9, latency_s=2e-6, energy_per_byte_j=1e-11)
DEFAULT_NODE = NodeSpec(flops_per_s=100e12, idle_power_w=100.0, busy_power_w=400.0)
DEFAULT_SWITCH = NodeSpec(idle_power_w=150.0, busy_power_w=150.0)


def _given(spec, kind: type, default, what: str):
    if spec is None:
        return default
    if not isinstance(spec, kind):
        raise TopologyError(f"{what} must be a {kind.__name__}, got {short(spec)}")
    return spec.with_defaults(default)


def link_of(spec: LinkSpec | None, default: LinkSpec, what: str) -> LinkSpec:
    """``spec`` (``what``: the builder argument, for errors) with ``default`` where it says nothing."""
    return _given(spec, LinkSpec, default, what)


def node_of(spec: NodeSpec | None, default: NodeSpec, what: str) -> NodeSpec:
    """A compute node: ``spec``, then its node type, then ``default``, then ``DEFAULT_NODE``."""
    return _given(spec, NodeSpec, default, what).with_defaults(DEFAULT_NODE)


def switch_of(spec: NodeSpec | None, default: NodeSpec, what: str) -> NodeSpec:
    """A switch: ``spec``'s powers, else ``default``'s; a switch has no speed or node type."""
    if isinstance(spec, NodeSpec) and (spec.flops_per_s is not None or spec.node_type is not None):
        raise TopologyError(f"{what}: a switch does not compute; give it only {' and '.join(POWER_FIELDS)}")
    return _given(spec, NodeSpec, default, what)


@dataclass(frozen=True)
class SpecKeys:
    """One spec argument of a builder as a scenario file writes it.

    Flat keys ``prefix + field`` for ``fields`` (``prefix`` defaults to
    ``argument + "_"``; ``link`` and ``node`` of most builders have none),
    or a mapping under ``argument``.  The spec gets only the fields given,
    so the builder's defaults fill the rest as they do for Python callers.
    """

    argument: str
    kind: type
    prefix: str | None = None
    fields: tuple[str, ...] = ()

    def __post_init__(self):
        if self.prefix is None:
            object.__setattr__(self, "prefix", f"{self.argument}_")
        if not self.fields:
            object.__setattr__(self, "fields", tuple(f.name for f in dataclasses.fields(self.kind)))

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys a file may write for this argument."""
        return (self.argument,) + tuple(self.prefix + name for name in self.fields)

    def from_file(self, data: Mapping, what: str) -> dict:
        """``{argument: spec}`` from ``data``'s keys, or ``{}`` where it has none (``what``: error prefix)."""
        flat = {name: data[self.prefix + name] for name in self.fields if self.prefix + name in data}
        for name, value in flat.items():
            _not_null(value, name, f"{what}{self.prefix}{name}")
        nested = data.get(self.argument)
        if nested is None and not flat:
            return {}
        values = {}
        if nested is not None:
            if not isinstance(nested, Mapping):
                raise TopologyError(f"{what}{self.argument} must be a mapping of {', '.join(self.fields)}, "
                                    f"got {short(nested)}")
            unknown = [k for k in nested if k not in self.fields]
            if unknown:
                raise TopologyError(f"{what}{self.argument}: unknown field(s) {short_list(unknown)}; "
                                    f"known: {', '.join(self.fields)}")
            for name, value in nested.items():
                _not_null(value, name, f"{what}{self.argument}.{name}")
            twice = [k for k in nested if k in flat]
            if twice:
                raise TopologyError(f"{what}{self.argument}.{twice[0]} and {self.prefix}{twice[0]} are both given")
            values.update(nested)
        values.update(flat)
        try:
            return {self.argument: self.kind(**values)}
        except FieldError as exc:
            shown = self.prefix + exc.field if exc.field in flat else f"{self.argument}.{exc.field}"
            raise TopologyError(f"{what}{shown} {exc.problem}") from None
        except TopologyError as exc:  # a node type that does not load
            raise TopologyError(f"{what}{exc}") from None

    def flat(self, attrs: Mapping) -> dict:
        """``attrs`` (a built node's or link's) under this argument's flat keys: what ``Topology.params`` records."""
        return {self.prefix + name: attrs[name] for name in self.fields if name in attrs}


LINK_KEYS = SpecKeys("link", LinkSpec, prefix="")
NODE_KEYS = SpecKeys("node", NodeSpec, prefix="")
SWITCH_KEYS = SpecKeys("switch", NodeSpec, fields=POWER_FIELDS)


@dataclass(frozen=True)
class LevelLinkKeys:
    """Per-level links as a file writes them: one list per link field, innermost level first.

    ``lists`` name them in ``LINK_FIELDS`` order (``bandwidths_bytes_per_s:
    [300e9, 25e9]``, ...), each ``len(levels)`` long.  A list left out takes
    the builder's ``defaults(depth)``, which must have that field at every level.
    """

    argument: str
    lists: tuple[str, ...]
    defaults: Callable[[int], tuple[LinkSpec, ...]]

    @property
    def keys(self) -> tuple[str, ...]:
        return self.lists

    def from_file(self, data: Mapping, what: str) -> dict:
        levels = data.get("levels")
        if isinstance(levels, (str, bytes, Mapping)) or not hasattr(levels, "__len__"):
            return {}  # the builder says what is wrong with levels
        depth = len(levels)
        defaults = self.defaults(depth)
        columns = {}
        for key, name in zip(self.lists, LINK_FIELDS):
            values = data.get(key)
            if values is None:
                if any(getattr(link, name) is None for link in defaults):
                    raise TopologyError(f"{what}{key} has no default for {depth} levels; pass {depth} values")
                continue
            if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
                raise TopologyError(f"{what}{key} must be a list of {depth} numbers, got {short(values)}")
            values = list(values)
            if len(values) != depth:
                raise TopologyError(f"{what}{key} must have len(levels) = {depth} entries, got {len(values)}")
            columns[name] = values
        links = []
        for i in range(depth):
            for name, values in columns.items():
                _not_null(values[i], name, f"{what}level {i} {name}")
            try:
                links.append(LinkSpec(**{name: values[i] for name, values in columns.items()}))
            except FieldError as exc:
                raise TopologyError(f"{what}level {i} {exc.field} {exc.problem}") from None
        return {self.argument: tuple(links)}


def _not_null(value, field: str, shown: str) -> None:
    # In Python a None field is the builder's default; a file leaves the key out for that, so a
    # null there is a value that went missing (``bandwidth_bytes_per_s:`` with nothing after it).
    if value is None and field != "node_type":
        raise TopologyError(f"{shown} must be a number, got None")


def specs_from_file(groups, data: Mapping, what: str) -> dict:
    """The builder arguments that ``groups`` (``SpecKeys`` and the like) make of ``data``'s keys."""
    out = {}
    for group in groups:
        out.update(group.from_file(data, what))
    return out
