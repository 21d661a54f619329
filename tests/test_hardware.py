"""Hardware presets, the gpu_cluster builder and the roofline compute model.

Presets are checked against the published figures they quote; gpu_cluster's
shapes and routes by name; its bandwidths and the roofline against closed
forms (exact, or ``pytest.approx`` with rel=1e-9).
"""
from __future__ import annotations

import inspect
import math
import time

import networkx as nx
import pytest
import yaml

from simcore.engine import Simulator, simulate
from topologies import (
    LinkSpec, NodeSpec, NodeType, Topology, TopologyError, cluster_presets, gpu_cluster, hierarchical,
    load_cluster_preset, load_node_type, node_types, ring, switch, topology_from_dict,
)
from topologies.builders import BUILDER_SIZES, BUILDER_SPEC_KEYS, BUILDERS
from topologies.gpu_cluster import GPU_CLUSTER_DEFAULTS
from topologies.hardware import CLUSTER_KEYS
from topologies.io import parse_yaml, topology_memory_bytes
from topologies.limits import topology_bytes
from workloads.ops import Collective, Compute, Recv, Send
from workloads.stragglers import StragglerSpec

GiB = 2**30


# -- presets ------------------------------------------------------------------


def test_shipped_presets_are_listed():
    assert node_types() == ["a100_80gb", "cpu", "h100_sxm", "h200"]
    assert cluster_presets() == ["dgx_a100", "dgx_h100", "dgx_h100_pods"]


def test_a100_published_figures():
    a100 = load_node_type("a100_80gb")
    assert dict(a100.peak_flops_per_s) == {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12}
    assert "fp8" not in a100.peak_flops_per_s
    assert a100.default_precision == "bf16" and a100.flops_per_s == 312e12
    assert a100.memory_bytes == 80 * GiB
    assert a100.memory_bandwidth_bytes_per_s == 2.039e12
    assert a100.busy_power_w == 400.0 and 0 < a100.idle_power_w < a100.busy_power_w


def test_h100_and_h200_published_figures():
    h100, h200 = load_node_type("h100_sxm"), load_node_type("h200")
    peaks = {"fp8": 1979e12, "bf16": 989e12, "fp16": 989e12, "tf32": 494e12, "fp32": 67e12}
    assert dict(h100.peak_flops_per_s) == peaks and dict(h200.peak_flops_per_s) == peaks
    assert h100.default_precision == h200.default_precision == "bf16"
    assert h100.memory_bytes == 80 * GiB and h200.memory_bytes == 141e9
    assert h100.memory_bandwidth_bytes_per_s == 3.35e12 and h200.memory_bandwidth_bytes_per_s == 4.8e12
    assert h100.busy_power_w == h200.busy_power_w == 700.0


def test_cpu_preset_is_a_modest_placeholder():
    cpu = load_node_type("cpu")
    assert cpu.default_precision == "fp32" and cpu.flops_per_s == 1e12
    assert "placeholder" in cpu.description.lower()


@pytest.mark.parametrize("name", ["a100_80gb", "h100_sxm", "h200"])
def test_gpu_gemm_tables_are_the_documented_defaults(name):
    kind = load_node_type(name)
    table = dict(kind.gemm_efficiency)
    assert table[128] == 0.30 and table[512] == 0.60 and table[2048] == 0.75 and 0.8 <= table[8192] <= 0.85
    sizes = [s for s, _ in kind.gemm_efficiency]
    fractions = [f for _, f in kind.gemm_efficiency]
    assert sizes == sorted(sizes) and fractions == sorted(fractions)


def test_cluster_presets_published_figures():
    a100, h100 = load_cluster_preset("dgx_a100").keywords, load_cluster_preset("dgx_h100").keywords
    assert a100["gpus_per_node"] == h100["gpus_per_node"] == 8
    assert a100["node_type"] == "a100_80gb" and h100["node_type"] == "h100_sxm"
    assert a100["scale_up_bandwidth_bytes_per_s"] == 300e9 and h100["scale_up_bandwidth_bytes_per_s"] == 450e9
    assert a100["scale_out_bandwidth_bytes_per_s"] == 25e9 and h100["scale_out_bandwidth_bytes_per_s"] == 50e9
    for k in (a100, h100):
        assert 1e-6 <= k["scale_up_latency_s"] <= 2e-6 and 2e-6 <= k["scale_out_latency_s"] <= 5e-6


