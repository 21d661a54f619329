"""Topology builders: small pure functions returning a validated ``Topology``.

A builder takes its shape (``n``, ``arity``, ``levels``, ...) and a few
specs (``topologies.specs``): ``link=LinkSpec(...)`` for its links,
``node=NodeSpec(...)`` for its ranks, ``switch=NodeSpec(...)`` for its
switches, and one of each kind where a builder has several (a tree's
``uplink``, a hierarchy's ``links`` per level, edge_cloud's tiers and their
links, gpu_cluster's ``scale_up`` and ``scale_out``).  Units live in the
field names: bandwidth in bytes/s, latency in s, energy per byte in J,
compute speed in flop/s, power in W.  A spec's ``None`` fields are the
builder's defaults, so a spec says only what differs::

    ring(8, link=LinkSpec(25e9, latency_s=1e-6))
    tree(16, arity=4, uplink=LinkSpec(50e9), node=NodeSpec(node_type="h100_sxm"))
    edge_cloud(n_devices=8, n_edge=2, wan=LinkSpec(latency_s=30e-3), device=NodeSpec(flops_per_s=2e12))

A spec checks its values when it is made (``LinkSpec(-1)`` raises a
``ValueError`` naming ``bandwidth_bytes_per_s``); ``node_type`` (a preset
name such as ``h100_sxm``, a file, or a ``topologies.hardware.NodeType``)
gives ranks that hardware: peaks per precision, memory, GEMM efficiency,
powers.  Scenario files keep writing flat keys (``latency_s``,
``uplink_bandwidth_bytes_per_s``, ``wan_latency_s``) or a mapping per spec
(``wan: {latency_s: 30e-3}``); ``BUILDER_SPEC_KEYS`` says how, and
``topologies.io`` makes the specs.  ``Topology.params`` records the values a
builder ran with under those flat keys.

Compute nodes are named ``n0``, ``n1``, ... and inserted first, so node
insertion order is rank order.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Callable

import networkx as nx

from .gpu_cluster import GPU_CLUSTER_SPECS, gpu_cluster, gpu_cluster_size
from .model import LINK_FIELDS, Topology, TopologyError
from .specs import (
    DEFAULT_LINK, DEFAULT_NODE, DEFAULT_SWITCH, LINK_KEYS, NODE_KEYS, SWITCH_KEYS, LevelLinkKeys, LinkSpec, NodeSpec,
    SpecKeys, check_int, link_of, node_of, switch_of,
)
from .text import short


def _parts(name: str, link, node) -> tuple[dict, dict, dict]:
    """A builder's link and rank attributes, and the params that record them."""
    link_attrs = link_of(link, DEFAULT_LINK, f"{name}: link").attrs()
    rank = node_of(node, DEFAULT_NODE, f"{name}: node").compute_attrs()
    return link_attrs, rank, {**LINK_KEYS.flat(link_attrs), **NODE_KEYS.flat(rank)}


def _switch(name: str, switch, params: dict) -> dict:
    """A builder's switch attributes; ``params`` records them."""
    attrs = switch_of(switch, DEFAULT_SWITCH, f"{name}: switch").switch_attrs()
    params.update(SWITCH_KEYS.flat(attrs))
    return attrs


def _add_ranks(g: nx.Graph, n: int, node_attrs: dict) -> list[str]:
    names = [f"n{i}" for i in range(n)]
    for name in names:
        g.add_node(name, **node_attrs)
    return names


# -- builders -----------------------------------------------------------------

def ring(n: int, *, link: LinkSpec = DEFAULT_LINK, node: NodeSpec = DEFAULT_NODE) -> Topology:
    """``n`` ranks in a cycle, rank i linked to rank (i+1) % n (n=2: one link)."""
    n = check_int(n, "ring: n", 2)
    link_attrs, rank, params = _parts("ring", link, node)
    g = nx.Graph()
    names = _add_ranks(g, n, rank)
    for i in range(n if n > 2 else 1):
        g.add_edge(names[i], names[(i + 1) % n], **link_attrs)
    return Topology(g, name="ring", params={"n": n, **params})


