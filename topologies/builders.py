"""Topology builders: small pure functions returning a validated ``Topology``.

Units live in the names: bandwidth in bytes/s, latency in s, energy per byte
in J, compute speed in flop/s, power in W.  Compute nodes are named ``n0``,
``n1``, ... and inserted first, so node insertion order is rank order.
Defaults describe a GPU cluster on 100 Gb/s Ethernet: 100 Tflop/s per rank,
100 W idle / 400 W busy, 12.5 GB/s links with 2 us latency and 10 pJ/byte;
switches draw a constant 150 W.  ``node_type`` (a preset name such as
``h100_sxm``, a file, or a ``topologies.hardware.NodeType``) gives the ranks
that hardware instead: peaks per precision, memory, GEMM efficiency, powers.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable

import networkx as nx

from .hardware import CLUSTER_KEYS, load_cluster_preset, load_node_type
from .limits import MAX_INT, is_finite_number, short
from .model import Topology, TopologyError

BANDWIDTH_BYTES_PER_S = 12.5e9
LATENCY_S = 2e-6
ENERGY_PER_BYTE_J = 1e-11
FLOPS_PER_S = 100e12
IDLE_POWER_W = 100.0
BUSY_POWER_W = 400.0
SWITCH_POWER_W = 150.0


# -- validation at the edge ---------------------------------------------------

def _int(value, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TopologyError(f"{what} must be an int, got {short(value)}")
    value = int(value)
    if value < minimum:
        raise TopologyError(f"{what} must be >= {minimum}, got {short(value)}")
    if value > MAX_INT:
        raise TopologyError(f"{what} must be <= 2^63-1, got {short(value)}")
    return value


def _real(value, what: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TopologyError(f"{what} must be a number, got {short(value)}")
    if not is_finite_number(value):
        raise TopologyError(f"{what} must be finite, got {short(value)}")
    value = float(value)
    if positive and value <= 0:
        raise TopologyError(f"{what} must be > 0, got {short(value)}")
    if value < 0:
        raise TopologyError(f"{what} must be >= 0, got {short(value)}")
    return value


def _link(bandwidth_bytes_per_s, latency_s, energy_per_byte_j, prefix: str = "") -> dict:
    return {
        "bandwidth_bytes_per_s": _real(bandwidth_bytes_per_s, f"{prefix}bandwidth_bytes_per_s", positive=True),
        "latency_s": _real(latency_s, f"{prefix}latency_s"),
        "energy_per_byte_j": _real(energy_per_byte_j, f"{prefix}energy_per_byte_j"),
    }


def _compute(flops_per_s, idle_power_w, busy_power_w, prefix: str = "", **extra) -> dict:
    return {
        "role": "compute",
        "flops_per_s": _real(flops_per_s, f"{prefix}flops_per_s", positive=True),
        "idle_power_w": _real(idle_power_w, f"{prefix}idle_power_w"),
        "busy_power_w": _real(busy_power_w, f"{prefix}busy_power_w"),
        **extra,
    }


def _rank_attrs(params: dict, prefix: str, **extra) -> dict:
    """A builder's compute-node attributes from its ``flops_per_s``, powers and ``node_type``.

    Without a node type: the given values, else the module's defaults.  With
    one (a preset name, a file or a ``NodeType``): its peaks, memory and GEMM
    table, ``flops_per_s`` its default precision's peak (so it cannot be given
    too), its powers unless given.  The resolved values replace the ``None``s
    in ``params`` (what ``Topology.params`` records).
    """
    node_type = params.pop("node_type", None)
    attrs = {"role": "compute"}
    flops_per_s = params.get("flops_per_s")
    idle_power_w, busy_power_w = params.get("idle_power_w"), params.get("busy_power_w")
    if node_type is None:
        flops_per_s = FLOPS_PER_S if flops_per_s is None else flops_per_s
        idle_default, busy_default = IDLE_POWER_W, BUSY_POWER_W
    else:
        try:
            kind = load_node_type(node_type)
        except TopologyError as exc:
            raise TopologyError(f"{prefix}{exc}") from None
        if flops_per_s is not None:
            raise TopologyError(
                f"{prefix}flops_per_s comes from node_type {kind.name!r} (its {kind.default_precision} peak, "
                f"{kind.flops_per_s:.6g}); give one or the other, or edit a copy of the node type's file"
            )
        attrs.update(kind.node_attrs())
        flops_per_s = kind.flops_per_s
        idle_default = IDLE_POWER_W if kind.idle_power_w is None else kind.idle_power_w
        busy_default = BUSY_POWER_W if kind.busy_power_w is None else kind.busy_power_w
        params["node_type"] = kind.name
    attrs["flops_per_s"] = _real(flops_per_s, f"{prefix}flops_per_s", positive=True)
    attrs["idle_power_w"] = _real(idle_default if idle_power_w is None else idle_power_w, f"{prefix}idle_power_w")
    attrs["busy_power_w"] = _real(busy_default if busy_power_w is None else busy_power_w, f"{prefix}busy_power_w")
    params.update(flops_per_s=attrs["flops_per_s"], idle_power_w=attrs["idle_power_w"],
                  busy_power_w=attrs["busy_power_w"])
    attrs.update(extra)
    return attrs


def _switch(idle_power_w, busy_power_w, role: str = "switch", prefix: str = "switch_") -> dict:
    return {
        "role": role,
        "flops_per_s": 0.0,
        "idle_power_w": _real(idle_power_w, f"{prefix}idle_power_w"),
        "busy_power_w": _real(busy_power_w, f"{prefix}busy_power_w"),
    }


def _add_ranks(g: nx.Graph, n: int, node_attrs: dict) -> list[str]:
    names = [f"n{i}" for i in range(n)]
    for name in names:
        g.add_node(name, **node_attrs)
    return names


def _params(local: dict) -> dict:
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in local.items()}


# -- builders -----------------------------------------------------------------

def ring(
    n: int,
    *,
    bandwidth_bytes_per_s: float = BANDWIDTH_BYTES_PER_S,
    latency_s: float = LATENCY_S,
    energy_per_byte_j: float = ENERGY_PER_BYTE_J,
    flops_per_s: float | None = None,
    idle_power_w: float | None = None,
    busy_power_w: float | None = None,
    node_type=None,
) -> Topology:
    """``n`` ranks in a cycle, rank i linked to rank (i+1) % n (n=2: one link)."""
    params = _params(locals())
    n = _int(n, "ring: n", 2)
    link = _link(bandwidth_bytes_per_s, latency_s, energy_per_byte_j, "ring: ")
    g = nx.Graph()
    names = _add_ranks(g, n, _rank_attrs(params, "ring: "))
    for i in range(n if n > 2 else 1):
        g.add_edge(names[i], names[(i + 1) % n], **link)
    return Topology(g, name="ring", params=params)


def switch(
    n: int,
    *,
    bandwidth_bytes_per_s: float = BANDWIDTH_BYTES_PER_S,
    latency_s: float = LATENCY_S,
    energy_per_byte_j: float = ENERGY_PER_BYTE_J,
    flops_per_s: float | None = None,
    idle_power_w: float | None = None,
    busy_power_w: float | None = None,
    node_type=None,
    switch_idle_power_w: float = SWITCH_POWER_W,
    switch_busy_power_w: float = SWITCH_POWER_W,
) -> Topology:
    """Star: ``n`` ranks each linked to one switch ``s0``."""
    params = _params(locals())
    n = _int(n, "switch: n", 2)
    link = _link(bandwidth_bytes_per_s, latency_s, energy_per_byte_j, "switch: ")
    g = nx.Graph()
    names = _add_ranks(g, n, _rank_attrs(params, "switch: "))
    g.add_node("s0", **_switch(switch_idle_power_w, switch_busy_power_w, prefix="switch: switch_"))
    for name in names:
        g.add_edge(name, "s0", **link)
    return Topology(g, name="switch", params=params)


def fully_connected(
    n: int,
    *,
    bandwidth_bytes_per_s: float = BANDWIDTH_BYTES_PER_S,
    latency_s: float = LATENCY_S,
    energy_per_byte_j: float = ENERGY_PER_BYTE_J,
    flops_per_s: float | None = None,
    idle_power_w: float | None = None,
    busy_power_w: float | None = None,
    node_type=None,
) -> Topology:
    """A direct link between every pair of the ``n`` ranks (n(n-1)/2 links)."""
    params = _params(locals())
    n = _int(n, "fully_connected: n", 2)
    link = _link(bandwidth_bytes_per_s, latency_s, energy_per_byte_j, "fully_connected: ")
    g = nx.Graph()
    names = _add_ranks(g, n, _rank_attrs(params, "fully_connected: "))
    for i in range(n):
        for j in range(i + 1, n):
            g.add_edge(names[i], names[j], **link)
    return Topology(g, name="fully_connected", params=params)


def tree(
    n: int,
    *,
    arity: int = 2,
    bandwidth_bytes_per_s: float = BANDWIDTH_BYTES_PER_S,
    uplink_bandwidth_bytes_per_s: float | None = None,
    latency_s: float = LATENCY_S,
    energy_per_byte_j: float = ENERGY_PER_BYTE_J,
    flops_per_s: float | None = None,
    idle_power_w: float | None = None,
    busy_power_w: float | None = None,
    node_type=None,
    switch_idle_power_w: float = SWITCH_POWER_W,
    switch_busy_power_w: float = SWITCH_POWER_W,
) -> Topology:
    """``arity``-ary tree: ranks are leaves, switches the inner nodes.

    Leaves fill the level-1 switches left to right (``arity`` each), those
    fill level-2 switches the same way, up to a single root switch
    ``s{levels}_0``.  Switch-switch links use ``uplink_bandwidth_bytes_per_s``
    (default: ``bandwidth_bytes_per_s``).
    """
    params = _params(locals())
    n = _int(n, "tree: n", 2)
    arity = _int(arity, "tree: arity", 2)
    leaf_link = _link(bandwidth_bytes_per_s, latency_s, energy_per_byte_j, "tree: ")
    if uplink_bandwidth_bytes_per_s is None:
        uplink_bandwidth_bytes_per_s = bandwidth_bytes_per_s
    uplink = _link(uplink_bandwidth_bytes_per_s, latency_s, energy_per_byte_j, "tree: uplink_")
    sw = _switch(switch_idle_power_w, switch_busy_power_w, prefix="tree: switch_")
    g = nx.Graph()
    children = _add_ranks(g, n, _rank_attrs(params, "tree: "))
    level = 0
    while level == 0 or len(children) > 1:
        level += 1
        parents = [f"s{level}_{i}" for i in range(-(-len(children) // arity))]
        for parent in parents:
            g.add_node(parent, **sw)
        for i, child in enumerate(children):
            g.add_edge(child, parents[i // arity], **(leaf_link if level == 1 else uplink))
        children = parents
    return Topology(g, name="tree", params=params)


def torus(
    dims,
    *,
    bandwidth_bytes_per_s: float = BANDWIDTH_BYTES_PER_S,
    latency_s: float = LATENCY_S,
    energy_per_byte_j: float = ENERGY_PER_BYTE_J,
    flops_per_s: float | None = None,
    idle_power_w: float | None = None,
    busy_power_w: float | None = None,
    node_type=None,
) -> Topology:
    """2-D or 3-D torus of ranks with wraparound; each dim >= 2.

    Rank order is row-major (last dimension fastest): in ``dims=(4, 4)``
    rank 5 sits at (1, 1).  A dimension of size 2 gives one link between the
    two neighbours, not two parallel ones.
    """
    if isinstance(dims, (str, bytes)) or not hasattr(dims, "__iter__"):
        raise TopologyError(f"torus: dims must be a tuple of 2 or 3 ints, got {short(dims)}")
    dims = tuple(dims)
    params = _params(locals())
    dims = _torus_dims(dims)
    link = _link(bandwidth_bytes_per_s, latency_s, energy_per_byte_j, "torus: ")
    g = nx.Graph()
    n = math.prod(dims)
    names = _add_ranks(g, n, _rank_attrs(params, "torus: "))
    strides = [math.prod(dims[i + 1:]) for i in range(len(dims))]
    for r in range(n):
        for d, (size, stride) in enumerate(zip(dims, strides)):
            coord = (r // stride) % size
            neighbour = r + (((coord + 1) % size) - coord) * stride
            if not g.has_edge(names[r], names[neighbour]):
                g.add_edge(names[r], names[neighbour], **link)
    return Topology(g, name="torus", params=params)


def fat_tree(
    k: int,
    *,
    n: int | None = None,
    bandwidth_bytes_per_s: float = BANDWIDTH_BYTES_PER_S,
    latency_s: float = LATENCY_S,
    energy_per_byte_j: float = ENERGY_PER_BYTE_J,
    flops_per_s: float | None = None,
    idle_power_w: float | None = None,
    busy_power_w: float | None = None,
    node_type=None,
    switch_idle_power_w: float = SWITCH_POWER_W,
    switch_busy_power_w: float = SWITCH_POWER_W,
) -> Topology:
    """k-ary fat tree (Al-Fares et al. 2008), ``k`` even.

    k pods of k/2 edge and k/2 aggregation switches, (k/2)^2 core switches,
    k^3/4 hosts (k/2 per edge switch).  Aggregation switch j of every pod
    links to core switches j*k/2 .. j*k/2 + k/2 - 1.  With ``n``, only the
    first ``n`` hosts are kept (all switches stay).
    """
    params = _params(locals())
    k, n = _fat_tree_k_n(k, n)
    half = k // 2
    link = _link(bandwidth_bytes_per_s, latency_s, energy_per_byte_j, "fat_tree: ")
    sw = _switch(switch_idle_power_w, switch_busy_power_w, prefix="fat_tree: switch_")
    g = nx.Graph()
    names = _add_ranks(g, n, _rank_attrs(params, "fat_tree: "))
    core = [f"core{i}" for i in range(half * half)]
    for p in range(k):
        for j in range(half):
            g.add_node(f"edge{p}_{j}", **sw)
        for j in range(half):
            g.add_node(f"agg{p}_{j}", **sw)
    for c in core:
        g.add_node(c, **sw)
    for h, name in enumerate(names):
        p, rest = divmod(h, half * half)
        g.add_edge(name, f"edge{p}_{rest // half}", **link)
    for p in range(k):
        for e in range(half):
            for a in range(half):
                g.add_edge(f"edge{p}_{e}", f"agg{p}_{a}", **link)
        for a in range(half):
            for i in range(half):
                g.add_edge(f"agg{p}_{a}", core[a * half + i], **link)
    return Topology(g, name="fat_tree", params=params)


HIERARCHICAL_BANDWIDTHS_BYTES_PER_S = (300e9, 25e9, 12.5e9)  # NVLink/NVSwitch, NIC, spine
HIERARCHICAL_LATENCIES_S = (1e-6, 5e-6, 10e-6)


def hierarchical(
    levels,
    *,
    bandwidths_bytes_per_s=None,
    latencies_s=None,
    energies_per_byte_j=None,
    flops_per_s: float | None = None,
    idle_power_w: float | None = None,
    busy_power_w: float | None = None,
    node_type=None,
    switch_idle_power_w: float = SWITCH_POWER_W,
    switch_busy_power_w: float = SWITCH_POWER_W,
) -> Topology:
    """Nested groups joined by one switch per group at every level.

    ``levels`` counts outermost first: ``(4, 8)`` is 4 servers of 8 GPUs,
    ``(2, 4, 8)`` is 2 racks of 4 servers of 8 GPUs.  The per-level lists
    count innermost first: ``bandwidths_bytes_per_s[0]`` is the innermost
    network (GPU to its server's switch, like NVSwitch), ``[1]`` the next
    (server to top-of-rack), and so on; each must have ``len(levels)``
    entries.  Defaults (up to 3 levels): bandwidths 300e9, 25e9, 12.5e9
    bytes/s, latencies 1e-6, 5e-6, 10e-6 s, energy 1e-11 J/byte.

    Each rank's ``group`` attribute is the index of its innermost group
    (``rank // levels[-1]``).  Switches are named ``sw{level}_{i}``.
    """
    levels = _hierarchical_levels(levels)
    depth = len(levels)

    def per_level(values, what, default):
        if values is None:
            if default is None:
                return [ENERGY_PER_BYTE_J] * depth
            if depth > len(default):
                raise TopologyError(
                    f"hierarchical: {what} has no default for {depth} levels; pass {depth} values"
                )
            return list(default[:depth])
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            raise TopologyError(f"hierarchical: {what} must be a list of {depth} numbers, got {short(values)}")
        values = list(values)
        if len(values) != depth:
            raise TopologyError(
                f"hierarchical: {what} must have len(levels) = {depth} entries, got {len(values)}"
            )
        return values

    bandwidths = per_level(bandwidths_bytes_per_s, "bandwidths_bytes_per_s", HIERARCHICAL_BANDWIDTHS_BYTES_PER_S)
    latencies = per_level(latencies_s, "latencies_s", HIERARCHICAL_LATENCIES_S)
    energies = per_level(energies_per_byte_j, "energies_per_byte_j", None)
    params = {
        "levels": levels,
        "bandwidths_bytes_per_s": tuple(bandwidths),
        "latencies_s": tuple(latencies),
        "energies_per_byte_j": tuple(energies),
        "flops_per_s": flops_per_s,
        "idle_power_w": idle_power_w,
        "busy_power_w": busy_power_w,
        "node_type": node_type,
        "switch_idle_power_w": switch_idle_power_w,
        "switch_busy_power_w": switch_busy_power_w,
    }
    link_at = [
        _link(bandwidths[i], latencies[i], energies[i], f"hierarchical: level {i} ")
        for i in range(depth)
    ]
    n = math.prod(levels)
    if n < 2:
        raise TopologyError(f"hierarchical: levels {short(levels)} give {n} rank; need >= 2")
    compute = _rank_attrs(params, "hierarchical: ")
    sw = _switch(switch_idle_power_w, switch_busy_power_w, prefix="hierarchical: switch_")
    g = nx.Graph()
    group_size = levels[-1]
    children = [f"n{r}" for r in range(n)]
    for r, name in enumerate(children):
        g.add_node(name, **compute, group=r // group_size)
    # Level i joins consecutive runs of levels[-1 - i] children under one switch.
    for i in range(depth):
        fan_in = levels[-1 - i]
        parents = [f"sw{i}_{j}" for j in range(len(children) // fan_in)]
        for parent in parents:
            g.add_node(parent, **sw)
        for c, child in enumerate(children):
            g.add_edge(child, parents[c // fan_in], **link_at[i])
        children = parents
    return Topology(g, name="hierarchical", params=params)


def edge_cloud(
    *,
    n_devices: int,
    n_edge: int,
    n_cloud: int = 1,
    device_flops_per_s: float = 1e12,
    edge_flops_per_s: float = 20e12,
    cloud_flops_per_s: float = 200e12,
    device_idle_power_w: float = 1.0,
    device_busy_power_w: float = 5.0,
    edge_idle_power_w: float = 50.0,
    edge_busy_power_w: float = 150.0,
    cloud_idle_power_w: float = 200.0,
    cloud_busy_power_w: float = 500.0,
    wireless_bandwidth_bytes_per_s: float = 12.5e6,
    wireless_latency_s: float = 5e-3,
    wireless_energy_per_byte_j: float = 1e-7,
    lan_bandwidth_bytes_per_s: float = 1.25e9,
    lan_latency_s: float = 0.2e-3,
    lan_energy_per_byte_j: float = 1e-9,
    wan_bandwidth_bytes_per_s: float = 125e6,
    wan_latency_s: float = 20e-3,
    wan_energy_per_byte_j: float = 5e-9,
    switch_idle_power_w: float = SWITCH_POWER_W,
    switch_busy_power_w: float = SWITCH_POWER_W,
) -> Topology:
    """Devices, edge servers and a cloud data centre (the computing continuum).

    Device i reaches edge server ``i % n_edge`` by a wireless link; every
    edge server reaches the gateway router ``gw`` by a WAN link; the gateway
    reaches the data-centre switch ``dc_switch`` by a LAN link, and so does
    every cloud node.  All three tiers compute (``tier`` is 'device', 'edge'
    or 'cloud'); ranks are devices, then edge servers, then cloud nodes.
    ``group`` is the edge server's index for it and its devices, and
    ``n_edge`` for the cloud nodes.  ``n_cloud=0`` drops the data centre.
    Router and switch draw ``switch_*_power_w``.
    """
    params = _params(locals())
    n_devices = _int(n_devices, "edge_cloud: n_devices", 0)
    n_edge = _int(n_edge, "edge_cloud: n_edge", 1)
    n_cloud = _int(n_cloud, "edge_cloud: n_cloud", 0)
    if n_devices + n_edge + n_cloud < 2:
        raise TopologyError("edge_cloud: needs at least 2 compute nodes in total")
    wireless = _link(wireless_bandwidth_bytes_per_s, wireless_latency_s, wireless_energy_per_byte_j, "edge_cloud: wireless_")
    lan = _link(lan_bandwidth_bytes_per_s, lan_latency_s, lan_energy_per_byte_j, "edge_cloud: lan_")
    wan = _link(wan_bandwidth_bytes_per_s, wan_latency_s, wan_energy_per_byte_j, "edge_cloud: wan_")
    device = _compute(device_flops_per_s, device_idle_power_w, device_busy_power_w, "edge_cloud: device_", tier="device")
    edge = _compute(edge_flops_per_s, edge_idle_power_w, edge_busy_power_w, "edge_cloud: edge_", tier="edge")
    cloud = _compute(cloud_flops_per_s, cloud_idle_power_w, cloud_busy_power_w, "edge_cloud: cloud_", tier="cloud")
    g = nx.Graph()
    for i in range(n_devices):
        g.add_node(f"dev{i}", **device, group=i % n_edge)
    for j in range(n_edge):
        g.add_node(f"edge{j}", **edge, group=j)
    for c in range(n_cloud):
        g.add_node(f"cloud{c}", **cloud, group=n_edge)
    g.add_node("gw", **_switch(switch_idle_power_w, switch_busy_power_w, role="router", prefix="edge_cloud: switch_"))
    if n_cloud:
        g.add_node("dc_switch", **_switch(switch_idle_power_w, switch_busy_power_w, prefix="edge_cloud: switch_"))
    for i in range(n_devices):
        g.add_edge(f"dev{i}", f"edge{i % n_edge}", **wireless)
    for j in range(n_edge):
        g.add_edge(f"edge{j}", "gw", **wan)
    if n_cloud:
        g.add_edge("gw", "dc_switch", **lan)
        for c in range(n_cloud):
            g.add_edge(f"cloud{c}", "dc_switch", **lan)
    return Topology(g, name="edge_cloud", params=params)


FABRICS = ("fat_tree", "rail_optimized")
# gpu_cluster without a preset: H100 SXM servers (the dgx_h100 preset's
# figures) in a plain fat tree of 64-port leaf switches (32 NICs down).
GPU_CLUSTER_DEFAULTS = {
    "gpus_per_node": 8,
    "node_type": "h100_sxm",
    "scale_up_bandwidth_bytes_per_s": 450e9,
    "scale_up_latency_s": 1.5e-6,
    "scale_up_energy_per_byte_j": ENERGY_PER_BYTE_J,
    "scale_out_bandwidth_bytes_per_s": 50e9,
    "scale_out_latency_s": 3e-6,
    "scale_out_energy_per_byte_j": ENERGY_PER_BYTE_J,
    "fabric": "fat_tree",
    "oversubscription": 1.0,
    "nics_per_leaf": 32,
    "spines": 1,
    "fabric_latency_s": 0.5e-6,
    "switch_idle_power_w": SWITCH_POWER_W,
    "switch_busy_power_w": SWITCH_POWER_W,
}


def gpu_cluster(
    nodes: int,
    *,
    preset=None,
    gpus_per_node: int | None = None,
    node_type=None,
    scale_up_bandwidth_bytes_per_s: float | None = None,
    scale_up_latency_s: float | None = None,
    scale_up_energy_per_byte_j: float | None = None,
    scale_out_bandwidth_bytes_per_s: float | None = None,
    scale_out_latency_s: float | None = None,
    scale_out_energy_per_byte_j: float | None = None,
    fabric: str | None = None,
    oversubscription: float | None = None,
    nics_per_leaf: int | None = None,
    spines: int | None = None,
    fabric_latency_s: float | None = None,
    idle_power_w: float | None = None,
    busy_power_w: float | None = None,
    switch_idle_power_w: float | None = None,
    switch_busy_power_w: float | None = None,
) -> Topology:
    """``nodes`` GPU servers of ``gpus_per_node`` GPUs: NVSwitch inside, one NIC per GPU outside.

    Every keyword left ``None`` comes from ``preset`` (a cluster preset's
    name, e.g. ``dgx_h100``, or file; see ``topologies.hardware``), else from
    ``GPU_CLUSTER_DEFAULTS`` (H100 SXM servers, a plain fat tree).

    Inside server s every GPU links to the switch ``nvswitch{s}`` at
    ``scale_up_bandwidth_bytes_per_s``.  GPU r links to its NIC ``nic{r}``
    and the NIC to a leaf switch, both at ``scale_out_bandwidth_bytes_per_s``.
    ``fabric="fat_tree"``: NICs fill leaves ``leaf{i}`` in order,
    ``nics_per_leaf`` each (a server's NICs share a leaf where they fit);
    ``"rail_optimized"``: NIC g of every server goes to a leaf of rail g (one
    per ``nics_per_leaf`` servers), as in DGX SuperPODs.  With more than one
    leaf, ``spines`` spine switches join them: each leaf's uplinks together
    carry its NICs' bandwidth / ``oversubscription``, split evenly over the
    spines (one spine, the default, is the whole spine layer as one
    aggregate switch: flows share it max-min fairly, as ideal adaptive
    routing would; more spines add ECMP's uneven hashing).

    Latencies are GPU to GPU: ``scale_up_latency_s`` through the NVSwitch,
    ``scale_out_latency_s`` through two NICs and one leaf (each split in
    half over the two links that carry it), plus ``fabric_latency_s`` per
    leaf-spine link; energies per byte the same way.  A GPU-NIC link adds no
    latency or energy (the NIC figures include it).  Traffic between GPUs of
    one server goes through the NVSwitch, so ``scale_up_latency_s`` may not
    exceed ``scale_out_latency_s``.  ``group`` is the server's index.  GPUs
    are ranks ``n0``.. in server order; they take ``node_type``'s hardware
    (``idle_power_w``/``busy_power_w`` override its powers); NICs are
    switches that draw nothing, NVSwitches, leaves and spines draw
    ``switch_*_power_w``.
    """
    shape = _gpu_cluster_shape(nodes, locals())
    k = shape["keywords"]
    servers, gpus, fabric, per_leaf, nspines, nleaves = (
        shape["servers"], shape["gpus_per_node"], shape["fabric"], shape["nics_per_leaf"], shape["spines"],
        shape["leaves"])
    what = "gpu_cluster: "
    up_bw = _real(k["scale_up_bandwidth_bytes_per_s"], f"{what}scale_up_bandwidth_bytes_per_s", positive=True)
    out_bw = _real(k["scale_out_bandwidth_bytes_per_s"], f"{what}scale_out_bandwidth_bytes_per_s", positive=True)
    up_lat = _real(k["scale_up_latency_s"], f"{what}scale_up_latency_s")
    out_lat = _real(k["scale_out_latency_s"], f"{what}scale_out_latency_s")
    fabric_lat = _real(k["fabric_latency_s"], f"{what}fabric_latency_s")
    up_j = _real(k["scale_up_energy_per_byte_j"], f"{what}scale_up_energy_per_byte_j")
    out_j = _real(k["scale_out_energy_per_byte_j"], f"{what}scale_out_energy_per_byte_j")
    oversub = _real(k["oversubscription"], f"{what}oversubscription")
    if oversub < 1:
        raise TopologyError(f"{what}oversubscription must be >= 1 (1: non-blocking), got {short(oversub)}")
    if up_lat > out_lat:
        raise TopologyError(
            f"{what}scale_up_latency_s ({short(up_lat)}) must not exceed scale_out_latency_s ({short(out_lat)}): "
            "routes take the lowest latency, and traffic inside a server must go through its NVSwitch"
        )
    params = {"nodes": servers, "preset": shape["preset"], **k, "node_type": k["node_type"],
              "flops_per_s": None, "idle_power_w": k["idle_power_w"], "busy_power_w": k["busy_power_w"]}
    if params["preset"] is None:
        del params["preset"]
    gpu = _rank_attrs(params, what)
    params.pop("flops_per_s")
    sw = _switch(k["switch_idle_power_w"], k["switch_busy_power_w"], prefix=f"{what}switch_")
    nic = {"role": "switch", "flops_per_s": 0.0, "idle_power_w": 0.0, "busy_power_w": 0.0}
    nvlink = {"bandwidth_bytes_per_s": up_bw, "latency_s": up_lat / 2, "energy_per_byte_j": up_j / 2}
    pcie = {"bandwidth_bytes_per_s": out_bw, "latency_s": 0.0, "energy_per_byte_j": 0.0}
    nic_link = {"bandwidth_bytes_per_s": out_bw, "latency_s": out_lat / 2, "energy_per_byte_j": out_j / 2}

    g = nx.Graph()
    for r in range(servers * gpus):
        g.add_node(f"n{r}", **gpu, group=r // gpus)
    for s in range(servers):
        g.add_node(f"nvswitch{s}", **sw)
    for r in range(servers * gpus):
        g.add_node(f"nic{r}", **nic)
    for i in range(nleaves):
        g.add_node(f"leaf{i}", **sw)
    for j in range(nspines):
        g.add_node(f"spine{j}", **sw)
    blocks = -(-servers // per_leaf)  # leaves per rail
    nics_on = [0] * nleaves
    for r in range(servers * gpus):
        s, local = divmod(r, gpus)
        leaf = r // per_leaf if fabric == "fat_tree" else local * blocks + s // per_leaf
        nics_on[leaf] += 1
        g.add_edge(f"n{r}", f"nvswitch{s}", **nvlink)
        g.add_edge(f"n{r}", f"nic{r}", **pcie)
        g.add_edge(f"nic{r}", f"leaf{leaf}", **nic_link)
    for i in range(nleaves if nspines else 0):
        uplink = {"bandwidth_bytes_per_s": nics_on[i] * out_bw / oversub / nspines, "latency_s": fabric_lat,
                  "energy_per_byte_j": out_j / 2}
        for j in range(nspines):
            g.add_edge(f"leaf{i}", f"spine{j}", **uplink)
    return Topology(g, name="gpu_cluster", params=params)


def _gpu_cluster_shape(nodes, given: dict) -> dict:
    """The keywords gpu_cluster runs with (given > preset > defaults) and its counts, checked."""
    preset = given.get("preset")
    keywords = dict(GPU_CLUSTER_DEFAULTS)
    if preset is not None:
        try:
            loaded = load_cluster_preset(preset)
        except TopologyError as exc:
            raise TopologyError(f"gpu_cluster: {exc}") from None
        keywords.update(loaded.keywords)
        preset = loaded.name
    for key in tuple(CLUSTER_KEYS) + ("idle_power_w", "busy_power_w"):
        if given.get(key) is not None:
            keywords[key] = given[key]
        keywords.setdefault(key, None)
    servers = _int(nodes, "gpu_cluster: nodes", 1)
    gpus = _int(keywords["gpus_per_node"], "gpu_cluster: gpus_per_node", 1)
    fabric = keywords["fabric"]
    if fabric not in FABRICS:
        raise TopologyError(f"gpu_cluster: unknown fabric {short(fabric)}; known: {', '.join(FABRICS)}")
    per_leaf = _int(keywords["nics_per_leaf"], "gpu_cluster: nics_per_leaf", 1)
    nspines = _int(keywords["spines"], "gpu_cluster: spines", 1)
    keywords.update(gpus_per_node=gpus, nics_per_leaf=per_leaf, spines=nspines)
    if fabric == "fat_tree":
        leaves = -(-(servers * gpus) // per_leaf)
    else:
        leaves = gpus * -(-servers // per_leaf)
    return {"preset": preset, "keywords": keywords, "servers": servers, "gpus_per_node": gpus, "fabric": fabric,
            "nics_per_leaf": per_leaf, "spines": nspines if leaves > 1 else 0, "leaves": leaves}


# -- sizes before building ----------------------------------------------------
#
# Each builder's node and link counts, from its arguments alone, so that a
# topology too large for memory is refused before any of it is built.  They
# validate the count arguments exactly as the builder does.


def _torus_dims(dims) -> tuple[int, ...]:
    if isinstance(dims, (str, bytes)) or not hasattr(dims, "__iter__"):
        raise TopologyError(f"torus: dims must be a tuple of 2 or 3 ints, got {short(dims)}")
    dims = tuple(dims)
    if len(dims) not in (2, 3):
        raise TopologyError(f"torus: dims must have 2 or 3 entries, got {short(dims)}")
    return tuple(_int(d, f"torus: dims[{i}]", 2) for i, d in enumerate(dims))


def _fat_tree_k_n(k, n) -> tuple[int, int]:
    k = _int(k, "fat_tree: k", 2)
    if k % 2:
        raise TopologyError(f"fat_tree: k must be even, got {short(k)}")
    hosts = k ** 3 // 4
    n = hosts if n is None else _int(n, "fat_tree: n", 2)
    if n > hosts:
        raise TopologyError(f"fat_tree: n must be <= k^3/4 = {short(hosts)} for k={short(k)}, got {short(n)}")
    return k, n


def _hierarchical_levels(levels) -> tuple[int, ...]:
    if isinstance(levels, (str, bytes)) or not hasattr(levels, "__iter__"):
        raise TopologyError(f"hierarchical: levels must be a tuple of ints, got {short(levels)}")
    levels = tuple(levels)
    if not levels:
        raise TopologyError("hierarchical: levels must not be empty")
    return tuple(_int(c, f"hierarchical: levels[{i}]", 1) for i, c in enumerate(levels))


def _ring_size(n, **_) -> tuple[int, int]:
    n = _int(n, "ring: n", 2)
    return n, (n if n > 2 else 1)


def _switch_size(n, **_) -> tuple[int, int]:
    n = _int(n, "switch: n", 2)
    return n + 1, n


def _fully_connected_size(n, **_) -> tuple[int, int]:
    n = _int(n, "fully_connected: n", 2)
    return n, n * (n - 1) // 2


def _tree_size(n, *, arity=2, **_) -> tuple[int, int]:
    n = _int(n, "tree: n", 2)
    arity = _int(arity, "tree: arity", 2)
    nodes, level_nodes = n, n
    while True:  # at most log2(2^63) levels
        level_nodes = -(-level_nodes // arity)
        nodes += level_nodes
        if level_nodes == 1:
            return nodes, nodes - 1


def _torus_size(dims, **_) -> tuple[int, int]:
    dims = _torus_dims(dims)
    n = math.prod(dims)
    return n, n * len(dims)  # an upper bound: a dimension of 2 has one link per pair


def _fat_tree_size(k, *, n=None, **_) -> tuple[int, int]:
    k, n = _fat_tree_k_n(k, n)
    return n + k * k + (k // 2) ** 2, n + k ** 3 // 2


def _hierarchical_size(levels, **_) -> tuple[int, int]:
    levels = _hierarchical_levels(levels)
    nodes = children = math.prod(levels)
    links = 0
    for fan_in in reversed(levels):
        links += children
        children //= fan_in
        nodes += children
    return nodes, links


def _edge_cloud_size(*, n_devices, n_edge, n_cloud=1, **_) -> tuple[int, int]:
    n_devices = _int(n_devices, "edge_cloud: n_devices", 0)
    n_edge = _int(n_edge, "edge_cloud: n_edge", 1)
    n_cloud = _int(n_cloud, "edge_cloud: n_cloud", 0)
    return n_devices + n_edge + n_cloud + 1 + (1 if n_cloud else 0), n_devices + n_edge + (1 + n_cloud if n_cloud else 0)


def _gpu_cluster_size(nodes, **kwargs) -> tuple[int, int]:
    shape = _gpu_cluster_shape(nodes, kwargs)
    n = shape["servers"] * shape["gpus_per_node"]
    leaves, spines = shape["leaves"], shape["spines"]
    return 2 * n + shape["servers"] + leaves + spines, 3 * n + leaves * spines


BUILDERS: dict[str, Callable[..., Topology]] = {
    "ring": ring,
    "switch": switch,
    "fully_connected": fully_connected,
    "tree": tree,
    "torus": torus,
    "fat_tree": fat_tree,
    "hierarchical": hierarchical,
    "edge_cloud": edge_cloud,
    "gpu_cluster": gpu_cluster,
}

# name -> (nodes, links) the builder would make, from the same arguments.
BUILDER_SIZES: dict[str, Callable[..., tuple[int, int]]] = {
    "ring": _ring_size,
    "switch": _switch_size,
    "fully_connected": _fully_connected_size,
    "tree": _tree_size,
    "torus": _torus_size,
    "fat_tree": _fat_tree_size,
    "hierarchical": _hierarchical_size,
    "edge_cloud": _edge_cloud_size,
    "gpu_cluster": _gpu_cluster_size,
}
