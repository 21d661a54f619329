"""Machine profiles: measured figures of a real system that the simulator can use.

``python -m experiments.calibrate`` measures a machine (ping-pong latency and
bandwidth per link class, the compute speed of the kernel compute operations
use, collective times) and writes a profile (``experiments.output.write_profile``); a scenario that names it
(``profile: PROFILE.yaml``) is then simulated on the measured machine:

- every rank computes at the measured ``compute.flops_per_s``, and moves
  memory (a compute operation's ``nbytes``, see the roofline) at the measured
  ``compute.memory_bandwidth_bytes_per_s`` where the profile has one;
- the network is the machine the profile measured: ranks placed on hosts as
  the profile's run placed them (block placement when the rank count
  differs), each host a switch whose links give the measured intra-node
  latency and bandwidth, and each host's NIC (shared by its ranks) joined to
  the network at the measured inter-node latency and bandwidth;
- a message of n bytes between two ranks of a link class costs
  ``latency_s + n / (bandwidth_bytes_per_s * efficiency(n))``, where the
  efficiency curve (1 where one latency-bandwidth line fits) corrects the
  sizes at which the line does not;
- each byte a lowered collective reduces costs ``reduce_s_per_byte``;
- a send completes when the transport has taken its bytes, not when they
  arrive: at once for a message of at most ``transport.eager_bytes``, else
  when all but its last ``transport.send_buffer_bytes`` have arrived (gloo
  over TCP: the socket's buffer; MPI: eager below a threshold, rendezvous
  above it).  Both 0 (the default): a send completes on delivery;
- each link is a token bucket of ``transport.link_burst_bytes``: a message
  that starts on an idle path lets that many bytes through at once (the
  shaper of an emulated link; ``simcore.network``).  0 (the default): none.

The scenario's own topology is replaced, except for its rank groups (which
the hierarchical algorithm uses): a real run on this machine is what the
prediction is compared with.

This module holds the profile's data, its loading and the machine it
describes as a topology; the fits that produce a profile by running the
simulator live in ``simcore.calibration``, and ``simcore.calibration.Calibration``
is what the engine takes from a profile.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import networkx as nx

from topologies.io import read_data_file
from topologies.model import HARDWARE_FIELDS, Topology

LINK_CLASSES = ("intra_node", "inter_node", "emulated")
# host: the profile measured a machine, and a scenario simulated on it takes
# that machine's topology; emulated: it measured what TCP and the library add
# on shaped links (python -m experiments.calibrate --network emulated), and a
# scenario keeps its own topology, the one the emulated network builds.
PROFILE_NETWORKS = ("host", "emulated")
# One full Ethernet frame (1500 B MTU, its 14 B header, the 4 B FCS, the 8 B
# preamble and 12 B gap are not on a veth): what each switch namespace
# stores before it forwards, once per hop beyond the first.
WIRE_FRAME_BYTES = 1514


def _curve(points) -> tuple[tuple[int, float], ...]:
    points = tuple((int(n), float(e)) for n, e in points)
    if any(not (0 < e < math.inf) for _, e in points) or list(points) != sorted(points):
        raise ValueError("an efficiency curve is ascending (nbytes, factor > 0) pairs")
    return points


def curve_at(points: tuple[tuple[int, float], ...], nbytes: int) -> float:
    """Linear in log(nbytes) between measured points, flat beyond them; 1 without points."""
    if not points or nbytes <= 0:
        return 1.0
    sizes = [n for n, _ in points]
    if nbytes <= sizes[0]:
        return points[0][1]
    if nbytes >= sizes[-1]:
        return points[-1][1]
    i = bisect.bisect_right(sizes, nbytes)
    (n0, e0), (n1, e1) = points[i - 1], points[i]
    w = (math.log(nbytes) - math.log(n0)) / (math.log(n1) - math.log(n0))
    return e0 + w * (e1 - e0)


@dataclass(frozen=True)
class LinkClass:
    latency_s: float
    bandwidth_bytes_per_s: float
    # (nbytes, efficiency) points, ascending; empty when the line fits.
    efficiency: tuple[tuple[int, float], ...] = ()

    def __post_init__(self):
        if not 0 <= self.latency_s < math.inf:
            raise ValueError(f"latency_s must be finite and >= 0, got {self.latency_s!r}")
        if not 0 < self.bandwidth_bytes_per_s < math.inf:
            raise ValueError(f"bandwidth_bytes_per_s must be finite and > 0, got {self.bandwidth_bytes_per_s!r}")
        object.__setattr__(self, "efficiency", _curve(self.efficiency))

    def efficiency_at(self, nbytes: int) -> float:
        return curve_at(self.efficiency, nbytes)

    def time_s(self, nbytes: int) -> float:
        return self.latency_s + nbytes / (self.bandwidth_bytes_per_s * self.efficiency_at(nbytes))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"latency_s": self.latency_s, "bandwidth_bytes_per_s": self.bandwidth_bytes_per_s}
        if self.efficiency:
            out["efficiency"] = [[n, e] for n, e in self.efficiency]
        return out


@dataclass(frozen=True)
class MachineProfile:
    name: str
    backend: str
    flops_per_s: float
    link_classes: dict[str, LinkClass]
    rank_hosts: tuple[str, ...] = ()
    reduce_s_per_byte: float = 0.0
    # op -> (nbytes, factor) curve: the library's own collectives (native mode)
    # against the lowered algorithm on the measured links; a factor below 1
    # means the library moves bytes that much slower.
    collective_efficiency: dict[str, tuple[tuple[int, float], ...]] = field(default_factory=dict)
    measurements: dict[str, Any] = field(default_factory=dict, compare=False)
    # What a rank's copy of memory to memory achieves (both directions
    # counted), as a real run moves a compute operation's bytes; inf: not measured.
    memory_bandwidth_bytes_per_s: float = math.inf
    network: str = "host"
    # What a send leaves to the transport (see the module's docstring).
    eager_bytes: int = 0
    send_buffer_bytes: int = 0
    link_burst_bytes: int = 0

    def __post_init__(self):
        if not 0 < self.flops_per_s < math.inf:
            raise ValueError(f"compute.flops_per_s must be finite and > 0, got {self.flops_per_s!r}")
        if not 0 < self.memory_bandwidth_bytes_per_s <= math.inf:
            raise ValueError(f"compute.memory_bandwidth_bytes_per_s must be > 0, "
                             f"got {self.memory_bandwidth_bytes_per_s!r}")
        if self.network not in PROFILE_NETWORKS:
            raise ValueError(f"profile.network must be one of {', '.join(PROFILE_NETWORKS)}, got {self.network!r}")
        needed = "emulated" if self.network == "emulated" else "intra_node"
        if needed not in self.link_classes:
            raise ValueError(f"link_classes must include {needed}")
        unknown = sorted(set(self.link_classes) - set(LINK_CLASSES))
        if unknown:
            raise ValueError(f"unknown link class(es) {', '.join(unknown)}; known: {', '.join(LINK_CLASSES)}")
        if not 0 <= self.reduce_s_per_byte < math.inf:
            raise ValueError(f"reduce_s_per_byte must be >= 0, got {self.reduce_s_per_byte!r}")
        check_transport_bytes(self, "transport.")
        object.__setattr__(self, "collective_efficiency",
                           {str(op): _curve(points) for op, points in self.collective_efficiency.items()})

    # -- placement and the simulated machine --------------------------------------

    def placement(self, nranks: int) -> list[int]:
        """Host index of each rank: the measured placement, or blocks of the measured ranks per host."""
        hosts = self.rank_hosts
        if len(hosts) == nranks:
            names = list(dict.fromkeys(hosts))
            return [names.index(h) for h in hosts]
        if not hosts or len(set(hosts)) == 1:
            return [0] * nranks
        per_host = max(1, math.ceil(len(hosts) / len(set(hosts))))
        return [r // per_host for r in range(nranks)]

    def topology(self, nranks: int, groups: Sequence[Sequence[int]] | None = None) -> Topology:
        """The measured machine as a topology for ``nranks`` ranks (keeping ``groups``)."""
        intra = self.link_classes["intra_node"]
        inter = self.link_classes.get("inter_node")
        host_of = self.placement(nranks)
        if len(set(host_of)) > 1 and inter is None:
            raise ValueError(f"profile {self.name!r} has no inter_node link class but places ranks on several hosts")
        group_of = {}
        for index, members in enumerate(groups or ()):
            for rank in members:
                group_of[rank] = index
        g = nx.Graph()
        for rank in range(nranks):
            attrs = {"role": "compute", "flops_per_s": self.flops_per_s}
            if math.isfinite(self.memory_bandwidth_bytes_per_s):
                attrs["memory_bandwidth_bytes_per_s"] = self.memory_bandwidth_bytes_per_s
            if rank in group_of:
                attrs["group"] = group_of[rank]
            g.add_node(f"r{rank}", **attrs)
        hosts = sorted(set(host_of))
        for host in hosts:
            g.add_node(f"host{host}", role="switch")
        for rank, host in enumerate(host_of):
            # Two hops between ranks of a host: half the latency on each.
            g.add_edge(f"r{rank}", f"host{host}", bandwidth_bytes_per_s=intra.bandwidth_bytes_per_s,
                       latency_s=intra.latency_s / 2)
        if len(hosts) > 1:
            # Traffic between hosts leaves through the host's NIC, shared by
            # its ranks, at the inter-node figures, not through the
            # intra-node links (the network may well be the faster one).
            g.add_node("network", role="switch")
            for host in hosts:
                g.add_node(f"nic{host}", role="switch")
                g.add_edge(f"nic{host}", "network", bandwidth_bytes_per_s=inter.bandwidth_bytes_per_s, latency_s=0.0)
            for rank, host in enumerate(host_of):
                g.add_edge(f"r{rank}", f"nic{host}", bandwidth_bytes_per_s=inter.bandwidth_bytes_per_s,
                           latency_s=inter.latency_s / 2)
        return Topology(g, name=f"profile:{self.name}")

    def simulated_topology(self, topology: Topology) -> Topology:
        """What a scenario on ``topology`` is simulated on with this profile: the measured machine
        (``topology``'s rank count and groups kept), or for an emulated profile ``topology`` itself
        as its emulated network behaves."""
        if self.network == "emulated":
            return self.emulated_topology(topology)
        return self.topology(topology.nranks, topology.groups())

    def emulated_topology(self, topology: Topology) -> Topology:
        """``topology`` as its emulated network behaves, by this (emulated) profile's measurements.

        Links keep their bandwidth (the engine applies the measured fraction
        of it, ``message_efficiency``); every link at a rank carries half the
        measured per-message overhead for that rank (a message between two
        ranks pays it once in all), a link between two forwarding nodes
        the store-and-forward of one frame; the links' own latencies are
        not emulated (no netem) and are dropped.  Ranks compute at the
        measured speed, on this machine's cores.
        """
        overhead_s = self.link_classes["emulated"].latency_s
        g = topology.graph.copy()
        compute = {n for n, attrs in g.nodes(data=True) if attrs.get("role") == "compute"}
        for node in compute:
            attrs = g.nodes[node]
            for key in HARDWARE_FIELDS:
                attrs.pop(key, None)
            attrs["flops_per_s"] = self.flops_per_s
            if math.isfinite(self.memory_bandwidth_bytes_per_s):
                attrs["memory_bandwidth_bytes_per_s"] = self.memory_bandwidth_bytes_per_s
        for u, v, attrs in g.edges(data=True):
            ends = (u in compute) + (v in compute)
            attrs["latency_s"] = (ends * overhead_s / 2 if ends
                                  else WIRE_FRAME_BYTES / attrs["bandwidth_bytes_per_s"])
        return Topology(g, name=topology.name, params=topology.params)

    def message_efficiency(self, nranks: int):
        """``f(src, dst, nbytes) -> factor`` for the engine, or None when every curve is flat."""
        if self.network == "emulated":
            emulated = self.link_classes["emulated"]
            return None if not emulated.efficiency else lambda src, dst, nbytes: emulated.efficiency_at(nbytes)
        if not any(c.efficiency for c in self.link_classes.values()):
            return None
        host_of = self.placement(nranks)
        intra = self.link_classes["intra_node"]
        inter = self.link_classes.get("inter_node", intra)

        def efficiency(src: int, dst: int, nbytes: int) -> float:
            link_class = intra if host_of[src] == host_of[dst] else inter
            return link_class.efficiency_at(nbytes)

        return efficiency

    def collective_factor(self, native: bool = True):
        """``f(op, nbytes) -> factor`` for the engine, or None (algorithm mode, or nothing measured)."""
        curves = self.collective_efficiency
        if not native or not curves:
            return None
        return lambda op, nbytes: curve_at(curves.get(op, ()), nbytes)

    # -- files ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "profile": {"name": self.name, "backend": self.backend,
                        **({"network": self.network} if self.network != "host" else {})},
            "compute": {"flops_per_s": self.flops_per_s, **(
                {"memory_bandwidth_bytes_per_s": self.memory_bandwidth_bytes_per_s}
                if math.isfinite(self.memory_bandwidth_bytes_per_s) else {})},
            "link_classes": {name: c.to_dict() for name, c in self.link_classes.items()},
            "reduce_s_per_byte": self.reduce_s_per_byte,
        }
        transport = {name: getattr(self, name) for name in TRANSPORT_FIELDS if getattr(self, name)}
        if transport:
            out["transport"] = transport
        if self.collective_efficiency:
            out["collective_efficiency"] = {op: [[n, e] for n, e in points]
                                            for op, points in self.collective_efficiency.items()}
        if self.rank_hosts:
            out["rank_hosts"] = list(self.rank_hosts)
        if self.measurements:
            out["measurements"] = self.measurements
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "profile") -> "MachineProfile":
        try:
            head = data.get("profile", {}) or {}
            classes = {name: LinkClass(**values) for name, values in (data.get("link_classes") or {}).items()}
            return cls(
                name=str(head.get("name", "profile")),
                backend=str(head.get("backend", "")),
                flops_per_s=float((data.get("compute") or {}).get("flops_per_s", 0.0)),
                memory_bandwidth_bytes_per_s=float((data.get("compute") or {}).get("memory_bandwidth_bytes_per_s",
                                                                                  math.inf)),
                link_classes=classes,
                rank_hosts=tuple(str(h) for h in data.get("rank_hosts", ()) or ()),
                reduce_s_per_byte=float(data.get("reduce_s_per_byte", 0.0)),
                collective_efficiency=dict(data.get("collective_efficiency", {}) or {}),
                measurements=dict(data.get("measurements", {}) or {}),
                network=str(head.get("network", "host")),
                **{name: _count((data.get("transport") or {}).get(name, 0)) for name in TRANSPORT_FIELDS},
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{where}: {exc}") from None


TRANSPORT_FIELDS = ("eager_bytes", "send_buffer_bytes", "link_burst_bytes")


def check_transport_bytes(obj, where: str = "") -> None:
    """The ``TRANSPORT_FIELDS`` of ``obj`` are integers >= 0 (a profile's and a Calibration's)."""
    for name in TRANSPORT_FIELDS:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{where}{name} must be an integer >= 0, got {value!r}")


def _count(value) -> int:
    # YAML may write a whole number as 1.1e6; anything else is left for the check to name.
    return int(value) if isinstance(value, float) and value.is_integer() else value


def load_profile(path: str | Path) -> MachineProfile:
    data = read_data_file(path, ValueError)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a profile is a mapping")
    return MachineProfile.from_dict(data, where=str(path))
