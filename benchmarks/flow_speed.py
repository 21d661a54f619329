"""Irregular traffic: random flows on an oversubscribed two-level tree, distsim against SimGrid, in one run.

No fast path recognises this traffic: every message is a flow of the flow
network, and every start and end re-solves max-min sharing.  Each case:
``hosts`` hosts in racks of 16, host links of 1.25 GB/s (10 Gbit/s), each rack's
uplink carrying a quarter of its hosts' bandwidth (4:1 oversubscribed),
no latency; ``flows`` flows between random hosts (never a host to itself),
64 KiB to 64 MiB (log-uniform), starting at random within 50 ms; all from
one seed.

Prints per case: flows, distsim's wall time to simulate (``Simulator(...)
.run()``: building the topology and the programs excluded), its events,
SimGrid's wall time to simulate (``Engine.run()``: loading its platform
excluded; the SimGrid binding of the system Python, Debian's
``python3-simgrid``: skipped, with the reason, where it is absent), the
ratio, and the largest per-flow difference of finish times (relative).

    python benchmarks/flow_speed.py                          # hosts 256, 1024 with 1024 and 4096 flows
    python benchmarks/flow_speed.py --cases 256:1024 1024:4096 4096:4096
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
from topologies import LinkSpec, NodeSpec, hierarchical
from workloads.ops import Compute, Irecv, Isend, Wait

HOSTS_PER_RACK = 16
HOST_BANDWIDTH_BYTES_PER_S = 1.25e9  # 10 Gbit/s NICs
OVERSUBSCRIPTION = 4
START_WITHIN_S = 0.05
SIMGRID_PYTHON = "/usr/bin/python3"
PEER = Path(__file__).with_name("simgrid_flows.py")
DEFAULT_CASES = ("256:1024", "1024:4096")


def make_case(hosts: int, nflows: int, seed: int = 19) -> dict:
    """The case as plain data (what the SimGrid peer reads)."""
    if hosts % HOSTS_PER_RACK:
        raise ValueError(f"hosts must be a multiple of {HOSTS_PER_RACK}, got {hosts}")
    rng = np.random.default_rng(seed)
    flows = []
    for _ in range(nflows):
        src, dst = (int(h) for h in rng.choice(hosts, size=2, replace=False))
        nbytes = int(2 ** rng.uniform(16, 26))
        flows.append([src, dst, nbytes, float(rng.uniform(0.0, START_WITHIN_S))])
    return {"racks": hosts // HOSTS_PER_RACK, "hosts_per_rack": HOSTS_PER_RACK,
            "host_bandwidth_bytes_per_s": HOST_BANDWIDTH_BYTES_PER_S,
            "uplink_bandwidth_bytes_per_s": HOST_BANDWIDTH_BYTES_PER_S * HOSTS_PER_RACK / OVERSUBSCRIPTION,
            "flows": flows}


def programs_of(case: dict, hosts: int) -> list[list]:
    """Each host: its receives posted at once, then each send at its start (a compute of the gap at 1
    flop/s before it), then a wait for all of them."""
    programs = [[] for _ in range(hosts)]
    sends = [[] for _ in range(hosts)]
    for i, (src, dst, nbytes, start_s) in enumerate(case["flows"]):
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


def run_distsim(case: dict) -> tuple[float, dict, list[float]]:
    """(wall s, counts, each flow's finish s) of distsim on ``case``; counts: SimPy events, max-min solves,
    and the rates those solves computed (the flows connected to each change, summed)."""
    hosts = case["racks"] * case["hosts_per_rack"]
    topology = hierarchical([case["racks"], case["hosts_per_rack"]], node=NodeSpec(flops_per_s=1.0),
                            links=[LinkSpec(case["host_bandwidth_bytes_per_s"], latency_s=0.0),
                                   LinkSpec(case["uplink_bandwidth_bytes_per_s"], latency_s=0.0)])
    programs = programs_of(case, hosts)
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
    return wall_s, counts, [finish[i] for i in range(len(case["flows"]))]


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
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), metavar="HOSTS:FLOWS",
                        help=f"cases to run (default: {' '.join(DEFAULT_CASES)})")
    parser.add_argument("--seed", type=int, default=19)
    args = parser.parse_args(argv)
    print(f"{'hosts':>6} {'flows':>6} {'distsim s':>10} {'events':>9} {'solves':>7} {'rates/solve':>11} "
          f"{'SimGrid s':>10} {'ratio':>7} {'max rel diff':>12}")
    for text in args.cases:
        hosts, nflows = (int(x) for x in text.split(":"))
        case = make_case(hosts, nflows, args.seed)
        wall_s, counts, finish = run_distsim(case)
        ours = (f"{hosts:>6} {nflows:>6} {wall_s:>10.2f} {counts['events']:>9} {counts['solves']:>7} "
                f"{counts['rates'] / max(counts['solves'], 1):>11.1f}")
        peer_s, peer_finish, why = run_simgrid(case)
        if peer_s is None:
            print(f"{ours} skipped: {why}", flush=True)
            continue
        diff = max(abs(a - b) / max(abs(b), 1e-300) for a, b in zip(finish, peer_finish))
        print(f"{ours} {peer_s:>10.2f} {peer_s / wall_s:>6.2f}x {diff:>12.2e}", flush=True)
    print("ratio = SimGrid's wall time / distsim's (above 1: distsim is faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