def test_cluster_keys_are_gpu_cluster_keywords():
    # A preset holds what a scenario file may write: shape keywords and the specs' flat keys.
    file_keys = set(inspect.signature(gpu_cluster).parameters)
    file_keys |= {key for group in BUILDER_SPEC_KEYS["gpu_cluster"] for key in group.keys}
    assert set(CLUSTER_KEYS) <= file_keys
    assert set(GPU_CLUSTER_DEFAULTS) <= set(CLUSTER_KEYS)


def _write(tmp_path, text, name="gpu.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD = """\
name: my_gpu
peak_flops_per_s: {bf16: 100.0e12}
default_precision: bf16
"""


def test_a_copied_file_loads_by_path(tmp_path):
    kind = load_node_type(str(_write(tmp_path, GOOD)))
    assert kind.name == "my_gpu" and kind.flops_per_s == 100e12 and kind.memory_bytes is None
    assert kind.efficiency(1, 1, 1) == 1.0  # no table: every product reaches the peak
    t = ring(3, node=NodeSpec(node_type=kind))
    assert t.rank_flops_per_s == (100e12,) * 3 and t.rank_memory_bytes == (math.inf,) * 3


@pytest.mark.parametrize("text, message", [
    (GOOD + "peek_flops: 1\n", "unknown field(s) peek_flops"),
    ("name: x\ndefault_precision: bf16\n", "missing field(s) peak_flops_per_s"),
    ("name: x\npeak_flops_per_s: {bf16: -1}\ndefault_precision: bf16\n", "peak_flops_per_s[bf16] must be > 0"),
    ("name: x\npeak_flops_per_s: {bf16: 1.0e12}\ndefault_precision: fp8\n", "default_precision must be one of bf16"),
    (GOOD + "memory_bytes: 0\n", "memory_bytes must be a finite number > 0"),
    (GOOD + "gemm_efficiency: [[512, 0.5], [128, 0.3]]\n", "sizes must increase"),
    (GOOD + "gemm_efficiency: [[128, 1.5]]\n", "fraction must be in (0, 1]"),
    (GOOD + "gemm_efficiency: [[128]]\n", "must be a pair"),
    ("name: x\npeak_flops_per_s: [1\n", "invalid YAML at line"),
])
def test_a_bad_node_type_file_is_a_clear_error(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(TopologyError) as info:
        load_node_type(str(path))
    assert message in str(info.value) and "gpu.yaml" in str(info.value)


def test_unknown_presets_are_named():
    with pytest.raises(TopologyError, match=r"unknown node type 'h100'; presets: a100_80gb, cpu, h100_sxm, h200"):
        load_node_type("h100")
    with pytest.raises(TopologyError, match=r"unknown cluster preset 'dgx'; presets: dgx_a100, dgx_h100"):
        load_cluster_preset("dgx")
    with pytest.raises(TopologyError, match="no such file"):
        load_node_type("missing/gpu.yaml")


def test_a_bad_cluster_preset_file_is_a_clear_error(tmp_path):
    path = _write(tmp_path, "name: c\ngpus_per_nod: 8\n", "cluster.yaml")
    with pytest.raises(TopologyError, match=r"cluster\.yaml: unknown field\(s\) gpus_per_nod"):
        load_cluster_preset(str(path))


# -- node attributes on a topology ----------------------------------------------


def _one_node(**attrs) -> Topology:
    g = nx.Graph()
    g.add_node("a", role="compute", **attrs)
    return Topology(g)


def test_node_type_fills_the_node_attributes():
    t = switch(2, node=NodeSpec(node_type="h100_sxm"))
    assert t.rank_flops_per_s == (989e12, 989e12)
    assert t.rank_memory_bytes == (80 * GiB,) * 2
    assert t.rank_memory_bandwidth_bytes_per_s == (3.35e12,) * 2
    assert t.rank_busy_power_w == (700.0, 700.0)
    assert t.peak_flops_per_s(1, "fp8") == 1979e12 and t.peak_flops_per_s(1) == 989e12
    assert t.graph.nodes["n0"]["node_type"] == "h100_sxm"
    assert t.params["node_type"] == "h100_sxm" and t.params["flops_per_s"] == 989e12
    # An explicit power wins over the node type's.
    assert switch(2, node=NodeSpec(busy_power_w=500, node_type="h100_sxm")).rank_busy_power_w == (500.0, 500.0)


def test_hierarchical_takes_a_node_type():
    t = hierarchical((2, 4), node=NodeSpec(node_type="a100_80gb"))
    assert t.rank_flops_per_s == (312e12,) * 8 and t.groups() == ((0, 1, 2, 3), (4, 5, 6, 7))


def test_node_type_and_flops_per_s_together_are_refused():
    with pytest.raises(TopologyError, match="ring: flops_per_s comes from node_type 'h100_sxm'"):
        topology_from_dict({"builder": "ring", "n": 4, "node_type": "h100_sxm", "flops_per_s": 1e12})
    with pytest.raises(TopologyError, match="ring: unknown node type 'b200'"):
        topology_from_dict({"builder": "ring", "n": 4, "node_type": "b200"})
    with pytest.raises(TopologyError, match="^flops_per_s comes from node_type 'h100_sxm'"):
        NodeSpec(flops_per_s=1e12, node_type="h100_sxm")
    with pytest.raises(TopologyError, match="^unknown node type 'b200'"):
        NodeSpec(node_type="b200")


def test_nodes_without_hardware_keep_todays_figures():
    t = ring(4)
    assert t.rank_memory_bytes == (math.inf,) * 4 and t.rank_memory_bandwidth_bytes_per_s == (math.inf,) * 4
    assert t.peak_flops_per_s(0) == t.peak_flops_per_s(0, "fp8") == 100e12  # one speed, whatever the precision
    assert t.gemm_efficiency(0, 1, 1, 1) == 1.0
    assert "node_type" not in t.params and t.params["flops_per_s"] == 100e12


def test_missing_flops_per_s_is_the_default_precision_peak():
    t = _one_node(peak_flops_per_s={"bf16": 2e12, "fp32": 1e12}, default_precision="fp32")
    assert t.rank_flops_per_s == (1e12,) and t.peak_flops_per_s(0) == 1e12 and t.peak_flops_per_s(0, "bf16") == 2e12


@pytest.mark.parametrize("attrs, message", [
    ({"flops_per_s": 1, "memory_bytes": -1}, "node 'a': memory_bytes must be > 0"),
    ({"flops_per_s": 1, "memory_bandwidth_bytes_per_s": math.inf}, "memory_bandwidth_bytes_per_s must be finite"),
    ({"peak_flops_per_s": {"bf16": 1e12}}, "peak_flops_per_s needs a default_precision"),
    ({"peak_flops_per_s": {"bf16": 1e12}, "default_precision": "fp8"}, "default_precision 'fp8' is not in"),
    ({"flops_per_s": 1, "default_precision": "bf16"}, "needs a peak_flops_per_s table"),
    ({"peak_flops_per_s": {"bf16": 1e12}, "default_precision": "bf16", "flops_per_s": 2e12},
     "flops_per_s 2000000000000.0 differs from peak_flops_per_s[bf16]"),
    ({"peak_flops_per_s": {"bf16": 0}, "default_precision": "bf16"}, "peak_flops_per_s[bf16] must be > 0"),
    ({"flops_per_s": 1, "gemm_efficiency": [[1, 0]]}, "fraction must be in (0, 1]"),
    ({"flops_per_s": 1, "node_type": 5}, "node_type must be a non-empty string"),
])
def test_bad_hardware_attributes_name_the_node(attrs, message):
    with pytest.raises(TopologyError) as info:
        _one_node(**attrs)
    assert message in str(info.value)


def test_hardware_on_a_switch_is_refused():
    g = nx.Graph()
    g.add_node("a", role="compute", flops_per_s=1)
    g.add_node("s", role="switch", memory_bytes=1)
    g.add_edge("a", "s", bandwidth_bytes_per_s=1)
    with pytest.raises(TopologyError, match="node 's': memory_bytes only apply to compute nodes"):
        Topology(g)


def test_peak_of_an_unknown_precision_names_node_and_precision():
    t = switch(2, node=NodeSpec(node_type="a100_80gb"))
    with pytest.raises(ValueError, match=r"rank 1 \(node n1, node type a100_80gb\) has no peak for precision 'fp8'"):
        t.peak_flops_per_s(1, "fp8")


def test_gemm_efficiency_interpolates_in_log_size_and_clamps():
    t = switch(2, node=NodeSpec(node_type="h100_sxm"))
    assert t.gemm_efficiency(0, 128, 8192, 8192) == 0.30  # the smallest dimension keys the table
    assert t.gemm_efficiency(0, 8192, 8192, 2048) == 0.75
    assert t.gemm_efficiency(0, 256, 4096, 4096) == pytest.approx(0.45, rel=1e-12)  # halfway 128..512 in log
    assert t.gemm_efficiency(0, 1024, 4096, 4096) == pytest.approx(0.675, rel=1e-12)  # halfway 512..2048
    assert t.gemm_efficiency(0, 1, 1, 1) == 0.15 and t.gemm_efficiency(0, 10**6, 10**6, 10**6) == 0.82
    with pytest.raises(ValueError, match="m must be an integer >= 1"):
        t.gemm_efficiency(0, 0, 1, 1)


def test_to_dict_round_trip_of_a_gpu_cluster():
    t = gpu_cluster(2, preset="dgx_h100")
    d = t.to_dict()
    again = topology_from_dict(parse_yaml(yaml.safe_dump(d)))
    assert again == t
    assert again.peak_flops_per_s(3, "fp8") == 1979e12 and again.gemm_efficiency(3, 256, 256, 256) == t.gemm_efficiency(
        3, 256, 256, 256)
    assert again.rank_memory_bytes == t.rank_memory_bytes and again.groups() == t.groups()
    node = next(n for n in d["nodes"] if n["id"] == "n0")
    assert node["node_type"] == "h100_sxm" and node["gemm_efficiency"][1] == [128.0, 0.3]


def test_explicit_form_defaults_carry_hardware():
    t = topology_from_dict({
        "defaults": {"node": {"role": "compute", "peak_flops_per_s": {"bf16": 2e12}, "default_precision": "bf16",
                              "memory_bandwidth_bytes_per_s": "1e9"}},
        "nodes": [{"id": "a"}, {"id": "b"}],
        "links": [{"src": "a", "dst": "b", "bandwidth_bytes_per_s": 1e9}],
    })
    assert t.rank_flops_per_s == (2e12, 2e12) and t.rank_memory_bandwidth_bytes_per_s == (1e9, 1e9)


# -- gpu_cluster ------------------------------------------------------------------


def _path(t: Topology, src: int, dst: int) -> list[str]:
    route = t.route(src, dst)
    return [t.links[route.links[0]][0]] + [t.links[link][1] for link in route.links]


def test_gpu_cluster_fat_tree_shape_and_routes():
    t = gpu_cluster(2)  # H100 servers, fat tree, 32 NICs per leaf: one leaf, no spine
    assert t.nranks == 16 and t.name == "gpu_cluster"
    assert (t.graph.number_of_nodes(), t.graph.number_of_edges()) == (16 + 16 + 2 + 1, 48)
    assert BUILDER_SIZES["gpu_cluster"](2) == (35, 48)
    assert t.groups() == (tuple(range(8)), tuple(range(8, 16)))
    assert _path(t, 0, 7) == ["n0", "nvswitch0", "n7"]
    assert t.route(0, 7).latency_s == pytest.approx(1.5e-6, rel=1e-12)
    assert _path(t, 0, 9) == ["n0", "nic0", "leaf0", "nic9", "n9"]
    assert t.route(0, 9).latency_s == pytest.approx(3e-6, rel=1e-12)
    assert t.rank_flops_per_s == (989e12,) * 16


def test_gpu_cluster_rail_optimized_routes():
    t = gpu_cluster(2, preset="dgx_h100")  # rail-optimized: 8 rail leaves, one spine
    assert (t.graph.number_of_nodes(), t.graph.number_of_edges()) == (16 + 16 + 2 + 8 + 1, 48 + 8)
    assert _path(t, 1, 6) == ["n1", "nvswitch0", "n6"]
    assert _path(t, 0, 8) == ["n0", "nic0", "leaf0", "nic8", "n8"]  # same rail
    assert _path(t, 0, 9) == ["n0", "nic0", "leaf0", "spine0", "leaf1", "nic9", "n9"]  # across rails
    assert t.route(0, 9).latency_s == pytest.approx(3e-6 + 2 * 0.5e-6, rel=1e-12)


def test_gpu_cluster_pods_add_a_third_level():
    # 4 servers of 2 GPUs, rails of 1 server per leaf, pods of 2 servers: 8 leaves, 2 pod spines, a core.
    t = gpu_cluster(4, gpus_per_node=2, fabric="rail_optimized", nics_per_leaf=1, pod_servers=2,
                    pod_oversubscription=4.0)
    assert (t.graph.number_of_nodes(), t.graph.number_of_edges()) == (8 + 8 + 4 + 8 + 2 + 1, 24 + 8 + 2)
    assert (t.graph.number_of_nodes(), t.graph.number_of_edges()) == BUILDER_SIZES["gpu_cluster"](
        4, gpus_per_node=2, fabric="rail_optimized", nics_per_leaf=1, pod_servers=2)
    assert _path(t, 0, 2) == ["n0", "nic0", "leaf0", "pod0", "leaf1", "nic2", "n2"]  # one pod
    assert _path(t, 0, 4) == ["n0", "nic0", "leaf0", "pod0", "core", "pod1", "leaf2", "nic4", "n4"]
    assert t.route(0, 4).latency_s == pytest.approx(3e-6 + 4 * 0.5e-6, rel=1e-12)
    bw = t.link_bandwidth_bytes_per_s
    assert bw[t.link_index[("leaf0", "pod0")]] == 50e9  # one NIC below, non-blocking
    assert bw[t.link_index[("pod0", "core")]] == 4 * 50e9 / 4.0  # the pod's 4 NICs, 1:4 between pods
    big = gpu_cluster(1024, preset="dgx_h100_pods")
    assert big.params["pod_servers"] == 512 and big.params["pod_oversubscription"] == 7.0
    assert {n for n in big.graph if n.startswith(("pod", "core", "spine"))} == {"pod0", "pod1", "core"}


@pytest.mark.parametrize("kwargs, message", [
    ({"fabric": "rail_optimized", "nics_per_leaf": 2, "pod_servers": 3}, "pod_servers 3 must hold nics_per_leaf"),
    ({"fabric": "fat_tree", "nics_per_leaf": 4, "pod_servers": 1}, "must hold whole leaves"),
    ({"nics_per_leaf": 2, "pod_servers": 2, "spines": 2}, "pod_servers needs spines: 1"),
    ({"nics_per_leaf": 2, "pod_servers": 2, "pod_oversubscription": 0.5}, "pod_oversubscription must be >= 1"),
])
def test_gpu_cluster_pods_are_checked(kwargs, message):
    with pytest.raises(TopologyError, match=message):
        gpu_cluster(4, gpus_per_node=2, **kwargs)


def test_gpu_cluster_inside_a_server_even_with_equal_latencies():
    # Equal latencies: the NVSwitch path has fewer hops than any through NICs.
    t = gpu_cluster(2, scale_up=LinkSpec(latency_s=0), scale_out=LinkSpec(latency_s=0), fabric_latency_s=0)
    assert _path(t, 2, 5) == ["n2", "nvswitch0", "n5"]


def test_gpu_cluster_scenario_form_and_overrides():
    t = topology_from_dict({"builder": "gpu_cluster", "preset": "dgx_h100", "nodes": 16})
    assert t.nranks == 128 and t.params["preset"] == "dgx_h100" and t.params["fabric"] == "rail_optimized"
    small = topology_from_dict({"builder": "gpu_cluster", "preset": "dgx_a100", "nodes": 2, "gpus_per_node": 4,
                                "fabric": "fat_tree", "scale_out_bandwidth_bytes_per_s": "10e9"})
    assert small.nranks == 8 and small.rank_flops_per_s == (312e12,) * 8
    assert small.params["scale_out_bandwidth_bytes_per_s"] == 10e9 and small.params["node_type"] == "a100_80gb"
    nic = small.link_index[("n0", "nic0")]
    assert small.link_bandwidth_bytes_per_s[nic] == 10e9
    assert small.link_bandwidth_bytes_per_s[small.link_index[("n0", "nvswitch0")]] == 300e9


@pytest.mark.parametrize("kwargs, message", [
    ({"nodes": 0}, "nodes must be >= 1"),
    ({"nodes": 2, "gpus_per_node": 0}, "gpus_per_node must be >= 1"),
    ({"nodes": 2, "scale_up_bandwidth_bytes_per_s": 0}, "scale_up_bandwidth_bytes_per_s must be > 0"),
    ({"nodes": 2, "scale_out_bandwidth_bytes_per_s": -1}, "scale_out_bandwidth_bytes_per_s must be > 0"),
    ({"nodes": 2, "oversubscription": 0.5}, "oversubscription must be >= 1"),
    ({"nodes": 2, "fabric": "dragonfly"}, "unknown fabric 'dragonfly'; known: fat_tree, rail_optimized"),
    ({"nodes": 2, "preset": "dgx_b200"}, "unknown cluster preset 'dgx_b200'"),
    ({"nodes": 2, "node_type": "b200"}, "unknown node type 'b200'"),
    ({"nodes": 2, "scale_up_latency_s": 5e-6}, "scale_up_latency_s (5e-06) must not exceed scale_out_latency_s"),
])
def test_gpu_cluster_validates_at_the_edge(kwargs, message):
    with pytest.raises(TopologyError) as info:
        topology_from_dict({"builder": "gpu_cluster", **kwargs})
    assert message in str(info.value)


def test_1024_gpus_build_fast_within_the_memory_estimate():
    start = time.perf_counter()
    t = topology_from_dict({"builder": "gpu_cluster", "preset": "dgx_h100", "nodes": 128})
    assert time.perf_counter() - start < 2.0
    assert t.nranks == 1024
    nodes, links = BUILDER_SIZES["gpu_cluster"](128, preset="dgx_h100")
    assert (nodes, links) == (t.graph.number_of_nodes(), t.graph.number_of_edges())
    assert topology_memory_bytes(t) == topology_bytes(nodes, links) < 16 * 2**20
    with pytest.raises(TopologyError, match="builder 'gpu_cluster' makes"):
        topology_from_dict({"builder": "gpu_cluster", "nodes": 128}, max_memory_bytes=2**20)


def _exchange_across(t: Topology, nbytes: int, gpus: int) -> float:
    """Every GPU of server 0 swaps ``nbytes`` with its peer in server 1, all at once."""
    programs = [[] for _ in range(t.nranks)]
    for r in range(gpus):
        programs[r] = [Send(r + gpus, nbytes), Recv(r + gpus, nbytes)]
        programs[r + gpus] = [Send(r, nbytes), Recv(r, nbytes)]
    return simulate(t, programs).summary["makespan_s"]


@pytest.mark.parametrize("oversubscription", [1.0, 2.0, 4.0])
def test_oversubscription_divides_a_cross_leaf_flow_rate(oversubscription):
    # One server per leaf: 8 flows leave each leaf over uplinks of 8 x 50 GB/s / oversubscription,
    # so each gets 50 GB/s / oversubscription (zero latencies: bandwidth alone).
    t = gpu_cluster(2, nics_per_leaf=8, oversubscription=oversubscription, scale_up=LinkSpec(latency_s=0),
                    scale_out=LinkSpec(latency_s=0), fabric_latency_s=0)
    assert _path(t, 0, 8) == ["n0", "nic0", "leaf0", "spine0", "leaf1", "nic8", "n8"]
    nbytes = 50 * 2**20
    assert _exchange_across(t, nbytes, 8) == pytest.approx(nbytes / (50e9 / oversubscription), rel=1e-9)


@pytest.mark.parametrize("fabric, latency_s", [("rail_optimized", 3e-6 + 2 * 0.5e-6), ("fat_tree", 3e-6)])
def test_ring_allreduce_on_four_dgx_h100_closed_form(fabric, latency_s):
    # A ring in rank order crosses servers at GPUs 7->8, 15->16, ...; each of its 2(p-1)
    # steps waits for a chunk of n/p over one 50 GB/s NIC path (rail: GPU 7 and GPU 0 sit
    # on different rails, so through the spine).  Four such flows share a leaf's uplinks
    # of exactly 4 x 50 GB/s, so nothing slows them.
    t = gpu_cluster(4, preset="dgx_h100", fabric=fabric)
    p, nbytes = 32, GiB
    programs = [[Collective("allreduce", nbytes, algorithm="ring")] for _ in range(p)]
    makespan = simulate(t, programs).summary["makespan_s"]
    assert makespan == pytest.approx(2 * (p - 1) * (latency_s + nbytes / p / 50e9), rel=1e-9)


# -- roofline --------------------------------------------------------------------


def _compute_s(t: Topology, op: Compute, **kwargs) -> float:
    result = simulate(t, [[op], []], **kwargs)
    return float(result.records.iloc[0]["end_s"])


H100 = switch(2, node=NodeSpec(node_type="h100_sxm"))


def test_plain_compute_is_flops_over_flops_per_s_exactly():
    assert _compute_s(switch(2), Compute(3e12)) == 3e12 / 100e12
    assert _compute_s(H100, Compute(1.5e15)) == 1.5e15 / 989e12
    # Bytes on a node whose memory bandwidth is unknown cost nothing.
    assert _compute_s(switch(2), Compute(3e12, nbytes=10**15)) == 3e12 / 100e12


def test_roofline_compute_bound():
    # A 4096^3 product: efficiency 0.75 + (0.82 - 0.75) / 2 between 2048 and 8192 (halfway in log).
    fraction = 0.75 + (0.82 - 0.75) / 2
    flops = 2 * 4096**3
    op = Compute(flops, nbytes=3 * 4096 * 4096 * 2, gemm=(4096, 4096, 4096), precision="bf16")
    assert _compute_s(H100, op) == pytest.approx(flops / (989e12 * fraction), rel=1e-9)


def test_roofline_memory_bound():
    nbytes = 6_700_000_000_000  # 2 s at 3.35 TB/s, far more than the FLOP time
    assert _compute_s(H100, Compute(1e9, nbytes=nbytes)) == pytest.approx(2.0, rel=1e-12)
    h200 = switch(2, node=NodeSpec(node_type="h200"))
    assert _compute_s(h200, Compute(1e9, nbytes=nbytes)) == pytest.approx(nbytes / 4.8e12, rel=1e-12)


@pytest.mark.parametrize("gemm, fraction", [
    ((128, 4096, 4096), 0.30), ((512, 512, 512), 0.60), ((8192, 2048, 8192), 0.75),
    ((256, 8192, 8192), 0.45), ((32, 32, 32), 0.15), ((16384, 16384, 16384), 0.82),
])
def test_roofline_efficiency_at_and_between_table_points(gemm, fraction):
    flops = 2 * math.prod(gemm)
    assert _compute_s(H100, Compute(flops, gemm=gemm)) == pytest.approx(flops / (989e12 * fraction), rel=1e-9)


@pytest.mark.parametrize("precision, peak", [("fp8", 1979e12), ("bf16", 989e12), ("tf32", 494e12),
                                             ("fp32", 67e12), ("", 989e12)])
def test_roofline_precision_peaks(precision, peak):
    assert _compute_s(H100, Compute(1e15, precision=precision)) == pytest.approx(1e15 / peak, rel=1e-12)


def test_straggler_multiplies_the_roofline():
    op = Compute(1e9, nbytes=3_350_000_000_000, precision="fp8")
    slow = StragglerSpec(kind="fixed", params={"factor": 3}, ranks=(0,))
    assert _compute_s(H100, op, stragglers=slow) == pytest.approx(3.0, rel=1e-12)


def test_compute_records_carry_nbytes():
    result = simulate(H100, [[Compute(1e12, nbytes=12345), Compute(1e12)], []])
    assert list(result.records["nbytes"]) == [12345, 0]


def test_unknown_precision_is_refused_before_the_run():
    a100 = switch(2, node=NodeSpec(node_type="a100_80gb"))
    programs = [[Compute(1e12), Compute(1e12, label="attn", precision="fp8")], []]
    with pytest.raises(ValueError, match=r"rank 0 op 1 \(compute 'attn'\): precision 'fp8': .*has no peak"):
        Simulator(a100, programs)
    # A node without a peak table runs every precision at its one speed.
    assert _compute_s(switch(2), Compute(1e12, precision="fp8")) == 1e12 / 100e12


def test_gpu_cluster_is_registered():
    assert BUILDERS["gpu_cluster"] is gpu_cluster and isinstance(load_node_type("h200"), NodeType)
