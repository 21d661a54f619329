"""Irregular traffic: random flows on an oversubscribed tree, and concurrent jobs on a fat tree, distsim
against SimGrid, in one run.

No fast path recognises this traffic: every message is a flow of the flow
network, and every start and end re-solves max-min sharing.  Two kinds of
case, all from one seed:

- ``HOSTS:FLOWS`` (random flows on a tree): ``hosts`` hosts in racks of 16,
  host links of 1.25 GB/s (10 Gbit/s), each rack's uplink carrying a quarter
  of its hosts' bandwidth (4:1 oversubscribed), no latency; ``flows`` flows
  between random hosts (never a host to itself), 64 KiB to 64 MiB
  (log-uniform), starting at random within 50 ms.
- ``jobs:K:JOBS`` (concurrent jobs on a fat tree): a k-ary fat tree (k^3/4
  hosts, 12.5 GB/s links, no latency, ECMP routes) split at random among
  ``JOBS`` jobs of equal size, placed scattered as on a fragmented cluster;
  each job runs 4 rounds of a shift exchange (in round r every member sends
  to the member r + 1 places after it), its message size (1-16 MiB), start
  (within 20 ms) and period between rounds (1-5 ms) its own.

SimGrid gets the same links and, for every pair, distsim's route, so the two
share every flow's path.

Prints per case: flows, distsim's wall time to simulate (``Simulator(...)
.run()``: building the topology and the programs excluded, finding routes
included), its events, SimGrid's wall time to simulate (``Engine.run()``:
loading its platform, routes given, excluded; the SimGrid binding of the
system Python, Debian's ``python3-simgrid``: skipped, with the reason, where
it is absent), the ratio, and the largest per-flow difference of finish
times (relative).  The first case of a run also pays for loading the
compiled solver (compiling it, once per machine, on the very first run).

    python benchmarks/flow_speed.py        # 256:1024 1024:4096 4096:4096 jobs:16:8
    python benchmarks/flow_speed.py --cases 1024:4096
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from simcore.engine import Simulator
from topologies import LinkSpec, NodeSpec, fat_tree, hierarchical
from workloads.ops import Compute, Irecv, Isend, Wait

HOSTS_PER_RACK = 16
HOST_BANDWIDTH_BYTES_PER_S = 1.25e9  # 10 Gbit/s NICs
OVERSUBSCRIPTION = 4
START_WITHIN_S = 0.05
SIMGRID_PYTHON = "/usr/bin/python3"
PEER = Path(__file__).with_name("simgrid_flows.py")
DEFAULT_CASES = ("256:1024", "1024:4096", "4096:4096", "jobs:16:8")
FAT_TREE_BANDWIDTH_BYTES_PER_S = 12.5e9  # 100 Gbit/s
JOB_ROUNDS = 4


def tree_case(hosts: int, nflows: int, seed: int = 19):
    """(topology, flows: [source, destination, bytes, start s] each) of random flows on the tree."""
    if hosts % HOSTS_PER_RACK:
        raise ValueError(f"hosts must be a multiple of {HOSTS_PER_RACK}, got {hosts}")
    rng = np.random.default_rng(seed)
    flows = []
    for _ in range(nflows):
        src, dst = (int(h) for h in rng.choice(hosts, size=2, replace=False))
        nbytes = int(2 ** rng.uniform(16, 26))
        flows.append([src, dst, nbytes, float(rng.uniform(0.0, START_WITHIN_S))])
    topology = hierarchical([hosts // HOSTS_PER_RACK, HOSTS_PER_RACK], node=NodeSpec(flops_per_s=1.0),
                            links=[LinkSpec(HOST_BANDWIDTH_BYTES_PER_S, latency_s=0.0),
                                   LinkSpec(HOST_BANDWIDTH_BYTES_PER_S * HOSTS_PER_RACK / OVERSUBSCRIPTION,
                                            latency_s=0.0)])
    return topology, flows


def jobs_case(k: int, jobs: int, seed: int = 19):
    """(topology, flows) of ``jobs`` concurrent jobs on a k-ary fat tree (see the module's docstring)."""
    hosts = k ** 3 // 4
    if jobs < 1 or hosts % jobs or hosts // jobs < 2:
        raise ValueError(f"jobs must divide the fat tree's {hosts} hosts into jobs of 2 or more, got {jobs}")
    rng = np.random.default_rng(seed)
    placement = rng.permutation(hosts).reshape(jobs, hosts // jobs)
    flows = []
    for members in placement:
        nbytes = int(2 ** rng.uniform(20, 24))
        start_s = float(rng.uniform(0.0, 0.02))
        period_s = float(rng.uniform(0.001, 0.005))
        n = len(members)
        for r in range(JOB_ROUNDS):
            for i, src in enumerate(members):
                flows.append([int(src), int(members[(i + r + 1) % n]), nbytes, start_s + r * period_s])
    topology = fat_tree(k, node=NodeSpec(flops_per_s=1.0), link=LinkSpec(FAT_TREE_BANDWIDTH_BYTES_PER_S, latency_s=0.0))
    return topology, flows


def make_case(text: str, seed: int = 19):
    """(topology, flows) of a case named as on the command line."""
    parts = text.split(":")
    try:
        if parts[0] == "jobs" and len(parts) == 3:
            return jobs_case(int(parts[1]), int(parts[2]), seed)
        if len(parts) == 2:
            return tree_case(int(parts[0]), int(parts[1]), seed)
    except ValueError as e:
        raise SystemExit(f"case {text!r}: {e}")
    raise SystemExit(f"case {text!r}: expected HOSTS:FLOWS or jobs:K:JOBS")


def peer_input(topology, flows) -> dict:
    """The case as plain data for the SimGrid peer: links, flows and each used pair's route."""
    pairs = dict.fromkeys((src, dst) for src, dst, _, _ in flows)
    return {"hosts": topology.nranks, "links": list(topology.link_bandwidth_bytes_per_s), "flows": flows,
            "routes": [[src, dst, list(topology.route(src, dst).links)] for src, dst in pairs]}


def programs_of(flows: list, hosts: int) -> list[list]:
    """Each host: its receives posted at once, then each send at its start (a compute of the gap at 1
    flop/s before it), then a wait for all of them."""
    programs = [[] for _ in range(hosts)]
    sends = [[] for _ in range(hosts)]
    for i, (src, dst, nbytes, start_s) in enumerate(flows):
        programs[dst].append(Irecv(src, nbytes, f"r{i}", tag=i))
        sends[src].append((start_s, i, dst, nbytes))
    for host in range(hosts):
        t = 0.0
        for start_s, i, dst, nbytes in sorted(sends[host]):
            if start_s > t:
                programs[host].append(Compute(start_s - t))
                t = start_s
            programs[host].append(Isend(dst, nbytes, f"s{i}", tag=i))
        handles = tuple(op.handle for op in programs[host] if isinstance(op, (Isend, Irecv)))
        if handles:
            programs[host].append(Wait(handles))
    return programs


def run_distsim(topology, flows) -> tuple[float, dict, list[float]]:
    """(wall s, counts, each flow's finish s) of distsim; counts: SimPy events, max-min solves, the rates
    those solves computed, and the network's other counts."""
    programs = programs_of(flows, topology.nranks)
    start = time.perf_counter()
    simulator = Simulator(topology, programs)
    result = simulator.run()
    wall_s = time.perf_counter() - start
    counts = {"events": int(result.summary["events"]), **simulator.net.counts()}
    records = result.records
    sends = records[records["kind"] == "isend"]
    finish = {}
    for rank, index, end_s in zip(sends["rank"], sends["op_index"], sends["end_s"]):
        finish[int(programs[rank][index].tag)] = float(end_s)
    return wall_s, counts, [finish[i] for i in range(len(flows))]


def run_simgrid(case: dict) -> tuple[float | None, list[float] | None, str]:
    """(wall s, finish times, '') from the SimGrid peer, or (None, None, why it did not run)."""
    if shutil.which(SIMGRID_PYTHON) is None:
        return None, None, f"{SIMGRID_PYTHON} not found"
    probe = subprocess.run([SIMGRID_PYTHON, "-c", "import simgrid"], capture_output=True, text=True)
    if probe.returncode != 0:
        return None, None, "no SimGrid binding (apt-get install python3-simgrid)"
    done = subprocess.run([SIMGRID_PYTHON, str(PEER)], input=json.dumps(case), capture_output=True, text=True)
    if done.returncode != 0:
        return None, None, f"the SimGrid peer failed: {done.stderr.strip().splitlines()[-1:]}"
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return out["run_s"], out["finish_s"], ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), metavar="CASE",
                        help=f"HOSTS:FLOWS (random flows on a tree) or jobs:K:JOBS (jobs on a k-ary fat tree); "
                             f"default: {' '.join(DEFAULT_CASES)}")
    parser.add_argument("--seed", type=int, default=19)
    args = parser.parse_args(argv)
    print(f"{'case':>11} {'flows':>6} {'distsim s':>10} {'events':>9} {'solves':>7} {'rates/solve':>11} "
          f"{'SimGrid s':>10} {'ratio':>7} {'max rel diff':>12}")
    for text in args.cases:
        topology, flows = make_case(text, args.seed)
        peer_case = peer_input(make_case(text, args.seed)[0], flows)  # routes found on a copy: distsim's run finds its own
        wall_s, counts, finish = run_distsim(topology, flows)
        ours = (f"{text:>11} {len(flows):>6} {wall_s:>10.2f} {counts['events']:>9} {counts['solves']:>7} "
                f"{counts['rates'] / max(counts['solves'], 1):>11.1f}")
        peer_s, peer_finish, why = run_simgrid(peer_case)
        if peer_s is None:
            print(f"{ours} skipped: {why}", flush=True)
            continue
        diff = max(abs(a - b) / max(abs(b), 1e-300) for a, b in zip(finish, peer_finish))
        print(f"{ours} {peer_s:>10.2f} {peer_s / wall_s:>6.2f}x {diff:>12.2e}", flush=True)
    print("ratio = SimGrid's wall time / distsim's (above 1: distsim is faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
