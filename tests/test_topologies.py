"""Topologies: builder shapes, routing, validation, files and round trips."""
from __future__ import annotations

import dataclasses
import json
import pickle
import re
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import yaml

from topologies import (
    BUILDERS,
    LinkSpec,
    NodeSpec,
    Route,
    Topology,
    TopologyError,
    edge_cloud,
    fat_tree,
    fully_connected,
    gpu_cluster,
    hierarchical,
    load_topology,
    ring,
    switch,
    topology_from_dict,
    torus,
    tree,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "experiments" / "scenarios" / "topologies"


def counts(t: Topology):
    roles = [r for _, r in t.graph.nodes(data="role")]
    return t.nranks, len(roles) - t.nranks, t.graph.number_of_edges()


def path_of(t: Topology, src: int, dst: int):
    return [t.links[i] for i in t.route(src, dst).links]


def compute_node(**kw):
    return {"role": "compute", "flops_per_s": 1e12, "idle_power_w": 10.0, "busy_power_w": 20.0, **kw}


def link(**kw):
    return {"bandwidth_bytes_per_s": 1e9, "latency_s": 1e-6, "energy_per_byte_j": 0.0, **kw}


def pair_graph(node_kw=None, link_kw=None):
    g = nx.Graph()
    g.add_node("n0", **compute_node())
    g.add_node("n1", **compute_node(**(node_kw or {})))
    g.add_edge("n0", "n1", **link(**(link_kw or {})))
    return g


# -- builders ------------------------------------------------------------------

@pytest.mark.parametrize(
    "topo, expected",
    [
        (lambda: ring(8), (8, 0, 8)),
        (lambda: ring(2), (2, 0, 1)),
        (lambda: switch(5), (5, 1, 5)),
        (lambda: fully_connected(5), (5, 0, 10)),
        (lambda: tree(8), (8, 7, 14)),
        (lambda: tree(5, arity=3), (5, 3, 7)),
        (lambda: tree(3, arity=4), (3, 1, 3)),
        (lambda: torus((4, 4)), (16, 0, 32)),
        (lambda: torus((2, 3, 4)), (24, 0, 60)),
        (lambda: torus((2, 2)), (4, 0, 4)),
        (lambda: fat_tree(4), (16, 20, 48)),
        (lambda: fat_tree(4, n=10), (10, 20, 42)),
        (lambda: fat_tree(2), (2, 5, 6)),
        (lambda: hierarchical((4, 8)), (32, 5, 36)),
        (lambda: hierarchical((2, 4, 8)), (64, 11, 74)),
        (lambda: edge_cloud(n_devices=6, n_edge=2, n_cloud=2), (10, 2, 11)),
        (lambda: edge_cloud(n_devices=3, n_edge=1, n_cloud=0), (4, 1, 4)),
    ],
)
def test_builder_counts(topo, expected):
    assert counts(topo()) == expected


def test_builders_registry_and_names():
    assert set(BUILDERS) == {
        "ring", "switch", "fully_connected", "tree", "torus", "fat_tree", "hierarchical", "edge_cloud", "gpu_cluster",
    }
    for name, fn in BUILDERS.items():
        assert fn.__name__ == name
    t = ring(4)
    assert t.name == "ring" and t.params["n"] == 4
    assert t.ranks == ("n0", "n1", "n2", "n3")
    assert t.describe() == "ring: 4 ranks, 0 switches, 4 links"
    assert edge_cloud(n_devices=2, n_edge=1).describe() == "edge_cloud: 4 ranks, 1 switch, 1 router, 5 links"


def test_defaults_and_overrides():
    t = switch(3)
    assert t.rank_flops_per_s == (100e12,) * 3
    assert t.rank_idle_power_w == (100.0,) * 3 and t.rank_busy_power_w == (400.0,) * 3
    assert t.graph.nodes["s0"] == {"role": "switch", "flops_per_s": 0.0, "idle_power_w": 150.0, "busy_power_w": 150.0}
    assert set(t.link_bandwidth_bytes_per_s) == {12.5e9}
    assert set(t.link_latency_s) == {2e-6} and set(t.link_energy_per_byte_j) == {1e-11}
    t = ring(3, link=LinkSpec(1e9, latency_s=5e-6, energy_per_byte_j=0.0),
             node=NodeSpec(flops_per_s=1e9, idle_power_w=0, busy_power_w=1))
    assert t.link_bandwidth_bytes_per_s == (1e9,) * 6 and t.link_latency_s == (5e-6,) * 6
    assert t.rank_flops_per_s == (1e9,) * 3 and t.rank_busy_power_w == (1.0,) * 3


def test_links_are_directed_pairs_in_edge_order():
    t = ring(3)
    assert t.links == (("n0", "n1"), ("n1", "n0"), ("n0", "n2"), ("n2", "n0"), ("n1", "n2"), ("n2", "n1"))
    assert all(t.link_index[l] == i for i, l in enumerate(t.links))
    assert len(t.link_bandwidth_bytes_per_s) == len(t.link_latency_s) == len(t.link_energy_per_byte_j) == 6


def test_tree_uplinks_and_shape():
    t = tree(4, arity=2, link=LinkSpec(1e9), uplink=LinkSpec(4e9))
    assert [t.graph.nodes[s]["role"] for s in ("s1_0", "s1_1", "s2_0")] == ["switch"] * 3
    assert set(t.graph["s1_0"]) == {"n0", "n1", "s2_0"}
    assert t.graph["n0"]["s1_0"]["bandwidth_bytes_per_s"] == 1e9
    assert t.graph["s1_0"]["s2_0"]["bandwidth_bytes_per_s"] == 4e9
    assert path_of(t, 0, 3) == [("n0", "s1_0"), ("s1_0", "s2_0"), ("s2_0", "s1_1"), ("s1_1", "n3")]


def test_torus_wraparound_and_row_major_ranks():
    t = torus((3, 4))
    assert set(t.graph["n0"]) == {"n1", "n3", "n4", "n8"}  # (0,0): (0,1) (0,3) (1,0) (2,0)
    assert path_of(t, 0, 3) == [("n0", "n3")]
    assert path_of(t, 0, 8) == [("n0", "n8")]
    assert t.route(0, 5).latency_s == pytest.approx(4e-6, rel=1e-12)
    t3 = torus((2, 2, 2))
    assert t3.graph.degree("n0") == 3 and t3.graph.number_of_edges() == 12


def test_fat_tree_wiring():
    t = fat_tree(4)
    assert set(t.graph["n0"]) == {"edge0_0"}
    assert set(t.graph["n2"]) == {"edge0_1"}
    assert set(t.graph["n4"]) == {"edge1_0"}
    assert set(t.graph["agg0_1"]) == {"edge0_0", "edge0_1", "core2", "core3"}
    assert len(t.route(0, 1).links) == 2  # same edge switch
    assert len(t.route(0, 2).links) == 4  # same pod
    assert len(t.route(0, 15).links) == 6  # across the core
    assert all(t.graph.degree(s) == 4 for s in t.graph if t.graph.nodes[s]["role"] == "switch")


def test_hierarchical_groups_and_levels():
    t = hierarchical((2, 4), links=[LinkSpec(100e9, latency_s=1e-6), LinkSpec(10e9, latency_s=4e-6)])
    assert t.groups() == ((0, 1, 2, 3), (4, 5, 6, 7))
    assert [t.graph.nodes[n]["group"] for n in t.ranks] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert path_of(t, 0, 1) == [("n0", "sw0_0"), ("sw0_0", "n1")]
    assert t.route(0, 1).latency_s == pytest.approx(2e-6, rel=1e-12)
    inter = t.route(0, 5)
    assert len(inter.links) == 4 and inter.latency_s == pytest.approx(10e-6, rel=1e-12)
    assert [t.link_bandwidth_bytes_per_s[i] for i in inter.links] == [100e9, 10e9, 10e9, 100e9]
    d = hierarchical(levels=(4, 8))
    assert d.params["bandwidths_bytes_per_s"] == (300e9, 25e9) and d.params["latencies_s"] == (1e-6, 5e-6)
    assert len(d.groups()) == 4
    three = hierarchical((2, 2, 2), links=[LinkSpec(3e9, latency_s=1e-6), LinkSpec(2e9, latency_s=1e-6),
                                           LinkSpec(1e9, latency_s=1e-6)])
    assert three.groups() == ((0, 1), (2, 3), (4, 5), (6, 7))
    assert [three.link_bandwidth_bytes_per_s[i] for i in three.route(0, 7).links] == [3e9, 2e9, 1e9, 1e9, 2e9, 3e9]


def test_edge_cloud_tiers_groups_and_routes():
    t = edge_cloud(n_devices=5, n_edge=2, n_cloud=2)
    assert t.ranks == ("dev0", "dev1", "dev2", "dev3", "dev4", "edge0", "edge1", "cloud0", "cloud1")
    tiers = [t.graph.nodes[n]["tier"] for n in t.ranks]
    assert tiers == ["device"] * 5 + ["edge"] * 2 + ["cloud"] * 2
    assert t.rank_flops_per_s == (1e12,) * 5 + (20e12,) * 2 + (200e12,) * 2
    assert t.rank_idle_power_w == (1.0,) * 5 + (50.0,) * 2 + (200.0,) * 2
    assert t.rank_busy_power_w == (5.0,) * 5 + (150.0,) * 2 + (500.0,) * 2
    assert t.groups() == ((0, 2, 4, 5), (1, 3, 6), (7, 8))
    assert t.graph.nodes["gw"]["role"] == "router"
    assert path_of(t, 1, 6) == [("dev1", "edge1")]
    assert path_of(t, 0, 7) == [("dev0", "edge0"), ("edge0", "gw"), ("gw", "dc_switch"), ("dc_switch", "cloud0")]
    assert t.route(0, 7).latency_s == pytest.approx(5e-3 + 20e-3 + 0.2e-3 + 0.2e-3, rel=1e-12)
    assert [t.link_energy_per_byte_j[i] for i in t.route(0, 7).links] == [1e-7, 5e-9, 1e-9, 1e-9]


# -- routing -------------------------------------------------------------------

def test_ring_routes_and_tie_break():
    t = ring(8)
    assert t.route(0, 1) == Route((t.link_index[("n0", "n1")],), 2e-6)
    assert path_of(t, 1, 0) == [("n1", "n0")]
    assert path_of(t, 0, 7) == [("n0", "n7")]
    # Opposite nodes: both ways round tie on (latency, hops); the ECMP hash
    # picks one, the same on every build of the topology.
    for src, dst in ((0, 4), (4, 0), (2, 6), (6, 2)):
        path = path_of(t, src, dst)
        assert len(path) == 4 and path[0][0] == f"n{src}" and path[-1][1] == f"n{dst}"
        assert all(a[1] == b[0] for a, b in zip(path, path[1:]))
        assert path_of(ring(8), src, dst) == path
    assert path_of(t, 2, 6) == [("n2", "n1"), ("n1", "n0"), ("n0", "n7"), ("n7", "n6")]
    assert t.route(0, 4).latency_s == pytest.approx(8e-6, rel=1e-12)
    assert t.route(3, 3) == Route((), 0.0)


def test_ecmp_spreads_cross_pod_traffic_over_every_core_switch():
    t = fat_tree(4)
    cores = set()
    for r in range(16):
        for link_id in t.route(r, (r + 8) % 16).links:
            cores.update(x for x in t.links[link_id] if str(x).startswith("core"))
    assert cores == {"core0", "core1", "core2", "core3"}


def test_route_prefers_latency_then_hops():
    g = nx.Graph()
    for n in ("a", "b", "c"):
        g.add_node(n, **compute_node())
    g.add_edge("a", "c", **link(latency_s=5e-6))
    g.add_edge("a", "b", **link(latency_s=1e-6))
    g.add_edge("b", "c", **link(latency_s=1e-6))
    t = Topology(g)
    assert path_of(t, 0, 2) == [("a", "b"), ("b", "c")] and t.route(0, 2).latency_s == 2e-6
    # Equal latency: fewer hops wins.
    g["a"]["c"]["latency_s"] = 2e-6
    assert path_of(Topology(g), 0, 2) == [("a", "c")]


def test_route_through_switch_and_cache():
    t = switch(4, link=LinkSpec(latency_s=3e-6))
    r = t.route(0, 3)
    assert r == Route((t.link_index[("n0", "s0")], t.link_index[("s0", "n3")]), 6e-6)
    assert t.route(0, 3) is r
    assert t.route(3, 0).links == (t.link_index[("n3", "s0")], t.link_index[("s0", "n0")])


def test_route_matches_networkx_on_fat_tree():
    t = fat_tree(4)
    for src, dst in [(0, 15), (3, 8), (5, 6), (12, 1)]:
        r = t.route(src, dst)
        expected = nx.shortest_path_length(t.graph, t.ranks[src], t.ranks[dst], weight="latency_s")
        assert r.latency_s == pytest.approx(expected, rel=1e-12)
        nodes = [t.links[r.links[0]][0]] + [t.links[i][1] for i in r.links]
        assert nodes[0] == t.ranks[src] and nodes[-1] == t.ranks[dst]


def test_routes_on_random_graphs_are_least_latency_then_fewest_hops():
    # Random connected graphs with leaves (dead ends), latencies exact binary fractions so that ties are
    # exact: every route is a path from source to destination, of networkx's least latency, and of the
    # fewest hops among the paths of that latency.
    rng = np.random.default_rng(7)
    for case in range(40):
        n = int(rng.integers(4, 18))
        g = nx.Graph()
        for i in range(n):
            g.add_node(i, **compute_node())
        for i in range(1, n):
            others = [int(j) for j in rng.choice(i, size=min(i, int(rng.integers(1, 3))), replace=False)]
            for j in others:
                g.add_edge(i, j, **link(latency_s=int(rng.integers(1, 4)) * 2.0 ** -20))
        t = Topology(g)
        for src in range(t.nranks):
            for dst in range(t.nranks):
                if src == dst:
                    continue
                r = t.route(src, dst)
                a, b = t.ranks[src], t.ranks[dst]
                nodes = [a] + [t.links[i][1] for i in r.links]
                assert [t.links[i][0] for i in r.links] == nodes[:-1] and nodes[-1] == b, case
                best = nx.shortest_path_length(g, a, b, weight="latency_s")
                assert r.latency_s == best, case
                fewest = min(len(p) - 1 for p in nx.all_shortest_paths(g, a, b, weight="latency_s"))
                assert len(r.links) == fewest, case


def test_routes_found_at_once_for_a_source_are_the_routes_found_one_by_one(monkeypatch):
    from topologies import model
    pairs = [(a, b) for a in range(16) for b in range(16) if a != b]
    at_once = fat_tree(4)
    routes = [at_once.route(a, b) for a, b in pairs]  # past 8 destinations a source's routes come at once
    assert all(asked == 8 for asked in at_once._asked.values())
    monkeypatch.setattr(model, "ROUTES_AT_ONCE_MIN", 10**9)
    one_by_one = fat_tree(4)
    assert [one_by_one.route(a, b) for a, b in pairs] == routes


def test_large_ring_routes_are_cheap():
    t = ring(1024)
    for i in range(1024):
        assert len(t.route(i, (i + 1) % 1024).links) == 1
    assert len(t.route(0, 512).links) == 512


@pytest.mark.parametrize("src, dst", [(-1, 0), (0, 4), (True, 1), (0, 1.0), ("0", 1)])
def test_bad_ranks(src, dst):
    with pytest.raises(TopologyError, match="rank"):
        ring(4).route(src, dst)
    with pytest.raises(TopologyError, match="rank"):
        ring(4).node_of(src if src != 0 else dst)


def test_node_of_rank_of_groups_none():
    t = ring(3)
    assert t.node_of(2) == "n2" and t.rank_of("n2") == 2
    assert t.groups() is None
    with pytest.raises(TopologyError, match="'s0'"):
        switch(2).rank_of("s0")


def test_groups_with_ungrouped_rank():
    g = nx.Graph()
    g.add_node("a", **compute_node(group="x"))
    g.add_node("b", **compute_node())
    g.add_node("c", **compute_node(group="x"))
    g.add_edge("a", "b", **link())
    g.add_edge("b", "c", **link())
    assert Topology(g).groups() == ((0, 2), (1,))


# -- validation ----------------------------------------------------------------

@pytest.mark.parametrize(
    "link_kw, message",
    [
        ({"bandwidth_bytes_per_s": -1.0}, r"link n0-n1: bandwidth_bytes_per_s must be > 0, got -1\.0"),
        ({"bandwidth_bytes_per_s": 0}, r"link n0-n1: bandwidth_bytes_per_s must be > 0"),
        ({"latency_s": -1e-6}, r"link n0-n1: latency_s must be >= 0"),
        ({"energy_per_byte_j": -1.0}, r"link n0-n1: energy_per_byte_j must be >= 0"),
        ({"latency_s": "fast"}, r"link n0-n1: latency_s must be a number"),
        ({"latency_s": float("nan")}, r"link n0-n1: latency_s must be finite"),
        ({"latncy_s": 1.0}, r"link n0-n1: unknown attribute\(s\) 'latncy_s'"),
    ],
)
def test_bad_links(link_kw, message):
    with pytest.raises(TopologyError, match=message):
        Topology(pair_graph(link_kw=link_kw))


def test_missing_bandwidth():
    g = pair_graph()
    del g["n0"]["n1"]["bandwidth_bytes_per_s"]
    with pytest.raises(TopologyError, match="link n0-n1: missing bandwidth_bytes_per_s"):
        Topology(g)


@pytest.mark.parametrize(
    "node_kw, message",
    [
        ({"idle_power_w": -1.0}, r"node 'n1': idle_power_w must be >= 0"),
        ({"busy_power_w": -5}, r"node 'n1': busy_power_w must be >= 0"),
        ({"flops_per_s": -1.0}, r"node 'n1': flops_per_s must be >= 0"),
        ({"flops_per_s": 0.0}, r"node 'n1' \(compute\): flops_per_s must be > 0"),
        ({"role": "gpu"}, r"node 'n1': unknown role 'gpu'"),
        ({"colour": "red"}, r"node 'n1': unknown attribute\(s\) 'colour'"),
        ({"group": [1, 2]}, r"node 'n1': group must be hashable"),
    ],
)
def test_bad_nodes(node_kw, message):
    with pytest.raises(TopologyError, match=message):
        Topology(pair_graph(node_kw=node_kw))


def test_negative_switch_flops_and_missing_compute_flops():
    g = pair_graph()
    g.add_node("s0", role="switch", flops_per_s=-1.0)
    g.add_edge("n0", "s0", **link())
    with pytest.raises(TopologyError, match="node 's0': flops_per_s must be >= 0"):
        Topology(g)
    g = pair_graph()
    del g.nodes["n1"]["flops_per_s"]
    with pytest.raises(TopologyError, match=r"node 'n1' \(compute\): missing flops_per_s"):
        Topology(g)


def test_no_compute_nodes():
    g = nx.Graph()
    g.add_node("s0", role="switch")
    with pytest.raises(TopologyError, match="at least 1 compute node"):
        Topology(g)


def test_disconnected_ranks():
    g = pair_graph()
    g.add_node("n2", **compute_node())
    g.add_node("n3", **compute_node())
    g.add_edge("n2", "n3", **link())
    with pytest.raises(TopologyError, match=r"rank 2 \(node 'n2'\) cannot reach rank 0 \(node 'n0'\)"):
        Topology(g)


def test_isolated_switch_is_allowed_but_selfloop_is_not():
    g = pair_graph()
    g.add_node("spare", role="switch")
    assert Topology(g).nranks == 2
    g.add_edge("n0", "n0", **link())
    with pytest.raises(TopologyError, match="link n0-n0: self-loop on node 'n0'"):
        Topology(g)


def test_graph_type_and_copy():
    with pytest.raises(TopologyError, match="undirected nx.Graph"):
        Topology(nx.DiGraph(pair_graph()))
    g = pair_graph()
    t = Topology(g)
    g["n0"]["n1"]["bandwidth_bytes_per_s"] = -1
    assert t.graph["n0"]["n1"]["bandwidth_bytes_per_s"] == 1e9


def _file(**data) -> Topology:
    """What a scenario file with these keys builds (flat keys, as users write them)."""
    return topology_from_dict(data)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: ring(1), r"ring: n must be >= 2, got 1"),
        (lambda: ring(2.0), r"ring: n must be an int"),
        (lambda: _file(builder="ring", n=4, bandwidth_bytes_per_s=-1), r"ring: bandwidth_bytes_per_s must be > 0"),
        (lambda: _file(builder="ring", n=4, latency_s=-1e-6), r"ring: latency_s must be >= 0"),
        (lambda: _file(builder="switch", n=4, switch_idle_power_w=-1), r"switch: switch_idle_power_w must be >= 0"),
        (lambda: fully_connected(0), r"fully_connected: n must be >= 2"),
        (lambda: tree(4, arity=1), r"tree: arity must be >= 2"),
        (lambda: _file(builder="tree", n=4, uplink_bandwidth_bytes_per_s=0),
         r"tree: uplink_bandwidth_bytes_per_s must be > 0"),
        (lambda: torus((4,)), r"torus: dims must have 2 or 3 entries"),
        (lambda: torus((4, 1)), r"torus: dims\[1\] must be >= 2"),
        (lambda: fat_tree(3), r"fat_tree: k must be even"),
        (lambda: fat_tree(4, n=17), r"fat_tree: n must be <= k\^3/4 = 16"),
        (lambda: _file(builder="hierarchical", levels=[2, 4], bandwidths_bytes_per_s=[1e9]),
         r"hierarchical: bandwidths_bytes_per_s must have len\(levels\) = 2 entries"),
        (lambda: hierarchical((2, 4), links=[LinkSpec(1e9)]),
         r"hierarchical: links must have len\(levels\) = 2 entries"),
        (lambda: hierarchical((2, 2, 2, 2)), r"no default for 4 levels"),
        (lambda: hierarchical((1, 1)), r"need >= 2"),
        (lambda: _file(builder="hierarchical", levels=[2, 4], latencies_s=[1e-6, -1.0]),
         r"hierarchical: level 1 latency_s must be >= 0"),
        (lambda: edge_cloud(n_devices=-1, n_edge=1), r"edge_cloud: n_devices must be >= 0"),
        (lambda: edge_cloud(n_devices=2, n_edge=0), r"edge_cloud: n_edge must be >= 1"),
        (lambda: _file(builder="edge_cloud", n_devices=2, n_edge=1, wan_bandwidth_bytes_per_s=-1),
         r"edge_cloud: wan_bandwidth_bytes_per_s must be > 0"),
    ],
)
def test_builder_validation(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_specs_check_their_fields_when_made():
    for make, message in [
        (lambda: LinkSpec(-1), r"^bandwidth_bytes_per_s must be > 0, got -1.0$"),
        (lambda: LinkSpec(1e9, latency_s="fast"), r"^latency_s must be a number, got 'fast'$"),
        (lambda: LinkSpec(energy_per_byte_j=float("inf")), r"^energy_per_byte_j must be finite, got inf$"),
        (lambda: NodeSpec(flops_per_s=0), r"^flops_per_s must be > 0, got 0.0$"),
        (lambda: NodeSpec(idle_power_w=-1), r"^idle_power_w must be >= 0, got -1.0$"),
        (lambda: NodeSpec(busy_power_w=True), r"^busy_power_w must be a number, got True$"),
    ]:
        with pytest.raises(ValueError, match=message) as info:
            make()
        assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)
    assert LinkSpec(1e9, latency_s=0) == LinkSpec(1e9, latency_s=0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        LinkSpec(1e9).latency_s = 0.0


def test_builders_take_spec_objects():
    for call, message in [
        (lambda: ring(4, link={"latency_s": 1e-6}), r"^ring: link must be a LinkSpec, got \{'latency_s': 1e-06\}$"),
        (lambda: ring(4, node=LinkSpec(1e9)), r"^ring: node must be a NodeSpec"),
        (lambda: tree(4, switch=NodeSpec(flops_per_s=1e12)), r"^tree: switch: a switch does not compute"),
        (lambda: hierarchical((2, 2), links=LinkSpec(1e9)), r"^hierarchical: links must be a list of 2 LinkSpecs"),
        (lambda: hierarchical((2, 2, 2, 2), links=[LinkSpec(1e9, latency_s=1e-6)] * 3 + [LinkSpec(latency_s=1e-6)]),
         r"^hierarchical: links\[3\].bandwidth_bytes_per_s has no default for 4 levels"),
    ]:
        with pytest.raises(TopologyError, match=message):
            call()


def test_a_spec_says_only_what_differs_from_the_builders_defaults():
    t = ring(4, link=LinkSpec(latency_s=1e-6))
    assert t == _file(builder="ring", n=4, latency_s=1e-6) and t.params["bandwidth_bytes_per_s"] == 12.5e9
    # A tier's or a level's defaults are its own, not the module's.
    t = edge_cloud(n_devices=2, n_edge=1, wan=LinkSpec(latency_s=30e-3), device=NodeSpec(flops_per_s=2e12))
    assert t.params["wan_bandwidth_bytes_per_s"] == 125e6 and t.params["device_busy_power_w"] == 5.0
    assert t == _file(builder="edge_cloud", n_devices=2, n_edge=1, wan_latency_s=30e-3, device_flops_per_s=2e12)
    t = hierarchical((2, 2), links=[LinkSpec(latency_s=2e-6), None])
    assert t.params["bandwidths_bytes_per_s"] == (300e9, 25e9) and t.params["latencies_s"] == (2e-6, 5e-6)
    assert t == _file(builder="hierarchical", levels=[2, 2], latencies_s=[2e-6, 5e-6])
    # An uplink's unset fields are the leaf link's.
    t = tree(4, link=LinkSpec(1e9, latency_s=3e-6), uplink=LinkSpec(4e9))
    assert t.graph["s1_0"]["s2_0"] == {"bandwidth_bytes_per_s": 4e9, "latency_s": 3e-6, "energy_per_byte_j": 1e-11}
    # gpu_cluster's are the preset's; a node type gives the powers it has.
    t = gpu_cluster(2, preset="dgx_a100", scale_out=LinkSpec(10e9), node=NodeSpec(busy_power_w=500))
    assert t == _file(builder="gpu_cluster", nodes=2, preset="dgx_a100", scale_out_bandwidth_bytes_per_s=10e9,
                      busy_power_w=500)
    assert t.params["scale_out_latency_s"] == 3e-6 and t.params["node_type"] == "a100_80gb"
    assert t.rank_busy_power_w == (500.0,) * 16


def test_files_write_a_spec_flat_or_as_a_mapping():
    nested = _file(builder="edge_cloud", n_devices=2, n_edge=1, wan={"latency_s": "30e-3"}, switch={"idle_power_w": 5})
    assert nested == _file(builder="edge_cloud", n_devices=2, n_edge=1, wan_latency_s=30e-3, switch_idle_power_w=5)
    for data, message in [
        (dict(builder="ring", n=4, link={"latency_s": -1}), r"^topology: ring: link.latency_s must be >= 0, got -1.0$"),
        (dict(builder="ring", n=4, link={"latncy_s": 1}),
         r"^topology: ring: link: unknown field\(s\) 'latncy_s'; known: bandwidth_bytes_per_s, latency_s, "
         r"energy_per_byte_j$"),
        (dict(builder="ring", n=4, link={"latency_s": 1}, latency_s=2),
         r"^topology: ring: link.latency_s and latency_s are both given$"),
        (dict(builder="ring", n=4, link=5), r"^topology: ring: link must be a mapping of bandwidth_bytes_per_s, "),
        (dict(builder="switch", n=4, switch={"flops_per_s": 1}),
         r"^topology: switch: switch: unknown field\(s\) 'flops_per_s'; known: idle_power_w, busy_power_w$"),
        (dict(builder="tree", n=4, uplink_latency_s=-1), r"^topology: tree: uplink_latency_s must be >= 0"),
        (dict(builder="hierarchical", levels=[2, 2], links=[]), r"^topology: unknown argument\(s\) 'links'"),
    ]:
        with pytest.raises(TopologyError, match=message):
            _file(**data)
    # A key left out is the builder's default (test_a_null_value_in_a_file_is_refused...: a null is an error).
    assert _file(builder="switch", n=4) == switch(4)


# -- dicts and files -----------------------------------------------------------

TWO_RACKS = {
    "name": "two_racks",
    "defaults": {"node": {"role": "compute", "flops_per_s": 1e12}, "link": {"bandwidth_bytes_per_s": 1e9, "latency_s": 1e-6}},
    "nodes": [{"id": "n0"}, {"id": "n1"}, {"id": "n2"}, {"id": "n3"}, {"id": "tor0", "role": "switch", "flops_per_s": 0}],
    "links": [{"src": "n0", "dst": "tor0"}, {"src": "n1", "dst": "tor0"}, {"src": "n2", "dst": "tor0"},
              {"src": "n3", "dst": "tor0", "latency_s": 5e-6}],
}


def test_explicit_dict_with_defaults():
    t = topology_from_dict(TWO_RACKS)
    assert t.name == "two_racks" and t.ranks == ("n0", "n1", "n2", "n3")
    assert t.rank_flops_per_s == (1e12,) * 4
    assert t.route(0, 3).latency_s == pytest.approx(6e-6, rel=1e-12)
    assert t.graph.nodes["tor0"]["idle_power_w"] == 0.0
    # What plain yaml.safe_load makes of `latency_s: 5e-6` (a string) still counts.
    data = with_changes(x=lambda d: d["links"][3].update(latency_s="5e-6"))
    assert topology_from_dict(data) == t


def test_builder_dict():
    t = topology_from_dict({"builder": "torus", "dims": [2, 3], "latency_s": "1e-6"})
    assert t == torus((2, 3), link=LinkSpec(latency_s=1e-6))
    t = topology_from_dict({"builder": "hierarchical", "levels": [2, 2], "bandwidths_bytes_per_s": [2e9, 1e9],
                            "latencies_s": [1e-6, 2e-6]})
    assert t.groups() == ((0, 1), (2, 3))


def with_changes(**changes):
    data = json.loads(json.dumps(TWO_RACKS))
    for key, fn in changes.items():
        fn(data)
    return data


@pytest.mark.parametrize(
    "data, message",
    [
        ({"builder": "ringg", "n": 4}, r"topology.builder: unknown builder 'ringg'; known: ring, switch"),
        ({"builder": "ring", "n": 4, "bandwith_bytes_per_s": 1e9}, r"unknown argument\(s\) 'bandwith_bytes_per_s' for builder 'ring'"),
        ({"builder": "ring"}, r"topology: bad arguments for builder 'ring': missing a required argument: 'n'"),
        ({"builder": "ring", "n": 1}, r"topology: ring: n must be >= 2"),
        ({"builder": "ring", "n": 4, "latency_s": "slow"}, r"topology: ring: latency_s must be a number"),
        ([1, 2], r"topology: must be a mapping"),
        ({"nodes": []}, r"topology.nodes: must be a non-empty list"),
        ({"nodes": [{"id": "a", "role": "compute", "flops_per_s": 1}], "link": []}, r"topology: unknown field\(s\) 'link'"),
    ],
)
def test_bad_dicts(data, message):
    with pytest.raises(TopologyError, match=message):
        topology_from_dict(data)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["links"].append({"src": "n0", "dst": "n9"}), r"topology.links\[4\]: unknown node 'n9'"),
        (lambda d: d["nodes"].append({"id": "n1"}), r"topology.nodes\[5\]: duplicated id 'n1'"),
        (lambda d: d["links"].append({"src": "tor0", "dst": "n0"}), r"topology.links\[4\]: duplicated link tor0-n0"),
        (lambda d: d["links"].append({"src": "n0", "dst": "n0"}), r"topology.links\[4\]: self-loop on node 'n0'"),
        (lambda d: d["links"][1].pop("dst"), r"topology.links\[1\]: missing field 'dst'"),
        (lambda d: d["nodes"][2].pop("id"), r"topology.nodes\[2\]: missing field 'id'"),
        (lambda d: d["nodes"][2].update(flops=1), r"topology.nodes\[2\]: unknown field\(s\) 'flops'"),
        (lambda d: d["links"][3].update(latency_ms=1), r"topology.links\[3\]: unknown field\(s\) 'latency_ms'"),
        (lambda d: d["links"][3].update(latency_s="soon"), r"topology.links\[3\].latency_s must be a number, got 'soon'"),
        (lambda d: d["nodes"][1].update(idle_power_w=True), r"topology.nodes\[1\].idle_power_w must be a number"),
        (lambda d: d["defaults"]["link"].pop("bandwidth_bytes_per_s"), r"topology.links\[0\]: missing field 'bandwidth_bytes_per_s'"),
        (lambda d: d["defaults"]["node"].pop("role"), r"topology.nodes\[0\]: missing field 'role'"),
        (lambda d: d["defaults"]["link"].update(bw=1), r"topology.defaults.link: unknown field\(s\) 'bw'"),
        (lambda d: d["links"][2].update(bandwidth_bytes_per_s=-1.0), r"topology: link n2-tor0: bandwidth_bytes_per_s must be > 0, got -1.0"),
        (lambda d: d["links"].pop(), r"rank 3 \(node 'n3'\) cannot reach rank 0 \(node 'n0'\)"),
    ],
)
def test_bad_explicit_dicts(change, message):
    with pytest.raises(TopologyError, match=message):
        topology_from_dict(with_changes(x=change))


