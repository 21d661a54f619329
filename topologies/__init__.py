"""Topologies: builders, files and routing for the simulated network.

A ``Topology`` wraps a validated ``networkx.Graph`` of compute ranks, switches
and full-duplex links; builders make the usual shapes, ``load_topology`` and
``topology_from_dict`` read them from scenario files.
"""
from .builders import (
    BUILDERS,
    edge_cloud,
    fat_tree,
    fully_connected,
    hierarchical,
    ring,
    switch,
    torus,
    tree,
)
from .io import load_topology, topology_from_dict
from .model import Route, Topology, TopologyError

__all__ = [
    "BUILDERS",
    "Route",
    "Topology",
    "TopologyError",
    "edge_cloud",
    "fat_tree",
    "fully_connected",
    "hierarchical",
    "load_topology",
    "ring",
    "switch",
    "topology_from_dict",
    "torus",
    "tree",
]
