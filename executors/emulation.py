"""An emulated network: the scenario's topology built on this machine from namespaces and shaped links.

Every node of the topology (compute rank or switch) becomes a network
namespace, every link a veth pair between its two nodes' namespaces, each
end's egress shaped (``tc`` htb, see ``shaping_commands``) to the link's bandwidth, so
each direction of a full-duplex link has the rate of its own.  Every
namespace forwards.  Routes are installed hop by hop so that a packet from
rank s to rank d crosses exactly the links of ``topology.route(s, d)``: a
rank's own traffic through its main table, traffic it forwards for a source s
through a table of s's own (a policy rule ``from <s's address>``), because
the simulator's equal-cost choices depend on the source as well as the
destination.  Real TCP from real MPI or gloo ranks, started inside their
namespaces (``EmulatedNetwork.exec_prefix``), then meets the bottlenecks and
multi-hop paths that the simulator modelled.  A backend that binds a rank to
one interface (MPI over UCX) plans with ``rank_hosts``: a rank on several
links then runs in a namespace of its own behind its node.

Propagation latency is not emulated: that needs netem, which this kernel may
lack (``netem_available``); what the links add besides the rate is measured
(calibration), not modelled here.

Safety.  Everything is created inside namespaces named
``distsim-<pid>-<start ticks>-n<node>`` (the creating process and its start
time in clock ticks since boot), so a run never touches an interface it did
not create, deleting its namespaces removes all its veths and qdiscs, and
namespaces whose creator no longer exists can be told apart from a live
run's: ``cleanup_stale()`` removes them (every build starts with it, and
``python -m experiments.emulate --cleanup`` runs it).  ``EmulatedNetwork`` is
a context manager that tears down on exit, on error, on Ctrl-C and, while it
is built, on SIGTERM; SIGKILL leaves the namespaces to the next cleanup.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from topologies import Topology
from topologies.text import format_count

PREFIX = "distsim-"
NETNS_DIR = Path("/run/netns")
MAX_NAMESPACES = 64
# A shaped byte costs CPU in the sending rank, in every namespace that
# forwards it and in the receiver; beyond about this much per core the
# machine, not the shaped link, sets the rate.  Measured on the 2-core
# development machine: one unshaped TCP flow moves 16 Gbit/s between two
# namespaces, but 8 gloo ranks all-reducing over 1 Gbit/s links reached 53%
# of it (4.2 Gbit/s in all, on 2 cores).
MAX_BITS_PER_S_PER_CORE = 2e9
# A link faster than the shaper can pace on a veth is not a shaped link any more.
MAX_LINK_BITS_PER_S = 10e9
MIN_LINK_BITS_PER_S = 1e5
# A token bucket lets a full bucket through at once, so a message on an idle link gains
# bucket / rate: with the kernel's 64 KiB segments (GSO) and a 64 KiB bucket,
# 1.8 times the rate at 128 KiB, 1.02 at 1 MiB (measured, 100 Mbit/s), where
# back-to-back messages get 0.96.  Segments of at most 16 KiB and a bucket of
# 32 KiB (or 0.25 ms at the link's rate) keep that gain small and still move
# 1 Gbit/s in one flow on the 2-core machine (0.957 of the rate at 16 MiB;
# 4 KiB segments got 0.54 there).
GSO_MAX_BYTES = 16 * 1024
MIN_BURST_BYTES = 32 * 1024
BURST_S = 0.25e-3
# Each data queue (one per pair of ranks: PAIR_CLASSES) holds 50 ms at the
# link's rate, so a link end with k pairs sending holds up to k x 50 ms: flows
# that meet at a link lose few packets (with 5 ms in one FIFO, a 1 MiB
# alltoall over a ring of 8 took 0.60 s instead of 0.18; a lower rto_min on
# the routes did not help).  Such a queue cost the other direction's flows
# 15-23% while their acknowledgements waited in it; they now go first
# (shaping_commands).
QUEUE_S = 0.05
# Each pair of ranks whose route crosses a link end has a class of its own there,
# up to this many per link end (beyond, they share one FIFO): htb shares the
# link's rate equally among the classes that have data, as the simulator shares
# a link among its flows.  With one FIFO, a 16 MiB pairwise alltoall over a ring
# of 8 (up to 4 flows per link, each step waiting for its slowest) took 30%
# longer than predicted with MPI.
PAIR_CLASSES = 256
PAIR_CLASS_BASE = 0x100
COMMAND_TIMEOUT_S = 60.0
LINK_BASE = (10 << 24) | (128 << 16)  # 10.128.0.0/9: one /30 per link
HOST_LINK_BASE = (10 << 24) | (64 << 16)  # 10.64.0.0/16: one /30 per hosted rank


class EmulationError(RuntimeError):
    """The emulated network cannot be built here, or failed while being built or torn down."""


def _ip(value: int) -> str:
    return ".".join(str((value >> shift) & 255) for shift in (24, 16, 8, 0))


@dataclass(frozen=True)
class LinkEnd:
    node: int        # node index (topology graph order)
    interface: str   # its name inside the node's namespace
    address: str     # its IPv4 address (/30)


@dataclass(frozen=True)
class EmulatedLink:
    edge: int
    ends: tuple[LinkEnd, LinkEnd]
    bits_per_s: float  # shaped rate, each direction


@dataclass(frozen=True)
class EmulationPlan:
    """What ``EmulatedNetwork`` builds for a topology, computed without touching the machine."""

    topology_name: str
    node_names: tuple[str, ...]           # the topology's nodes, in graph order
    namespaces: tuple[str, ...]           # one per node
    links: tuple[EmulatedLink, ...]
    rank_node: tuple[int, ...]            # rank -> node index
    rank_address: tuple[str, ...]         # rank -> the address its traffic comes from and goes to
    rank_interface: tuple[str, ...]       # rank -> the interface that holds that address
    # namespace -> its `ip -batch` lines: addresses, links up, routes and rules
    ip_commands: dict[str, list[str]]
    tc_commands: dict[str, list[str]]
    # (src rank, dst rank) -> the node indices the simulator's route visits
    paths: dict[tuple[int, int], tuple[int, ...]]
    # rank -> the namespace its processes run in: its node's, or a host namespace of
    # its own behind the node (``rank_hosts``); then the node's interface toward it
    rank_namespace: tuple[int, ...]
    rank_entry: tuple[str | None, ...]
    host_links: tuple[tuple[LinkEnd, LinkEnd], ...]  # (host end, node end), unshaped
    # (node, neighbour) -> the (source, destination) rank addresses whose route leaves node there
    link_pairs: dict[tuple[int, int], tuple[tuple[str, str], ...]]

    @property
    def nranks(self) -> int:
        return len(self.rank_node)

    def describe(self) -> str:
        return (f"{self.topology_name}: {format_count(len(self.namespaces))} namespaces, "
                f"{format_count(len(self.links))} shaped links")


def _start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime); the command name (field 2) may hold spaces, so count after its ')'.
    return int(stat.rsplit(")", 1)[1].split()[19])


def run_prefix(pid: int | None = None) -> str:
    """The namespace name prefix of the run of process ``pid`` (this one by default)."""
    pid = os.getpid() if pid is None else pid
    return f"{PREFIX}{pid}-{_start_ticks(pid)}-"


def shaping_commands(interface: str, bits_per_s: float, burst_bytes: int, limit_bytes: int,
                     pairs: tuple[tuple[str, str], ...] = ()) -> list[str]:
    """The ``tc -batch`` lines that shape one link end's egress to ``bits_per_s``.

    One htb class holds the link's rate; inside it, small TCP packets (pure
    acknowledgements, under 128 bytes) go first, and the data of each
    (source, destination) address pair in ``pairs`` queues in a FIFO of
    ``limit_bytes`` of its own, the pairs sharing the rate equally (htb
    classes of one priority and quantum); other traffic has one more such
    class.  With a single FIFO (tbf), the acknowledgements of a flow in one
    direction wait behind the other direction's data, up to a whole queue's
    time, and flows that cross a link in both directions lost 15-23% of their
    rate (measured: benchmarks/emulated_accuracy.py, a ring allgather across
    a tree's uplinks); a switch port's real queue is as short as that wait is
    not.  With one data FIFO for all pairs, TCP flows that meet share it
    unevenly (the one that started first keeps more), where the simulator
    shares a link max-min fairly: see PAIR_CLASSES.
    """
    rate = int(bits_per_s)
    ack_rate = max(rate // 20, 8000)
    data_rate = max((rate - ack_rate) // (len(pairs) + 1), 8000)
    head = f"dev {interface} parent 1"
    shape = f"burst {burst_bytes} cburst {burst_bytes}"
    data = f"ceil {rate}bit prio 1 {shape} quantum {GSO_MAX_BYTES}"
    lines = [f"qdisc add dev {interface} root handle 1: htb default 20",
             f"class add {head}: classid 1:1 htb rate {rate}bit ceil {rate}bit {shape}",
             f"class add {head}:1 classid 1:10 htb rate {ack_rate}bit ceil {rate}bit prio 0 {shape} quantum 1514",
             f"class add {head}:1 classid 1:20 htb rate {data_rate}bit {data}",
             f"qdisc add {head}:10 pfifo limit 1000",
             f"qdisc add {head}:20 bfifo limit {limit_bytes}",
             # IPv4, TCP, total length below 128: an acknowledgement (with SACK blocks) or a tiny message.
             f"filter add {head}: protocol ip prio 1 u32 match ip protocol 6 0xff "
             "match u16 0x0000 0xff80 at 2 flowid 1:10"]
    for i, (src, dst) in enumerate(pairs):
        minor = f"{PAIR_CLASS_BASE + i:x}"  # htb class ids are hexadecimal
        lines += [f"class add {head}:1 classid 1:{minor} htb rate {data_rate}bit {data}",
                  f"qdisc add {head}:{minor} bfifo limit {limit_bytes}",
                  f"filter add {head}: protocol ip prio 2 u32 match ip src {src}/32 match ip dst {dst}/32 "
                  f"flowid 1:{minor}"]
    return lines


def plan_emulation(topology: Topology, prefix: str | None = None, rank_hosts: bool = False) -> EmulationPlan:
    """The namespaces, links, addresses, shaping and routes that emulate ``topology``.

    ``rank_hosts``: a rank whose node has several links runs in a namespace of
    its own, joined to its node by one unshaped veth, so that it has a single
    interface (UCX binds a rank to one); its node forwards its traffic along
    the same routes.
    """
    if not isinstance(topology, Topology):
        raise TypeError(f"topology must be a Topology, got {type(topology).__name__}")
    prefix = run_prefix() if prefix is None else prefix
    g = topology.graph
    if g.number_of_edges() == 0:
        raise EmulationError(f"topology {topology.name!r} has no links: there is no network to emulate")
    nodes = list(g.nodes)
    index = {node: i for i, node in enumerate(nodes)}
    node_namespaces = tuple(f"{prefix}n{i}" for i in range(len(nodes)))
    links, end_of, first_end = _plan_links(g, index)
    rank_node = tuple(index[node] for node in topology.ranks)
    hosts = _plan_rank_hosts(rank_node, links, first_end, node_namespaces, prefix, rank_hosts)
    namespaces = hosts.namespaces
    rank_address = tuple(e.address for e in hosts.rank_end)

    ip_commands = _address_commands(namespaces, links, hosts.links)
    routes = _plan_routes(topology, index, end_of, rank_node, rank_address, {rank for rank, _, _ in hosts.links})
    for node, lines in routes.own.items():
        ip_commands[namespaces[node]] += lines
    tc_commands = _shaping_plan(namespaces, links, routes.pairs_out)
    for node, by_source in routes.transit.items():
        for s, lines in by_source.items():
            ip_commands[namespaces[node]] += lines + [f"rule add from {rank_address[s]}/32 table {100 + s} pref 100"]

    return EmulationPlan(
        topology_name=topology.name, node_names=tuple(str(n) for n in nodes), namespaces=namespaces,
        links=tuple(links), rank_node=rank_node, rank_address=rank_address,
        rank_interface=tuple(e.interface for e in hosts.rank_end), ip_commands=ip_commands,
        tc_commands=tc_commands, paths=routes.paths, rank_namespace=tuple(hosts.rank_namespace),
        rank_entry=tuple(hosts.rank_entry), host_links=tuple((host, entry) for _, host, entry in hosts.links),
        link_pairs={hop: tuple(pairs) for hop, pairs in routes.pairs_out.items()})


def _plan_links(g, index: dict) -> tuple[list[EmulatedLink], dict[tuple[int, int], LinkEnd], dict[int, LinkEnd]]:
    """(a veth pair per edge, (node, neighbour) -> the node's end of their link, node -> its first end)."""
    links = []
    end_of: dict[tuple[int, int], LinkEnd] = {}
    first_end: dict[int, LinkEnd] = {}
    for edge, (u, v, attrs) in enumerate(g.edges(data=True)):
        base = LINK_BASE + 4 * edge
        a = LinkEnd(index[u], f"e{edge}a", _ip(base + 1))
        b = LinkEnd(index[v], f"e{edge}b", _ip(base + 2))
        links.append(EmulatedLink(edge, (a, b), 8.0 * float(attrs["bandwidth_bytes_per_s"])))
        end_of[(a.node, b.node)] = a
        end_of[(b.node, a.node)] = b
        first_end.setdefault(a.node, a)
        first_end.setdefault(b.node, b)
    return links, end_of, first_end


@dataclass
class _RankHosts:
    """Where each rank runs: its node's namespace, or (``rank_hosts``) a host namespace of its own behind it."""

    namespaces: tuple[str, ...]        # the nodes' and then the hosts'
    rank_end: list[LinkEnd]            # rank -> the link end that holds its address
    rank_namespace: list[int]
    rank_entry: list[str | None]       # rank -> its node's interface toward its host namespace
    links: list[tuple[int, LinkEnd, LinkEnd]]  # (rank, host end, node end): unshaped


def _plan_rank_hosts(rank_node: tuple[int, ...], links: list[EmulatedLink], first_end: dict[int, LinkEnd],
                     namespaces: tuple[str, ...], prefix: str, rank_hosts: bool) -> _RankHosts:
    hosts = _RankHosts(namespaces, [first_end[n] for n in rank_node], list(rank_node), [None] * len(rank_node), [])
    if not rank_hosts:
        return hosts
    degree: dict[int, int] = {}
    for link in links:
        for end in link.ends:
            degree[end.node] = degree.get(end.node, 0) + 1
    for rank, node in enumerate(rank_node):
        if degree.get(node, 0) > 1:
            base = HOST_LINK_BASE + 4 * rank
            host = LinkEnd(len(hosts.namespaces), f"h{rank}a", _ip(base + 1))
            entry = LinkEnd(node, f"h{rank}b", _ip(base + 2))
            hosts.namespaces += (f"{prefix}h{rank}",)
            hosts.links.append((rank, host, entry))
            hosts.rank_end[rank], hosts.rank_namespace[rank], hosts.rank_entry[rank] = host, host.node, entry.interface
    return hosts


def _address_commands(namespaces: tuple[str, ...], links: list[EmulatedLink],
                      host_links: list[tuple[int, LinkEnd, LinkEnd]]) -> dict[str, list[str]]:
    """Each namespace's first ``ip -batch`` lines: loopback, and every link end addressed and up."""
    ip_commands: dict[str, list[str]] = {ns: ["link set lo up"] for ns in namespaces}
    for _, host, entry in host_links:
        ip_commands[namespaces[host.node]] += [f"addr add {host.address}/30 dev {host.interface}",
                                               f"link set {host.interface} up",
                                               f"route add default via {entry.address} dev {host.interface}"]
        ip_commands[namespaces[entry.node]] += [f"addr add {entry.address}/30 dev {entry.interface}",
                                                f"link set {entry.interface} up"]
    for link in links:
        for end in link.ends:
            ip_commands[namespaces[end.node]] += [f"addr add {end.address}/30 dev {end.interface}",
                                                  f"link set dev {end.interface} gso_max_size {GSO_MAX_BYTES}",
                                                  f"link set {end.interface} up"]
    return ip_commands


@dataclass
class _Routes:
    paths: dict[tuple[int, int], tuple[int, ...]]  # (src rank, dst rank) -> the nodes the route visits
    pairs_out: dict[tuple[int, int], list[tuple[str, str]]]  # (node, neighbour) -> pairs that leave there
    own: dict[int, list[str]]  # node -> routes of its own rank's traffic (main table)
    transit: dict[int, dict[int, list[str]]]  # node -> source rank -> routes of traffic it forwards


def _plan_routes(topology: Topology, index: dict, end_of: dict[tuple[int, int], LinkEnd],
                 rank_node: tuple[int, ...], rank_address: tuple[str, ...], hosted: set[int]) -> _Routes:
    """Every pair's route, hop by hop, as the simulator takes it."""
    routes = _Routes({}, {}, {}, {})
    for s in range(topology.nranks):
        for d in range(topology.nranks):
            if s == d:
                continue
            route = topology.route(s, d)
            hops = [(index[topology.links[link][0]], index[topology.links[link][1]]) for link in route.links]
            routes.paths[(s, d)] = (hops[0][0],) + tuple(v for _, v in hops) if hops else (rank_node[s],)
            for position, (u, v) in enumerate(hops):
                out = end_of[(u, v)]
                routes.pairs_out.setdefault((u, v), []).append((rank_address[s], rank_address[d]))
                via = end_of[(v, u)].address
                if position == 0:
                    # A hosted rank's packets reach its node already carrying their source.
                    src = "" if s in hosted else f" src {rank_address[s]}"
                    routes.own.setdefault(u, []).append(
                        f"route add {rank_address[d]}/32 via {via} dev {out.interface}{src}")
                else:
                    routes.transit.setdefault(u, {}).setdefault(s, []).append(
                        f"route add {rank_address[d]}/32 via {via} dev {out.interface} table {100 + s}")
    return routes


def _shaping_plan(namespaces: tuple[str, ...], links: list[EmulatedLink],
                  pairs_out: dict[tuple[int, int], list[tuple[str, str]]]) -> dict[str, list[str]]:
    """Each namespace's ``tc -batch`` lines: every link end shaped, a class per rank pair crossing it."""
    tc_commands: dict[str, list[str]] = {ns: [] for ns in namespaces}
    for link in links:
        burst = max(MIN_BURST_BYTES, int(link.bits_per_s / 8 * BURST_S))
        limit = max(2 * burst, int(link.bits_per_s / 8 * QUEUE_S))
        for end, other in (link.ends, link.ends[::-1]):
            pairs = tuple(pairs_out.get((end.node, other.node), ()))
            tc_commands[namespaces[end.node]] += shaping_commands(
                end.interface, link.bits_per_s, burst, limit, pairs if len(pairs) <= PAIR_CLASSES else ())
    return tc_commands


def refusal(plan: EmulationPlan, cores: int | None = None) -> str | None:
    """Why ``plan`` cannot be emulated on this machine, or None: checked before anything is created."""
    if os.geteuid() != 0 and not _has_net_admin():
        return "an emulated network needs root or CAP_NET_ADMIN (to create namespaces and shape links); run as root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"an emulated network needs `{tool}` (Debian: apt install iproute2), not found on PATH"
    return size_refusal(plan, cores)


def size_refusal(plan: EmulationPlan, cores: int | None = None) -> str | None:
    """Why ``plan`` is too large or too fast for this machine to emulate faithfully, or None."""
    where = f"topology {plan.topology_name!r}"
    if len(plan.namespaces) > MAX_NAMESPACES:
        return (f"{where} has {len(plan.namespaces)} nodes: an emulated network holds at most {MAX_NAMESPACES} "
                "(one namespace per node, and the ranks' processes on this machine's cores)")
    for link in plan.links:
        a, b = (plan.node_names[e.node] for e in link.ends)
        if not MIN_LINK_BITS_PER_S <= link.bits_per_s <= MAX_LINK_BITS_PER_S:
            return (f"{where}: link {a} - {b} runs at {link.bits_per_s / 1e6:g} Mbit/s; htb shapes a veth "
                    f"faithfully between {MIN_LINK_BITS_PER_S / 1e6:g} and {MAX_LINK_BITS_PER_S / 1e6:g} Mbit/s")
    cores = (os.cpu_count() or 1) if cores is None else cores
    # What the ranks can inject at once: each rank's links at full rate.
    rank_nodes = set(plan.rank_node)
    inject = sum(link.bits_per_s for link in plan.links for end in link.ends if end.node in rank_nodes)
    budget = cores * MAX_BITS_PER_S_PER_CORE
    if inject > budget:
        return (f"{where}: its ranks can send {inject / 1e9:.3g} Gbit/s at once, more than this machine's "
                f"{cores} cores move through namespaces ({budget / 1e9:.3g} Gbit/s, "
                f"{MAX_BITS_PER_S_PER_CORE / 1e9:g} per core); scale the link rates down")
    return None


def _has_net_admin() -> bool:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) & (1 << 12))  # CAP_NET_ADMIN
    except OSError:
        pass
    return False


