"""The ``gpu_cluster`` builder: GPU servers, NVSwitch inside, a NIC fabric between them.

Its arguments come from three places, the first that says something
winning: the call, a cluster preset (``topologies.hardware``: flat keys,
as a scenario file writes them), ``GPU_CLUSTER_DEFAULTS``.  Specs merge
field by field, so ``scale_out=LinkSpec(10e9)`` keeps the preset's
scale-out latency.
"""
from __future__ import annotations

import networkx as nx

from .hardware import load_cluster_preset
from .model import Topology, TopologyError
from .specs import (
    DEFAULT_LINK, DEFAULT_SWITCH, NODE_KEYS, SWITCH_KEYS, LinkSpec, NodeSpec, SpecKeys, check_int, check_real,
    link_of, node_of, specs_from_file, switch_of,
)
from .text import short

FABRICS = ("fat_tree", "rail_optimized")
# gpu_cluster without a preset: H100 SXM servers (the dgx_h100 preset's
# figures) in a plain fat tree of 64-port leaf switches (32 NICs down).
GPU_CLUSTER_DEFAULTS = {
    "gpus_per_node": 8,
    "node_type": "h100_sxm",
    "scale_up_bandwidth_bytes_per_s": 450e9,
    "scale_up_latency_s": 1.5e-6,
    "scale_up_energy_per_byte_j": DEFAULT_LINK.energy_per_byte_j,
    "scale_out_bandwidth_bytes_per_s": 50e9,
    "scale_out_latency_s": 3e-6,
    "scale_out_energy_per_byte_j": DEFAULT_LINK.energy_per_byte_j,
    "fabric": "fat_tree",
    "oversubscription": 1.0,
    "nics_per_leaf": 32,
    "spines": 1,
    "pod_servers": 0,
    "pod_oversubscription": 1.0,
    "fabric_latency_s": 0.5e-6,
    "switch_idle_power_w": DEFAULT_SWITCH.idle_power_w,
    "switch_busy_power_w": DEFAULT_SWITCH.busy_power_w,
}
SCALE_UP_KEYS = SpecKeys("scale_up", LinkSpec)
SCALE_OUT_KEYS = SpecKeys("scale_out", LinkSpec)
# How presets and scenario files write gpu_cluster's specs.
GPU_CLUSTER_SPECS = (NODE_KEYS, SCALE_UP_KEYS, SCALE_OUT_KEYS, SWITCH_KEYS)
# The other keywords a preset may set, which the call overrides whole.
FABRIC_KEYS = ("gpus_per_node", "fabric", "oversubscription", "nics_per_leaf", "spines", "pod_servers",
               "pod_oversubscription", "fabric_latency_s")
_NIC = {"role": "switch", "flops_per_s": 0.0, "idle_power_w": 0.0, "busy_power_w": 0.0}


def gpu_cluster(
    nodes: int,
    *,
    preset=None,
    gpus_per_node: int | None = None,
    node: NodeSpec | None = None,
    scale_up: LinkSpec | None = None,
    scale_out: LinkSpec | None = None,
    fabric: str | None = None,
    oversubscription: float | None = None,
    nics_per_leaf: int | None = None,
    spines: int | None = None,
    pod_servers: int | None = None,
    pod_oversubscription: float | None = None,
    fabric_latency_s: float | None = None,
    switch: NodeSpec | None = None,
) -> Topology:
    """``nodes`` GPU servers of ``gpus_per_node`` GPUs: NVSwitch inside, one NIC per GPU outside.

    What the call leaves ``None`` comes from ``preset`` (a cluster preset's
    name, e.g. ``dgx_h100``, or file; see ``topologies.hardware``), else from
    ``GPU_CLUSTER_DEFAULTS`` (H100 SXM servers, a plain fat tree).

    Inside server s every GPU links to the switch ``nvswitch{s}`` at
    ``scale_up``'s bandwidth.  GPU r links to its NIC ``nic{r}`` and the
    NIC to a leaf switch, both at ``scale_out``'s bandwidth.
    ``fabric="fat_tree"``: NICs fill leaves ``leaf{i}`` in order,
    ``nics_per_leaf`` each (a server's NICs share a leaf where they fit);
    ``"rail_optimized"``: NIC g of every server goes to a leaf of rail g (one
    per ``nics_per_leaf`` servers), as in DGX SuperPODs.  With more than one
    leaf, ``spines`` spine switches join them: each leaf's uplinks together
    carry its NICs' bandwidth / ``oversubscription``, split evenly over the
    spines (one spine, the default, is the whole spine layer as one
    aggregate switch: flows share it max-min fairly, as ideal adaptive
    routing would; more spines add ECMP's uneven hashing).  ``pod_servers``
    (0: none) adds a third level: the leaves of each ``pod_servers`` servers
    join their pod's spine ``pod{j}`` (one aggregate switch), and the pods
    join one core switch ``core``, each pod's uplink carrying its NICs'
    bandwidth / (``oversubscription`` x ``pod_oversubscription``).

    ``scale_up`` and ``scale_out`` are GPU-to-GPU figures: latency and
    energy per byte through the NVSwitch, and through two NICs and one leaf
    (each split in half over the two links that carry it), plus
    ``fabric_latency_s`` per leaf-spine link.  A GPU-NIC link adds no
    latency or energy (the NIC figures include it).  Traffic between GPUs of
    one server goes through the NVSwitch, so ``scale_up``'s latency may not
    exceed ``scale_out``'s.  ``group`` is the server's index.  GPUs are
    ranks ``n0``.. in server order, made as ``node`` says (its node type
    from the preset unless it gives one or a ``flops_per_s``); NICs are
    switches that draw nothing; NVSwitches, leaves and spines are ``switch``.
    """
    shape = _gpu_cluster_shape(nodes, locals())
    parts = _gpu_cluster_parts(shape, node=node, scale_up=scale_up, scale_out=scale_out, switch=switch)
    return Topology(_gpu_cluster_graph(shape, parts), name="gpu_cluster", params=parts["params"])