@pytest.mark.parametrize(
    "topo",
    [
        lambda: ring(5),
        lambda: tree(6, arity=3, uplink=LinkSpec(5e10)),
        lambda: fat_tree(4, n=9),
        lambda: hierarchical((2, 3, 2)),
        lambda: edge_cloud(n_devices=4, n_edge=2, n_cloud=3),
        lambda: topology_from_dict(TWO_RACKS),
    ],
)
def test_round_trip(topo, tmp_path):
    t = topo()
    again = topology_from_dict(t.to_dict())
    assert again == t
    assert again.ranks == t.ranks and again.links == t.links
    assert again.link_bandwidth_bytes_per_s == t.link_bandwidth_bytes_per_s
    assert again.rank_busy_power_w == t.rank_busy_power_w and again.groups() == t.groups()
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({"topology": t.to_dict()}, sort_keys=False))
    assert load_topology(path) == t
    path = tmp_path / "t.json"
    path.write_text(json.dumps(t.to_dict()))
    assert load_topology(path) == t


def test_equality_sees_attributes():
    assert ring(4) != ring(4, link=LinkSpec(latency_s=1e-6))
    assert ring(4) != switch(4)
    assert ring(4) == ring(4)


def test_load_yaml_forms(tmp_path):
    builder = tmp_path / "ring.yml"
    builder.write_text("builder: ring\nn: 4\nbandwidth_bytes_per_s: 1e9\nlatency_s: 1e-6\n")
    t = load_topology(builder)
    assert t == ring(4, link=LinkSpec(1e9, latency_s=1e-6))
    explicit = tmp_path / "scenario.yaml"
    explicit.write_text(
        "seed: 1\n"
        "topology:\n"
        "  nodes:\n"
        "    - {id: a, role: compute, flops_per_s: 2e12}\n"
        "    - {id: b, role: compute, flops_per_s: 2.0e+12, tier: edge}\n"
        "  links:\n"
        "    - {src: a, dst: b, bandwidth_bytes_per_s: 12.5e9, latency_s: 3e-6}\n"
    )
    t = load_topology(explicit)
    assert t.name == "custom" and t.rank_flops_per_s == (2e12, 2e12)
    assert t.route(1, 0) == Route((1,), 3e-6)
    assert t.graph.nodes["b"]["tier"] == "edge"


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(TopologyError, match=r"nope.yaml: no such file"):
        load_topology(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("builder: ring\nn: [4\n")
    with pytest.raises(TopologyError, match=r"bad.yaml: invalid YAML at line 3"):
        load_topology(bad)
    badjson = tmp_path / "bad.json"
    badjson.write_text('{"builder": "ring",\n "n": }')
    with pytest.raises(TopologyError, match=r"bad.json: invalid JSON at line 2"):
        load_topology(badjson)
    txt = tmp_path / "t.txt"
    txt.write_text("builder: ring")
    with pytest.raises(TopologyError, match=r"t.txt: unsupported file type '.txt'"):
        load_topology(txt)
    typo = tmp_path / "typo.yaml"
    typo.write_text("topology:\n  builder: ring\n  n: 4\n  latncy_s: 1\n")
    with pytest.raises(TopologyError, match=r"typo.yaml: topology: unknown argument\(s\) 'latncy_s'"):
        load_topology(typo)


def test_example_files():
    racks = load_topology(EXAMPLES / "custom_two_racks.yaml")
    assert racks.name == "two_racks" and racks.nranks == 8
    assert racks.groups() == ((0, 1, 2, 3), (4, 5, 6, 7))
    assert path_of(racks, 0, 4) == [("n0", "tor0"), ("tor0", "spine"), ("spine", "tor1"), ("tor1", "n4")]
    assert racks.route(0, 4).latency_s == pytest.approx(2e-6 + 1e-6 + 1e-6 + 2e-6, rel=1e-12)
    assert load_topology(EXAMPLES / "dgx_cluster.yaml").nranks == 32
    assert load_topology(EXAMPLES / "edge_cloud_small.yaml").nranks == 11


@pytest.mark.parametrize("data, message", [
    ({"builder": "ring", "n": 4, "bandwidth_bytes_per_s": None}, "ring: bandwidth_bytes_per_s must be a number, got None"),
    ({"builder": "hierarchical", "levels": [2, 2], "bandwidths_bytes_per_s": [1e9, None]},
     "hierarchical: level 1 bandwidth_bytes_per_s must be a number, got None"),
    ({"builder": "edge_cloud", "n_devices": 2, "n_edge": 1, "wan_latency_s": None},
     "edge_cloud: wan_latency_s must be a number, got None"),
    ({"builder": "edge_cloud", "n_devices": 2, "n_edge": 1, "wan": {"latency_s": None}},
     "edge_cloud: wan.latency_s must be a number, got None"),
])
def test_a_null_value_in_a_file_is_refused_not_taken_as_the_default(data, message):
    # A file leaves a key out for the default; a null is a value that went missing.
    with pytest.raises(TopologyError, match=re.escape(message)):
        topology_from_dict(data)