def netem_available() -> bool:
    """Whether this kernel can add delay to a link (the sch_netem module)."""
    release = os.uname().release
    for path in (Path(f"/lib/modules/{release}/kernel/net/sched"), Path(f"/usr/lib/modules/{release}/kernel/net/sched")):
        if any(path.glob("sch_netem.ko*")):
            return True
    try:
        return "sch_netem" in Path("/proc/modules").read_text()
    except OSError:
        return False


def _run(args: list[str], stdin: str | None = None, what: str = "") -> str:
    try:
        done = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise EmulationError(f"{what or ' '.join(args)}: no answer in {COMMAND_TIMEOUT_S:g} s") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise EmulationError(f"{what or ' '.join(args)} failed: {detail[-1] if detail else f'exit code {done.returncode}'}")
    return done.stdout


def list_namespaces(prefix: str = PREFIX) -> list[str]:
    """Namespaces whose name starts with ``prefix`` (all distsim ones by default)."""
    try:
        names = [p.name for p in NETNS_DIR.iterdir()]
    except OSError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def _owner_alive(name: str) -> bool:
    parts = name[len(PREFIX):].split("-")
    try:
        pid, ticks = int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return False  # not a name we write: stale by definition of our prefix
    return _start_ticks(pid) == ticks


def delete_namespace(name: str) -> None:
    """Kill what still runs in namespace ``name`` (it is ours), then delete it and all it holds."""
    pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_S).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=COMMAND_TIMEOUT_S)