def switch(
    n: int, *, link: LinkSpec = DEFAULT_LINK, node: NodeSpec = DEFAULT_NODE, switch: NodeSpec = DEFAULT_SWITCH,
) -> Topology:
    """Star: ``n`` ranks each linked to one switch ``s0``."""
    n = check_int(n, "switch: n", 2)
    link_attrs, rank, params = _parts("switch", link, node)
    sw = _switch("switch", switch, params)
    g = nx.Graph()
    names = _add_ranks(g, n, rank)
    g.add_node("s0", **sw)
    for name in names:
        g.add_edge(name, "s0", **link_attrs)
    return Topology(g, name="switch", params={"n": n, **params})


def fully_connected(n: int, *, link: LinkSpec = DEFAULT_LINK, node: NodeSpec = DEFAULT_NODE) -> Topology:
    """A direct link between every pair of the ``n`` ranks (n(n-1)/2 links)."""
    n = check_int(n, "fully_connected: n", 2)
    link_attrs, rank, params = _parts("fully_connected", link, node)
    g = nx.Graph()
    names = _add_ranks(g, n, rank)
    for i in range(n):
        for j in range(i + 1, n):
            g.add_edge(names[i], names[j], **link_attrs)
    return Topology(g, name="fully_connected", params={"n": n, **params})


UPLINK_KEYS = SpecKeys("uplink", LinkSpec)


