"""The emulated network: namespaces, shaped veth links and the simulator's routes, built and torn down.

The tests that build namespaces need root (or CAP_NET_ADMIN) and iproute2,
as CI has; elsewhere they skip with the reason.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import networkx as nx
import pandas as pd
import pytest

from executors import emulation
from executors.emulation import (
    EmulatedNetwork,
    EmulationError,
    cleanup_stale,
    list_namespaces,
    measure_transfer,
    plan_emulation,
    refusal,
    run_prefix,
    size_refusal,
)
from experiments import emulate
from topologies import LinkSpec, Topology, edge_cloud, fat_tree, hierarchical, ring, switch, tree


def _can_build() -> str | None:
    plan = plan_emulation(ring(2, link=LinkSpec(12.5e6)), prefix=f"{emulation.PREFIX}probe-")
    reason = refusal(plan)
    if reason:
        return reason
    probe = f"{run_prefix()}probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return None


REASON = _can_build()
needs_namespaces = pytest.mark.skipif(REASON is not None, reason=f"no emulated network here: {REASON}")


def _root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip() for line in out.splitlines()}


def _root_qdiscs() -> str:
    return subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True).stdout


# -- the plan: pure, no root needed ------------------------------------------------------------


def test_plan_gives_each_link_a_subnet_and_each_direction_its_rate():
    topo = tree(4, link=LinkSpec(12.5e6))
    plan = plan_emulation(topo, prefix="distsim-1-2-")
    assert len(plan.namespaces) == topo.graph.number_of_nodes() == 7
    assert len(plan.links) == topo.graph.number_of_edges() == 6
    addresses = [end.address for link in plan.links for end in link.ends]
    assert len(set(addresses)) == 12
    for link in plan.links:
        assert link.bits_per_s == 100e6
        for end in link.ends:
            lines = plan.tc_commands[plan.namespaces[end.node]]
            assert f"qdisc add dev {end.interface} root handle 1: htb default 20" in lines
            assert any(line.startswith(f"class add dev {end.interface} parent 1: classid 1:1 htb rate 100000000bit "
                                       "ceil 100000000bit") for line in lines)
            assert any(line.startswith(f"filter add dev {end.interface} parent 1: ") and "flowid 1:10" in line
                       for line in lines)
    # Every ordered pair of ranks has the simulator's path, from its rank's node to the other's.
    assert len(plan.paths) == 4 * 3
    for (s, d), path in plan.paths.items():
        assert path[0] == plan.rank_node[s] and path[-1] == plan.rank_node[d]
        assert len(path) == len(topo.route(s, d).links) + 1


def test_each_pair_of_ranks_has_a_class_of_its_own_where_its_route_leaves_a_node(monkeypatch):
    # A ring of 6: a link end carries the pairs whose simulator route leaves by it, each
    # to a class of its own that shares the link's rate with the others.
    topo = ring(6, link=LinkSpec(12.5e6))
    plan = plan_emulation(topo, "p-")
    expected: dict[str, set] = {}
    for (s, d), path in plan.paths.items():
        for u, v in zip(path, path[1:]):
            link = next(link for link in plan.links if {e.node for e in link.ends} == {u, v})
            end = next(e for e in link.ends if e.node == u)
            expected.setdefault(end.interface, set()).add((plan.rank_address[s], plan.rank_address[d]))
    for link in plan.links:
        for end in link.ends:
            lines = plan.tc_commands[plan.namespaces[end.node]]
            filters = [re.search(r"dev (\S+) .* match ip src (\S+)/32 match ip dst (\S+)/32 flowid 1:(\w+)", line)
                       for line in lines if "match ip src" in line]
            mine = [(f.group(2), f.group(3)) for f in filters if f.group(1) == end.interface]
            assert set(mine) == expected[end.interface] and len(mine) == len(set(mine))
            classes = [f.group(4) for f in filters if f.group(1) == end.interface]
            for classid in classes:
                assert any(line.startswith(f"class add dev {end.interface} parent 1:1 classid 1:{classid} htb rate ")
                           and "ceil 100000000bit prio 1" in line for line in lines)
    # More pairs than PAIR_CLASSES at a link end: they share its one data queue.
    monkeypatch.setattr(emulation, "PAIR_CLASSES", 2)
    crowded = plan_emulation(topo, "p-")
    for link in crowded.links:
        for end in link.ends:
            lines = crowded.tc_commands[crowded.namespaces[end.node]]
            pairs = [line for line in lines if f"dev {end.interface} " in line and "match ip src" in line]
            assert len(pairs) == (len(expected[end.interface]) if len(expected[end.interface]) <= 2 else 0)


def test_a_rank_on_several_links_can_get_a_namespace_of_its_own():
    topo = ring(4, link=LinkSpec(12.5e6))
    plain, hosted = plan_emulation(topo, "p-"), plan_emulation(topo, "p-", rank_hosts=True)
    assert len(hosted.namespaces) == len(plain.namespaces) + 4 and hosted.paths == plain.paths
    for rank in range(4):
        ns = hosted.namespaces[hosted.rank_namespace[rank]]
        assert ns == f"p-h{rank}" and hosted.rank_interface[rank] == f"h{rank}a"
        assert f"route add default via {_host_gateway(hosted, rank)} dev h{rank}a" in hosted.ip_commands[ns]
        assert hosted.tc_commands[ns] == []  # the host's own link is not shaped
    # On a tree every rank has one link: nothing changes.
    tree_plan = plan_emulation(tree(4, link=LinkSpec(12.5e6)), "p-", rank_hosts=True)
    assert tree_plan == plan_emulation(tree(4, link=LinkSpec(12.5e6)), "p-")


def _host_gateway(plan, rank):
    return next(entry.address for host, entry in plan.host_links if host.interface == f"h{rank}a")


@needs_namespaces
def test_hosted_ranks_route_every_pair_as_the_simulator_does():
    plan = plan_emulation(ring(6, link=LinkSpec(12.5e6)), rank_hosts=True)
    with EmulatedNetwork(plan) as net:
        for (s, d), path in plan.paths.items():
            assert net.route_path(s, d) == path, (s, d)
        achieved = measure_transfer(net, 0, 3, 4 << 20)
    assert 0.9 * 12.5e6 <= achieved <= 1.1 * 12.5e6, achieved
    assert list_namespaces(run_prefix()) == []


def test_too_many_nodes_too_fast_links_and_no_links_are_refused_with_their_reason():
    big = tree(64, link=LinkSpec(1.25e6))
    assert "has 127 nodes: an emulated network holds at most 64" in size_refusal(plan_emulation(big, "p-"))
    fast = switch(4, link=LinkSpec(12.5e9))  # 100 Gbit/s
    assert "runs at 100000 Mbit/s" in size_refusal(plan_emulation(fast, "p-"))
    many = switch(32, link=LinkSpec(125e6))  # 32 ranks x 1 Gbit/s
    message = size_refusal(plan_emulation(many, "p-"), cores=2)
    assert "its ranks can send 32 Gbit/s at once" in message and "2 cores" in message
    assert size_refusal(plan_emulation(switch(8, link=LinkSpec(12.5e6)), "p-"), cores=2) is None
    lonely = nx.Graph()
    lonely.add_node("r0", role="compute", flops_per_s=1e9)
    with pytest.raises(EmulationError, match="topology 'lonely' has no links"):
        plan_emulation(Topology(lonely, name="lonely"), "p-")


def test_without_root_or_tools_it_refuses_before_creating_anything(monkeypatch):
    plan = plan_emulation(ring(2), "distsim-never-")
    monkeypatch.setattr(emulation.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(emulation, "_has_net_admin", lambda: False)
    assert "needs root or CAP_NET_ADMIN" in refusal(plan)
    with pytest.raises(EmulationError, match="needs root or CAP_NET_ADMIN"):
        EmulatedNetwork(plan).build()
    monkeypatch.setattr(emulation, "_has_net_admin", lambda: True)
    monkeypatch.setattr(emulation.shutil, "which", lambda tool: None if tool == "tc" else "/usr/sbin/ip")
    assert "needs `tc`" in refusal(plan)
    assert list_namespaces("distsim-never-") == []


# -- built for real ----------------------------------------------------------------------------


@needs_namespaces
@pytest.mark.parametrize("topo", [
    tree(8, arity=2, link=LinkSpec(12.5e6)),
    fat_tree(4, link=LinkSpec(1.25e6)),
    hierarchical([2, 4], links=[LinkSpec(50e6), LinkSpec(12.5e6)]),
    ring(6, link=LinkSpec(12.5e6)),
    edge_cloud(n_devices=4, n_edge=2, lan=LinkSpec(125e6), wan=LinkSpec(12.5e6)),
], ids=lambda t: t.name)
def test_the_kernel_routes_every_pair_as_the_simulator_does(topo):
    plan = plan_emulation(topo)
    with EmulatedNetwork(plan) as net:
        for (s, d), path in plan.paths.items():
            assert net.route_path(s, d) == path, (s, d)
    assert list_namespaces(run_prefix()) == []


@needs_namespaces
def test_a_shaped_link_moves_16_mib_at_its_rate_within_10_percent():
    rate_bytes_per_s = 12.5e6  # 100 Mbit/s
    plan = plan_emulation(ring(2, link=LinkSpec(rate_bytes_per_s)))
    with EmulatedNetwork(plan) as net:
        achieved = measure_transfer(net, 0, 1, 16 << 20)
    # TCP/IP headers take 66 of every 1514 bytes on the wire: 95.6% of the rate is payload.
    assert 0.9 * rate_bytes_per_s <= achieved <= 1.1 * rate_bytes_per_s, achieved


def _class_bytes(net, rank: int) -> dict[str, int]:
    plan = net.plan
    out = subprocess.run(["tc", "-n", net.namespace_of(rank), "-s", "class", "show", "dev",
                          plan.rank_interface[rank]], capture_output=True, text=True, check=True).stdout
    # tc prints no JSON for classes: "class htb 1:10 parent 1:1 ...\n Sent 5 bytes 1 pkt ..."
    return {handle: int(sent) for handle, sent in re.findall(r"class htb (\S+) .*?\n\s*Sent (\d+) bytes", out)}


@needs_namespaces
def test_acknowledgements_skip_the_data_queue():
    plan = plan_emulation(ring(2, link=LinkSpec(12.5e6)))
    with EmulatedNetwork(plan) as net:
        measure_transfer(net, 0, 1, 2 << 20)
        sender, receiver = _class_bytes(net, 0), _class_bytes(net, 1)
    # The data left the sender through its pair's class (nothing through the class of
    # other traffic); the receiver's acknowledgements left through the small-packet
    # class, so they never wait behind data going its way.
    assert sender["1:100"] >= 2 << 20 and sender["1:20"] < 4096
    assert receiver["1:10"] > 0
    assert receiver["1:100"] < receiver["1:10"]


@needs_namespaces
def test_teardown_leaves_nothing_behind_after_an_error_and_a_killed_rank():
    links, qdiscs = _root_links(), _root_qdiscs()
    plan = plan_emulation(switch(3, link=LinkSpec(12.5e6)))
    with pytest.raises(RuntimeError, match="boom"):
        with EmulatedNetwork(plan) as net:
            rank = subprocess.Popen(net.exec_prefix(1) + [sys.executable, "-c", "import time; time.sleep(600)"])
            time.sleep(0.2)
            rank.kill()  # a rank dies...
            rank.wait()
            stuck = subprocess.Popen(net.exec_prefix(2) + [sys.executable, "-c", "import time; time.sleep(600)"])
            raise RuntimeError("boom")  # ...and the run fails with another still inside its namespace
    assert stuck.wait(timeout=10) == -signal.SIGKILL
    assert list_namespaces(run_prefix()) == []
    assert _root_links() == links and _root_qdiscs() == qdiscs


HOLDER = textwrap.dedent("""
    import sys, time
    from executors.emulation import EmulatedNetwork, plan_emulation
    from topologies import LinkSpec, ring
    with EmulatedNetwork(plan_emulation(ring(3, link=LinkSpec(12.5e6)))):
        print("built", flush=True)
        time.sleep(600)