def _gpu_cluster_shape(nodes, given: dict) -> dict:
    """The keywords gpu_cluster runs with (given > preset > defaults, flat) and its counts, checked."""
    preset = given.get("preset")
    keywords = dict(GPU_CLUSTER_DEFAULTS)
    if preset is not None:
        try:
            loaded = load_cluster_preset(preset)
        except TopologyError as exc:
            raise TopologyError(f"gpu_cluster: {exc}") from None
        keywords.update(loaded.keywords)
        preset = loaded.name
    keywords.update({key: given[key] for key in FABRIC_KEYS if given.get(key) is not None})
    servers = check_int(nodes, "gpu_cluster: nodes", 1)
    gpus = check_int(keywords["gpus_per_node"], "gpu_cluster: gpus_per_node", 1)
    fabric = keywords["fabric"]
    if fabric not in FABRICS:
        raise TopologyError(f"gpu_cluster: unknown fabric {short(fabric)}; known: {', '.join(FABRICS)}")
    per_leaf = check_int(keywords["nics_per_leaf"], "gpu_cluster: nics_per_leaf", 1)
    nspines = check_int(keywords["spines"], "gpu_cluster: spines", 1)
    pod = check_int(keywords["pod_servers"], "gpu_cluster: pod_servers", 0)
    keywords.update(gpus_per_node=gpus, nics_per_leaf=per_leaf, spines=nspines, pod_servers=pod)
    if fabric == "fat_tree":
        leaves = -(-(servers * gpus) // per_leaf)
    else:
        leaves = gpus * -(-servers // per_leaf)
    pods = 0
    if pod and pod < servers:
        # A pod holds whole leaves: in a fat tree, NICs fill leaves in server order; on rails, a leaf
        # takes one NIC of each of nics_per_leaf servers.
        whole = pod % per_leaf == 0 if fabric == "rail_optimized" else (pod * gpus) % per_leaf == 0
        if not whole:
            unit = "nics_per_leaf servers" if fabric == "rail_optimized" else "whole leaves of nics_per_leaf NICs"
            raise TopologyError(f"gpu_cluster: pod_servers {pod} must hold {unit} ({per_leaf})")
        if nspines > 1:
            raise TopologyError("gpu_cluster: pod_servers needs spines: 1 (each pod's spine is one aggregate "
                                f"switch), got spines {nspines}")
        pods = -(-servers // pod)
    return {"preset": preset, "keywords": keywords, "servers": servers, "gpus_per_node": gpus, "fabric": fabric,
            "nics_per_leaf": per_leaf, "spines": nspines if leaves > 1 and not pods else 0, "leaves": leaves,
            "pod_servers": pod, "pods": pods}


def _gpu_cluster_parts(shape: dict, *, node, scale_up, scale_out, switch) -> dict:
    """The GPUs', switches' and links' attributes, checked, and the params that record them."""
    what = "gpu_cluster: "
    keywords = shape["keywords"]
    base = specs_from_file(GPU_CLUSTER_SPECS, keywords, what)
    up = link_of(scale_up, base["scale_up"], f"{what}scale_up")
    out = link_of(scale_out, base["scale_out"], f"{what}scale_out")
    fabric_latency_s = check_real(keywords["fabric_latency_s"], f"{what}fabric_latency_s")
    oversubscription = check_real(keywords["oversubscription"], f"{what}oversubscription")
    pod_oversubscription = check_real(keywords["pod_oversubscription"], f"{what}pod_oversubscription")
    for name, value in (("oversubscription", oversubscription), ("pod_oversubscription", pod_oversubscription)):
        if value < 1:
            raise TopologyError(f"{what}{name} must be >= 1 (1: non-blocking), got {short(value)}")
    if up.latency_s > out.latency_s:
        raise TopologyError(
            f"{what}scale_up_latency_s ({short(up.latency_s)}) must not exceed scale_out_latency_s "
            f"({short(out.latency_s)}): routes take the lowest latency, and traffic inside a server must go "
            "through its NVSwitch"
        )
    gpu = node_of(node, base["node"], f"{what}node").compute_attrs()
    sw = switch_of(switch, base["switch"], f"{what}switch").switch_attrs()
    params = {"nodes": shape["servers"], **({"preset": shape["preset"]} if shape["preset"] is not None else {}),
              **NODE_KEYS.flat(gpu), **SCALE_UP_KEYS.flat(up.attrs()), **SCALE_OUT_KEYS.flat(out.attrs()),
              **{key: keywords[key] for key in FABRIC_KEYS}, "oversubscription": oversubscription,
              "pod_oversubscription": pod_oversubscription,
              "fabric_latency_s": fabric_latency_s, **SWITCH_KEYS.flat(sw)}
    return {"gpu": gpu, "switch": sw, "scale_up": up, "scale_out": out, "oversubscription": oversubscription,
            "pod_oversubscription": pod_oversubscription,
            "fabric_latency_s": fabric_latency_s, "params": params}


def _gpu_cluster_graph(shape: dict, parts: dict) -> nx.Graph:
    servers, gpus, per_leaf, nspines, nleaves = (
        shape["servers"], shape["gpus_per_node"], shape["nics_per_leaf"], shape["spines"], shape["leaves"])
    up, out, sw = parts["scale_up"], parts["scale_out"], parts["switch"]
    nvlink = {"bandwidth_bytes_per_s": up.bandwidth_bytes_per_s, "latency_s": up.latency_s / 2,
              "energy_per_byte_j": up.energy_per_byte_j / 2}
    pcie = {"bandwidth_bytes_per_s": out.bandwidth_bytes_per_s, "latency_s": 0.0, "energy_per_byte_j": 0.0}
    nic_link = {"bandwidth_bytes_per_s": out.bandwidth_bytes_per_s, "latency_s": out.latency_s / 2,
                "energy_per_byte_j": out.energy_per_byte_j / 2}
    g = nx.Graph()
    for r in range(servers * gpus):
        g.add_node(f"n{r}", **parts["gpu"], group=r // gpus)
    for s in range(servers):
        g.add_node(f"nvswitch{s}", **sw)
    for r in range(servers * gpus):
        g.add_node(f"nic{r}", **_NIC)
    for i in range(nleaves):
        g.add_node(f"leaf{i}", **sw)
    for j in range(nspines):
        g.add_node(f"spine{j}", **sw)
    blocks = -(-servers // per_leaf)  # leaves per rail
    nics_on = [0] * nleaves
    for r in range(servers * gpus):
        s, local = divmod(r, gpus)
        leaf = r // per_leaf if shape["fabric"] == "fat_tree" else local * blocks + s // per_leaf
        nics_on[leaf] += 1
        g.add_edge(f"n{r}", f"nvswitch{s}", **nvlink)
        g.add_edge(f"n{r}", f"nic{r}", **pcie)
        g.add_edge(f"nic{r}", f"leaf{leaf}", **nic_link)
    pods = shape["pods"]
    if pods:
        for j in range(pods):
            g.add_node(f"pod{j}", **sw)
        g.add_node("core", **sw)
        # The leaf of NIC r's pod: rails hold nics_per_leaf servers per leaf, in server order.
        pod_of_leaf = [0] * nleaves
        for r in range(servers * gpus):
            s, local = divmod(r, gpus)
            leaf = r // per_leaf if shape["fabric"] == "fat_tree" else local * blocks + s // per_leaf
            pod_of_leaf[leaf] = s // shape["pod_servers"]
        nics_in_pod = [0] * pods
        for i in range(nleaves):
            nics_in_pod[pod_of_leaf[i]] += nics_on[i]
            g.add_edge(f"leaf{i}", f"pod{pod_of_leaf[i]}", bandwidth_bytes_per_s=nics_on[i] * out.bandwidth_bytes_per_s
                       / parts["oversubscription"], latency_s=parts["fabric_latency_s"],
                       energy_per_byte_j=out.energy_per_byte_j / 2)
        for j in range(pods):
            g.add_edge(f"pod{j}", "core", bandwidth_bytes_per_s=nics_in_pod[j] * out.bandwidth_bytes_per_s
                       / parts["oversubscription"] / parts["pod_oversubscription"],
                       latency_s=parts["fabric_latency_s"], energy_per_byte_j=out.energy_per_byte_j / 2)
        return g
    for i in range(nleaves if nspines else 0):
        uplink = {"bandwidth_bytes_per_s": nics_on[i] * out.bandwidth_bytes_per_s / parts["oversubscription"] / nspines,
                  "latency_s": parts["fabric_latency_s"], "energy_per_byte_j": out.energy_per_byte_j / 2}
        for j in range(nspines):
            g.add_edge(f"leaf{i}", f"spine{j}", **uplink)
    return g


def gpu_cluster_size(nodes, **kwargs) -> tuple[int, int]:
    """The (nodes, links) ``gpu_cluster(nodes, **kwargs)`` would make, from its shape arguments alone."""
    shape = _gpu_cluster_shape(nodes, kwargs)
    n = shape["servers"] * shape["gpus_per_node"]
    leaves, spines, pods = shape["leaves"], shape["spines"], shape["pods"]
    if pods:
        return 2 * n + shape["servers"] + leaves + pods + 1, 3 * n + leaves + pods
    return 2 * n + shape["servers"] + leaves + spines, 3 * n + leaves * spines