def tree(
    n: int,
    *,
    arity: int = 2,
    link: LinkSpec = DEFAULT_LINK,
    uplink: LinkSpec | None = None,
    node: NodeSpec = DEFAULT_NODE,
    switch: NodeSpec = DEFAULT_SWITCH,
) -> Topology:
    """``arity``-ary tree: ranks are leaves, switches the inner nodes.

    Leaves fill the level-1 switches left to right (``arity`` each), those
    fill level-2 switches the same way, up to a single root switch
    ``s{levels}_0``.  Leaves link to their switch by ``link``, switches to
    theirs by ``uplink``, whose fields left ``None`` (all, by default) are
    ``link``'s.
    """
    n = check_int(n, "tree: n", 2)
    arity = check_int(arity, "tree: arity", 2)
    leaf_link, rank, params = _parts("tree", link, node)
    up = link_of(uplink, LinkSpec(**leaf_link), "tree: uplink").attrs()
    params.update(UPLINK_KEYS.flat(up))
    sw = _switch("tree", switch, params)
    g = nx.Graph()
    children = _add_ranks(g, n, rank)
    level = 0
    while level == 0 or len(children) > 1:
        level += 1
        parents = [f"s{level}_{i}" for i in range(-(-len(children) // arity))]
        for parent in parents:
            g.add_node(parent, **sw)
        for i, child in enumerate(children):
            g.add_edge(child, parents[i // arity], **(leaf_link if level == 1 else up))
        children = parents
    return Topology(g, name="tree", params={"n": n, "arity": arity, **params})


def torus(dims, *, link: LinkSpec = DEFAULT_LINK, node: NodeSpec = DEFAULT_NODE) -> Topology:
    """2-D or 3-D torus of ranks with wraparound; each dim >= 2.

    Rank order is row-major (last dimension fastest): in ``dims=(4, 4)``
    rank 5 sits at (1, 1).  A dimension of size 2 gives one link between the
    two neighbours, not two parallel ones.
    """
    dims = _torus_dims(dims)
    link_attrs, rank, params = _parts("torus", link, node)
    g = nx.Graph()
    n = math.prod(dims)
    names = _add_ranks(g, n, rank)
    strides = [math.prod(dims[i + 1:]) for i in range(len(dims))]
    for r in range(n):
        for size, stride in zip(dims, strides):
            coord = (r // stride) % size
            neighbour = r + (((coord + 1) % size) - coord) * stride
            if not g.has_edge(names[r], names[neighbour]):
                g.add_edge(names[r], names[neighbour], **link_attrs)
    return Topology(g, name="torus", params={"dims": dims, **params})


def fat_tree(
    k: int,
    *,
    n: int | None = None,
    link: LinkSpec = DEFAULT_LINK,
    node: NodeSpec = DEFAULT_NODE,
    switch: NodeSpec = DEFAULT_SWITCH,
) -> Topology:
    """k-ary fat tree (Al-Fares et al. 2008), ``k`` even.

    k pods of k/2 edge and k/2 aggregation switches, (k/2)^2 core switches,
    k^3/4 hosts (k/2 per edge switch).  Aggregation switch j of every pod
    links to core switches j*k/2 .. j*k/2 + k/2 - 1.  With ``n``, only the
    first ``n`` hosts are kept (all switches stay).
    """
    params = {"k": k, "n": n}
    k, n = _fat_tree_k_n(k, n)
    half = k // 2
    link_attrs, rank, more = _parts("fat_tree", link, node)
    params.update(more)
    sw = _switch("fat_tree", switch, params)
    g = nx.Graph()
    names = _add_ranks(g, n, rank)
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
        g.add_edge(name, f"edge{p}_{rest // half}", **link_attrs)
    for p in range(k):
        for e in range(half):
            for a in range(half):
                g.add_edge(f"edge{p}_{e}", f"agg{p}_{a}", **link_attrs)
        for a in range(half):
            for i in range(half):
                g.add_edge(f"agg{p}_{a}", core[a * half + i], **link_attrs)
    return Topology(g, name="fat_tree", params=params)


# Innermost level first: NVLink/NVSwitch, NIC, spine.
HIERARCHICAL_LINKS = (
    LinkSpec(300e9, latency_s=1e-6, energy_per_byte_j=DEFAULT_LINK.energy_per_byte_j),
    LinkSpec(25e9, latency_s=5e-6, energy_per_byte_j=DEFAULT_LINK.energy_per_byte_j),
    LinkSpec(12.5e9, latency_s=10e-6, energy_per_byte_j=DEFAULT_LINK.energy_per_byte_j),
)
# What a file writes for hierarchical's links: one list per field.
LEVEL_LISTS = ("bandwidths_bytes_per_s", "latencies_s", "energies_per_byte_j")


def _level_defaults(depth: int) -> tuple[LinkSpec, ...]:
    """Each level's default link; past ``HIERARCHICAL_LINKS`` only the energy per byte has one."""
    beyond = (LinkSpec(energy_per_byte_j=DEFAULT_LINK.energy_per_byte_j),) * max(0, depth - len(HIERARCHICAL_LINKS))
    return HIERARCHICAL_LINKS[:depth] + beyond


def hierarchical(
    levels,
    *,
    links: Sequence[LinkSpec] | None = None,
    node: NodeSpec = DEFAULT_NODE,
    switch: NodeSpec = DEFAULT_SWITCH,
) -> Topology:
    """Nested groups joined by one switch per group at every level.

    ``levels`` counts outermost first: ``(4, 8)`` is 4 servers of 8 GPUs,
    ``(2, 4, 8)`` is 2 racks of 4 servers of 8 GPUs.  ``links`` counts
    innermost first, one ``LinkSpec`` (or ``None``) per level: ``links[0]``
    is the innermost network (GPU to its server's switch, like NVSwitch),
    ``[1]`` the next (server to top-of-rack), and so on.  Defaults
    (``HIERARCHICAL_LINKS``, up to 3 levels): 300e9, 25e9, 12.5e9 bytes/s,
    1e-6, 5e-6, 10e-6 s, 1e-11 J/byte; a file writes them as the lists
    ``bandwidths_bytes_per_s``, ``latencies_s``, ``energies_per_byte_j``.

    Each rank's ``group`` attribute is the index of its innermost group
    (``rank // levels[-1]``).  Switches are named ``sw{level}_{i}``.
    """
    levels = _hierarchical_levels(levels)
    link_at = _hierarchical_links(len(levels), links)
    n = math.prod(levels)
    if n < 2:
        raise TopologyError(f"hierarchical: levels {short(levels)} give {n} rank; need >= 2")
    compute = node_of(node, DEFAULT_NODE, "hierarchical: node").compute_attrs()
    params = {"levels": levels,
              **{key: tuple(link[name] for link in link_at) for key, name in zip(LEVEL_LISTS, LINK_FIELDS)},
              **NODE_KEYS.flat(compute)}
    sw = _switch("hierarchical", switch, params)
    g = nx.Graph()
    group_size = levels[-1]
    children = [f"n{r}" for r in range(n)]
    for r, name in enumerate(children):
        g.add_node(name, **compute, group=r // group_size)
    # Level i joins consecutive runs of levels[-1 - i] children under one switch.
    for i, link in enumerate(link_at):
        fan_in = levels[-1 - i]
        parents = [f"sw{i}_{j}" for j in range(len(children) // fan_in)]
        for parent in parents:
            g.add_node(parent, **sw)
        for c, child in enumerate(children):
            g.add_edge(child, parents[c // fan_in], **link)
        children = parents
    return Topology(g, name="hierarchical", params=params)


def _hierarchical_links(depth: int, links) -> list[dict]:
    """Each level's link attributes: ``links[i]``, then level i's default."""
    if links is None:
        links = [None] * depth
    elif isinstance(links, (str, bytes, Mapping, LinkSpec)) or not hasattr(links, "__iter__"):
        raise TopologyError(f"hierarchical: links must be a list of {depth} LinkSpecs, got {short(links)}")
    links = list(links)
    if len(links) != depth:
        raise TopologyError(f"hierarchical: links must have len(levels) = {depth} entries, got {len(links)}")
    out = []
    for i, (spec, default) in enumerate(zip(links, _level_defaults(depth))):
        link = link_of(spec, default, f"hierarchical: links[{i}]")
        missing = [name for name in LINK_FIELDS if getattr(link, name) is None]
        if missing:
            raise TopologyError(f"hierarchical: links[{i}].{missing[0]} has no default for {depth} levels "
                                f"(defaults cover {len(HIERARCHICAL_LINKS)}); give it")
        out.append(link.attrs())
    return out


DEVICE_NODE = NodeSpec(flops_per_s=1e12, idle_power_w=1.0, busy_power_w=5.0)
EDGE_NODE = NodeSpec(flops_per_s=20e12, idle_power_w=50.0, busy_power_w=150.0)
CLOUD_NODE = NodeSpec(flops_per_s=200e12, idle_power_w=200.0, busy_power_w=500.0)
WIRELESS_LINK = LinkSpec(12.5e6, latency_s=5e-3, energy_per_byte_j=1e-7)
LAN_LINK = LinkSpec(1.25e9, latency_s=0.2e-3, energy_per_byte_j=1e-9)
WAN_LINK = LinkSpec(125e6, latency_s=20e-3, energy_per_byte_j=5e-9)
EDGE_CLOUD_SPECS = (
    SpecKeys("device", NodeSpec), SpecKeys("edge", NodeSpec), SpecKeys("cloud", NodeSpec),
    SpecKeys("wireless", LinkSpec), SpecKeys("lan", LinkSpec), SpecKeys("wan", LinkSpec), SWITCH_KEYS,
)


def edge_cloud(
    *,
    n_devices: int,
    n_edge: int,
    n_cloud: int = 1,
    device: NodeSpec = DEVICE_NODE,
    edge: NodeSpec = EDGE_NODE,
    cloud: NodeSpec = CLOUD_NODE,
    wireless: LinkSpec = WIRELESS_LINK,
    lan: LinkSpec = LAN_LINK,
    wan: LinkSpec = WAN_LINK,
    switch: NodeSpec = DEFAULT_SWITCH,
) -> Topology:
    """Devices, edge servers and a cloud data centre (the computing continuum).

    Device i reaches edge server ``i % n_edge`` by a ``wireless`` link;
    every edge server reaches the gateway router ``gw`` by a ``wan`` link;
    the gateway reaches the data-centre switch ``dc_switch`` by a ``lan``
    link, and so does every cloud node.  All three tiers compute (``tier``
    is 'device', 'edge' or 'cloud', made as ``device``, ``edge`` and
    ``cloud`` say); ranks are devices, then edge servers, then cloud nodes.
    ``group`` is the edge server's index for it and its devices, and
    ``n_edge`` for the cloud nodes.  ``n_cloud=0`` drops the data centre.
    Router and switch are ``switch``.
    """
    n_devices = check_int(n_devices, "edge_cloud: n_devices", 0)
    n_edge = check_int(n_edge, "edge_cloud: n_edge", 1)
    n_cloud = check_int(n_cloud, "edge_cloud: n_cloud", 0)
    if n_devices + n_edge + n_cloud < 2:
        raise TopologyError("edge_cloud: needs at least 2 compute nodes in total")
    parts = {name: {**node_of(spec, default, f"edge_cloud: {name}").compute_attrs(), "tier": name}
             for name, spec, default in (("device", device, DEVICE_NODE), ("edge", edge, EDGE_NODE),
                                         ("cloud", cloud, CLOUD_NODE))}
    parts.update({name: link_of(spec, default, f"edge_cloud: {name}").attrs()
                  for name, spec, default in (("wireless", wireless, WIRELESS_LINK), ("lan", lan, LAN_LINK),
                                              ("wan", wan, WAN_LINK))})
    params = {"n_devices": n_devices, "n_edge": n_edge, "n_cloud": n_cloud}
    for keys in EDGE_CLOUD_SPECS[:-1]:
        params.update(keys.flat(parts[keys.argument]))
    sw = _switch("edge_cloud", switch, params)
    g = nx.Graph()
    for i in range(n_devices):
        g.add_node(f"dev{i}", **parts["device"], group=i % n_edge)
    for j in range(n_edge):
        g.add_node(f"edge{j}", **parts["edge"], group=j)
    for c in range(n_cloud):
        g.add_node(f"cloud{c}", **parts["cloud"], group=n_edge)
    g.add_node("gw", **{**sw, "role": "router"})
    if n_cloud:
        g.add_node("dc_switch", **sw)
    for i in range(n_devices):
        g.add_edge(f"dev{i}", f"edge{i % n_edge}", **parts["wireless"])
    for j in range(n_edge):
        g.add_edge(f"edge{j}", "gw", **parts["wan"])
    if n_cloud:
        g.add_edge("gw", "dc_switch", **parts["lan"])
        for c in range(n_cloud):
            g.add_edge(f"cloud{c}", "dc_switch", **parts["lan"])
    return Topology(g, name="edge_cloud", params=params)


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
    return tuple(check_int(d, f"torus: dims[{i}]", 2) for i, d in enumerate(dims))


def _fat_tree_k_n(k, n) -> tuple[int, int]:
    k = check_int(k, "fat_tree: k", 2)
    if k % 2:
        raise TopologyError(f"fat_tree: k must be even, got {short(k)}")
    hosts = k ** 3 // 4
    n = hosts if n is None else check_int(n, "fat_tree: n", 2)
    if n > hosts:
        raise TopologyError(f"fat_tree: n must be <= k^3/4 = {short(hosts)} for k={short(k)}, got {short(n)}")
    return k, n


def _hierarchical_levels(levels) -> tuple[int, ...]:
    if isinstance(levels, (str, bytes)) or not hasattr(levels, "__iter__"):
        raise TopologyError(f"hierarchical: levels must be a tuple of ints, got {short(levels)}")
    levels = tuple(levels)
    if not levels:
        raise TopologyError("hierarchical: levels must not be empty")
    return tuple(check_int(c, f"hierarchical: levels[{i}]", 1) for i, c in enumerate(levels))


def _ring_size(n, **_) -> tuple[int, int]:
    n = check_int(n, "ring: n", 2)
    return n, (n if n > 2 else 1)


def _switch_size(n, **_) -> tuple[int, int]:
    n = check_int(n, "switch: n", 2)
    return n + 1, n


def _fully_connected_size(n, **_) -> tuple[int, int]:
    n = check_int(n, "fully_connected: n", 2)
    return n, n * (n - 1) // 2


def _tree_size(n, *, arity=2, **_) -> tuple[int, int]:
    n = check_int(n, "tree: n", 2)
    arity = check_int(arity, "tree: arity", 2)
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
    n_devices = check_int(n_devices, "edge_cloud: n_devices", 0)
    n_edge = check_int(n_edge, "edge_cloud: n_edge", 1)
    n_cloud = check_int(n_cloud, "edge_cloud: n_cloud", 0)
    return n_devices + n_edge + n_cloud + 1 + (1 if n_cloud else 0), n_devices + n_edge + (1 + n_cloud if n_cloud else 0)


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
    "gpu_cluster": gpu_cluster_size,
}


# How scenario files write each builder's spec arguments (``topologies.io``).
_RANK_SPECS = (LINK_KEYS, NODE_KEYS)
BUILDER_SPEC_KEYS: dict[str, tuple] = {
    "ring": _RANK_SPECS,
    "switch": _RANK_SPECS + (SWITCH_KEYS,),
    "fully_connected": _RANK_SPECS,
    "tree": (LINK_KEYS, UPLINK_KEYS, NODE_KEYS, SWITCH_KEYS),
    "torus": _RANK_SPECS,
    "fat_tree": _RANK_SPECS + (SWITCH_KEYS,),
    "hierarchical": (LevelLinkKeys("links", LEVEL_LISTS, _level_defaults), NODE_KEYS, SWITCH_KEYS),
    "edge_cloud": EDGE_CLOUD_SPECS,
    "gpu_cluster": GPU_CLUSTER_SPECS,
}