def cleanup_stale(everything: bool = False) -> list[str]:
    """Delete distsim namespaces whose creating process is gone (all of them with ``everything``)."""
    removed = []
    for name in list_namespaces():
        if everything or not _owner_alive(name):
            delete_namespace(name)
            removed.append(name)
    return removed


class EmulatedNetwork:
    """The emulated network of a ``plan``, built on entry and torn down on exit, error, Ctrl-C or SIGTERM.

        with EmulatedNetwork(plan_emulation(topology)) as net:
            subprocess.run(net.exec_prefix(rank) + ["python", ...])
    """

    def __init__(self, plan: EmulationPlan):
        self.plan = plan
        self._end_of_address = {end.address: end for link in plan.links for end in link.ends}
        self._built = False
        self._old_sigterm = None

    def __enter__(self) -> "EmulatedNetwork":
        self.build()
        return self

    def __exit__(self, *exc) -> None:
        self.teardown()

    def exec_prefix(self, rank: int) -> list[str]:
        """The command prefix that runs a program inside ``rank``'s namespace."""
        return ["ip", "netns", "exec", self.namespace_of(rank)]

    def namespace_of(self, rank: int) -> str:
        return self.plan.namespaces[self.plan.rank_namespace[rank]]

    def build(self) -> None:
        reason = refusal(self.plan)
        if reason:
            raise EmulationError(reason)
        cleanup_stale()
        plan = self.plan
        self._old_sigterm = signal.getsignal(signal.SIGTERM)
        if self._old_sigterm is not None and _main_thread():
            signal.signal(signal.SIGTERM, _terminate)
        self._built = True  # from here on, whatever exists is torn down
        try:
            _run(["ip", "-batch", "-"], "".join(f"netns add {ns}\n" for ns in plan.namespaces), "creating namespaces")
            for ns in plan.namespaces:
                # Every namespace forwards; reverse-path filtering would drop a
                # route's packets that arrive on another link than the reply leaves by.
                # A connection idle for a while keeps its window (no slow start
                # again), as clusters tune it: a collective's peers of distance 4
                # idle between broadcasts (measured: a 1 MiB binomial broadcast
                # over a ring of 8 took 0.48 s with it, 0.26 s is the link's time).
                _run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1",
                      "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
                      "net.ipv4.tcp_slow_start_after_idle=0"],
                     what=f"setting up {ns}")
            lines = []
            for a, b in [link.ends for link in plan.links] + list(plan.host_links):
                lines.append(f"link add {a.interface} netns {plan.namespaces[a.node]} type veth "
                             f"peer name {b.interface} netns {plan.namespaces[b.node]}\n")
            _run(["ip", "-batch", "-"], "".join(lines), "creating links")
            for ns in plan.namespaces:
                _run(["ip", "-n", ns, "-batch", "-"], "\n".join(plan.ip_commands[ns]) + "\n",
                     f"addresses and routes in {ns}")
                if plan.tc_commands[ns]:
                    _run(["tc", "-n", ns, "-batch", "-"], "\n".join(plan.tc_commands[ns]) + "\n",
                         f"shaping the links of {ns}")
        except BaseException:
            self.teardown()
            raise

    def teardown(self) -> None:
        if not self._built:
            return
        for ns in self.plan.namespaces:
            if (NETNS_DIR / ns).exists():
                delete_namespace(ns)
        self._built = False
        if self._old_sigterm is not None and _main_thread():
            signal.signal(signal.SIGTERM, self._old_sigterm)
        self._old_sigterm = None

    def route_path(self, src: int, dst: int) -> tuple[int, ...]:
        """The node indices a packet from rank ``src`` to rank ``dst`` visits, asked of the kernel hop by hop."""
        plan = self.plan
        end_of_address = self._end_of_address
        src_ip, dst_ip = plan.rank_address[src], plan.rank_address[dst]
        node, path = plan.rank_node[src], [plan.rank_node[src]]
        iif = plan.rank_entry[src]  # a hosted rank's packets come in there (None: the rank is on its node)
        while node != plan.rank_node[dst]:
            if len(path) > len(plan.namespaces):
                raise EmulationError(f"route from rank {src} to rank {dst} loops: {path}")
            query = ["ip", "-n", plan.namespaces[node], "-o", "route", "get", dst_ip, "from", src_ip]
            if iif is not None:
                query += ["iif", iif]
            words = _run(query, what=f"asking {plan.namespaces[node]} for its route to rank {dst}").split()
            if "via" not in words:
                raise EmulationError(f"{plan.namespaces[node]} has no next hop for rank {dst} from rank {src}")
            end = end_of_address[words[words.index("via") + 1]]
            node, iif = end.node, end.interface
            path.append(node)
        return tuple(path)


