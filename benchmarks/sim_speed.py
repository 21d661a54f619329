"""Simulator speed: ring all-reduce of 100 MB on a ring topology.

Each of the 2(N-1) steps moves one chunk per rank as a flow of its own, so
N = 1024 simulates 2 095 104 flows.  Prints one line per N:

    ranks simulated_s wall_s events_per_s

and checks the simulated time against the closed form
2(N-1)a + 2((N-1)/N) n/B (Thakur, Rabenseifner and Gropp 2005).

    python benchmarks/sim_speed.py [--ranks 64 256 1024]
"""
from __future__ import annotations

import argparse
import sys
import time

from simcore.engine import Simulator
from topologies import ring
from workloads.ops import Collective

NBYTES = 100_000_000
BANDWIDTH_BYTES_PER_S = 12.5e9
LATENCY_S = 1e-6


def closed_form_s(nranks: int) -> float:
    p = nranks
    # The ring's blocks are ceil/floor of n/p; the largest one sets each step's time.
    block = -(-NBYTES // p)
    return 2 * (p - 1) * (LATENCY_S + block / BANDWIDTH_BYTES_PER_S)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, nargs="+", default=[64, 256, 1024])
    args = parser.parse_args(argv)
    if any(n < 2 for n in args.ranks):
        parser.error("--ranks: every size must be >= 2")
    print("ranks simulated_s wall_s events_per_s")
    ok = True
    for n in args.ranks:
        topo = ring(n, bandwidth_bytes_per_s=BANDWIDTH_BYTES_PER_S, latency_s=LATENCY_S)
        programs = [[Collective("allreduce", NBYTES, algorithm="ring")] for _ in range(n)]
        wall0 = time.perf_counter()
        result = Simulator(topo, programs).run()
        wall_s = time.perf_counter() - wall0
        simulated_s = result.makespan_s
        events = result.summary["events"]
        print(f"{n} {simulated_s:.9f} {wall_s:.3f} {events / wall_s:.0f}", flush=True)
        expected = closed_form_s(n)
        if abs(simulated_s - expected) > 1e-9 * expected:
            print(f"  MISMATCH: closed form gives {expected:.9f} s", file=sys.stderr)
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
