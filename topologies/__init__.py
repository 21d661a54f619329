"""Topologies: builders, files and routing for the simulated network.

A ``Topology`` wraps a validated ``networkx.Graph`` of compute ranks, switches
and full-duplex links; builders make the usual shapes from ``LinkSpec`` and
``NodeSpec`` objects, ``load_topology`` and ``topology_from_dict`` read them
from scenario files.
"""
from .builders import BUILDERS, edge_cloud, fat_tree, fully_connected, hierarchical, ring, switch, torus, tree
from .gpu_cluster import gpu_cluster
from .hardware import NodeType, cluster_presets, load_cluster_preset, load_node_type, node_types
from .io import load_topology, topology_from_dict
from .model import Route, Topology, TopologyError
from .specs import LinkSpec, NodeSpec

__all__ = [
    "BUILDERS",
    "LinkSpec",
    "NodeSpec",
    "Route",
    "Topology",
    "TopologyError",
    "edge_cloud",
    "fat_tree",
    "NodeType",
    "cluster_presets",
    "fully_connected",
    "gpu_cluster",
    "hierarchical",
    "load_cluster_preset",
    "load_node_type",
    "node_types",
    "load_topology",
    "ring",
    "switch",
    "topology_from_dict",
    "torus",
    "tree",
]