_SENDER = """
import socket, sys, time
host, port, nbytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
deadline = time.monotonic() + 30
while True:
    try:
        s = socket.create_connection((host, port), timeout=30)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.02)
s.sendall(bytes(nbytes))
s.close()
"""
_RECEIVER = """
import socket, sys, time
host, port, nbytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((host, port))
srv.listen(1)
srv.settimeout(60)
conn, _ = srv.accept()
conn.settimeout(60)
got, start = 0, None
while got < nbytes:
    chunk = conn.recv(1 << 20)
    if not chunk:
        break
    # From the first byte: the connection's set-up is not the link's rate.
    start = start or time.perf_counter()
    got += len(chunk)
print(got, time.perf_counter() - start)
"""
TRANSFER_PORT = 5599


def measure_transfer(net: "EmulatedNetwork", src: int, dst: int, nbytes: int,
                     python: str = sys.executable, timeout_s: float = 300.0) -> float:
    """Bytes per second one TCP connection moves from rank ``src`` to rank ``dst`` (first byte to last)."""
    plan = net.plan
    host = plan.rank_address[dst]
    args = [host, str(TRANSFER_PORT), str(nbytes)]
    receiver = subprocess.Popen(net.exec_prefix(dst) + [python, "-c", _RECEIVER] + args,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        sender = subprocess.run(net.exec_prefix(src) + [python, "-c", _SENDER] + args,
                                capture_output=True, text=True, timeout=timeout_s)
        out, err = receiver.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise EmulationError(f"a transfer from rank {src} to rank {dst} did not end in {timeout_s:g} s") from None
    finally:
        receiver.kill()
        receiver.wait()
    if sender.returncode != 0 or receiver.returncode != 0:
        detail = (sender.stderr or err).strip().splitlines()
        raise EmulationError(f"a transfer from rank {src} to rank {dst} failed: {detail[-1] if detail else ''}")
    got, seconds = out.split()
    if int(got) != nbytes:
        raise EmulationError(f"a transfer from rank {src} to rank {dst} moved {got} of {nbytes} bytes")
    return nbytes / float(seconds)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _terminate(signum, frame):
    # SIGTERM unwinds like Ctrl-C, so every `with EmulatedNetwork` and `finally` runs.
    raise KeyboardInterrupt(f"signal {signum}")