""")


def _holder() -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert child.stdout.readline().strip() == "built"
    return child


@needs_namespaces
def test_sigterm_tears_down_and_sigkill_leaves_it_to_the_next_cleanup():
    child = _holder()
    prefix = run_prefix(child.pid)
    assert len(list_namespaces(prefix)) == 3
    child.send_signal(signal.SIGTERM)
    child.wait(timeout=30)
    assert list_namespaces(prefix) == []

    child = _holder()
    prefix = run_prefix(child.pid)
    child.kill()
    child.wait(timeout=30)
    assert len(list_namespaces(prefix)) == 3  # nobody could tear down
    removed = cleanup_stale()
    assert set(removed) >= {f"{prefix}n{i}" for i in range(3)}
    assert list_namespaces(prefix) == []


@needs_namespaces
def test_cleanup_spares_a_live_run():
    child = _holder()
    try:
        prefix = run_prefix(child.pid)
        cleanup_stale()
        assert len(list_namespaces(prefix)) == 3
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=30)
    assert list_namespaces(prefix) == []


# -- python -m experiments.emulate ---------------------------------------------------------------

SCENARIOS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "scenarios")


def test_emulate_plan_only_prints_the_links_and_refuses_what_it_cannot_shape(capsys):
    allowed = refusal(plan_emulation(tree(8, arity=2, link=LinkSpec(12.5e6)), "p-")) is None
    assert emulate.main([os.path.join(SCENARIOS, "emulated_tree8.yaml"), "--plan-only"]) == (0 if allowed else 2)
    out = capsys.readouterr().out
    assert "tree: 15 namespaces, 14 shaped links" in out and "s2_0 - s3_0" in out
    # The top links carry the 16 pairs between the halves each way; a rank's link its 7.
    assert re.search(r"s2_0 - s3_0 .* 16 / 16\n", out) and re.search(r"n0 - s1_0 .* 7 / 7\n", out)
    # 12.5 GB/s links: beyond what the shaper paces on a veth.
    assert emulate.main([os.path.join(SCENARIOS, "ring8_allreduce.yaml"), "--plan-only"]) == 2
    assert "link n0 - n1 runs at 100000 Mbit/s" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        emulate.main(["--all"])
    assert "--all goes with --cleanup" in capsys.readouterr().err


@needs_namespaces
def test_emulate_checks_routes_and_rates_and_writes_them(tmp_path, capsys):
    scenario = tmp_path / "s.yaml"
    scenario.write_text("name: two\ntopology: {builder: switch, n: 2, bandwidth_bytes_per_s: 12.5e+6}\n"
                        "workload: {kind: collective, op: allreduce, nbytes: 1000}\n")
    assert emulate.main([str(scenario), "--nbytes", "4MiB", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "routes: 2 of 2 pairs take the simulator's path" in out
    rates = pd.read_csv(tmp_path / "out" / "rates.csv")
    assert list(rates["src"]) == [0, 1] and (rates["nbytes"] == 4 << 20).all()
    assert rates["fraction"].between(0.85, 1.05).all(), rates
    assert list_namespaces(run_prefix()) == []


@needs_namespaces
def test_emulate_cleanup_removes_a_killed_runs_namespaces(capsys):
    child = _holder()
    prefix = run_prefix(child.pid)
    child.kill()
    child.wait(timeout=30)
    assert emulate.main(["--cleanup"]) == 0
    assert f"{prefix}n0" in capsys.readouterr().out
    assert list_namespaces(prefix) == []


# -- real runs on the emulated network ----------------------------------------------------------

def _real_executor(backend: str, **options):
    from executors import get_executor
    from executors.base import executor_class
    from executors.real import RealOptions

    cls = executor_class(backend)
    if not cls.is_available():
        pytest.skip(f"{backend}: {cls.unavailable_reason()}")
    return get_executor(backend, options=RealOptions(network="emulated", **options))


def _two_ranks_allreduce(nbytes: int, builder: str = "switch", n: int = 2):
    from workloads.scenario import scenario_from_dict

    return scenario_from_dict({
        "name": "emulated-pair", "seed": 0,
        "topology": {"builder": builder, "n": n, "bandwidth_bytes_per_s": 12.5e6, "latency_s": 0},
        "workload": {"kind": "collective", "op": "allreduce", "algorithm": "ring", "nbytes": nbytes}})


@needs_namespaces
@pytest.mark.parametrize("builder, n", [("switch", 2), ("ring", 3)])
@pytest.mark.parametrize("backend", ["mpi", "torch"])
def test_a_real_run_on_the_emulated_network_crosses_its_shaped_links(backend, builder, n):
    # A ring all-reduce of 4 MiB on 2 ranks sends 2 x 2 MiB each way: 0.3355 s
    # through a 100 Mbit/s link (the switch's two links in series), where
    # shared memory or loopback would take milliseconds.  On a ring of 3 (each
    # rank on two links; MPI's ranks then get a namespace of their own), 4 steps
    # of 4/3 MiB over one link each: 0.447 s.
    scenario = _two_ranks_allreduce(4 << 20, builder, n)
    predicted_s = 2 * (n - 1) * (4 << 20) / n / 12.5e6
    links = _root_links()
    result = _real_executor(backend, mode="algorithm", warmup=1, repeats=2).run(scenario)
    assert list_namespaces(run_prefix()) == [] and _root_links() == links
    times = (result.records["end_s"] - result.records["start_s"]).to_numpy()
    assert len(times) == 2 * n
    assert (times >= 0.95 * predicted_s).all() and (times <= 1.5 * predicted_s).all(), (times, predicted_s)


@needs_namespaces
@pytest.mark.parametrize("backend", ["mpi", "torch"])
def test_a_rank_that_dies_on_the_emulated_network_is_named_and_nothing_is_left(backend):
    from executors.real import RealRunError

    links, qdiscs = _root_links(), _root_qdiscs()
    with pytest.raises(RealRunError, match="rank 1"):
        _real_executor(backend, fault="exit:1:0", timeout_s=30).run(_two_ranks_allreduce(1 << 20))
    assert list_namespaces(run_prefix()) == []
    assert _root_links() == links and _root_qdiscs() == qdiscs


@needs_namespaces
def test_calibrate_on_an_emulated_switch_writes_a_transport_profile(tmp_path):
    from executors.base import executor_class
    from experiments import calibrate
    from topologies.profile import load_profile

    if not executor_class("torch").is_available():
        pytest.skip(executor_class("torch").unavailable_reason())
    out = tmp_path / "emulated.yaml"
    assert calibrate.main(["--backend", "torch", "--network", "emulated", "--nranks", "3", "--sizes", "8", "65536",
                           "1048576", "--repeats", "2", "--no-collectives", "--out", str(out)]) == 0
    profile = load_profile(out)
    assert profile.network == "emulated" and profile.rank_hosts == ()
    emulated = profile.link_classes["emulated"]
    assert emulated.bandwidth_bytes_per_s == 100e6 / 8
    # The overhead is what 8 bytes took.  The fraction of the 100 Mbit/s that 1 MiB reached: TCP/IP
    # headers take 4.4% of it, and the bucket (32 KiB) lets an idle link's first bytes through at once.
    assert 0 < emulated.latency_s < 0.01
    assert 0.85 < emulated.efficiency_at(1 << 20) < 1.1
    # gloo's send returns once its bytes are in the socket's buffer: at once for 64 KiB.
    assert profile.eager_bytes >= 65536
    incast = {row["senders"]: row for row in profile.measurements["incast"]}
    assert sorted(incast) == [1, 2]
    for row in incast.values():
        assert 0.8 < row["aggregate_fraction"] < 1.0
        assert row["predicted_s"] == pytest.approx(row["measured_s"], rel=0.1)


def test_mpi_on_an_emulated_network_uses_tcp_on_each_ranks_own_interface(monkeypatch):
    # No namespaces needed: the command mpiexec would run.
    from executors.real import mpi

    if mpi.mpiexec_path() is None or not mpi._is_hydra(mpi.mpiexec_path()):
        pytest.skip("no MPICH mpiexec (Hydra) on PATH: pip install mpich")

    class Network:
        def __init__(self, plan):
            self.plan = plan

        def exec_prefix(self, rank):
            return ["ip", "netns", "exec", self.plan.namespaces[self.plan.rank_namespace[rank]]]

    plan = plan_emulation(ring(4, link=LinkSpec(12.5e6)), "p-", rank_hosts=True)
    for cores, throttled in ((8, False), (2, True)):
        monkeypatch.setattr(mpi.os, "cpu_count", lambda: cores)
        cmd = mpi.MPIExecutor.emulated_launch_command(4, ["executors.real.worker"], Network(plan), "/tmp")
        pairs = {(cmd[i + 1], cmd[i + 2]) for i, word in enumerate(cmd) if word == "-genv"}
        # TCP only, no shared memory, and no rendezvous by TCP put (it stalled transfers for seconds).
        assert {("MPIR_CVAR_NOLOCAL", "1"), ("UCX_TLS", "tcp"), ("UCX_TCP_PUT_ENABLE", "n")} <= pairs
        assert (("MPIR_CVAR_CH4_PROGRESS_THROTTLE", "1") in pairs) == throttled
        devices = [cmd[i + 2] for i, word in enumerate(cmd) if word == "-env" and cmd[i + 1] == "UCX_NET_DEVICES"]
        assert devices == [f"h{rank}a" for rank in range(4)]
        assert cmd.count(":") == 3
