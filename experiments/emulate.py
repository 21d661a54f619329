"""Build a scenario's network on this machine, check it, and clean up after killed runs.

    python -m experiments.emulate SCENARIO.yaml              # plan, build, check routes and rates, tear down
    python -m experiments.emulate SCENARIO.yaml --plan-only  # what it would build, nothing created
    python -m experiments.emulate --cleanup                  # remove namespaces of runs that no longer exist
    python -m experiments.emulate --cleanup --all            # remove every distsim namespace, live runs' too

The emulated network (``executors.emulation``) is a network namespace per
node of the scenario's topology, a veth pair per link shaped by htb to the
link's bandwidth in each direction (acknowledgements ahead of data), and the
simulator's routes installed hop by hop.  The check asks the kernel for every pair's path and compares it
with the simulator's route, then moves ``--nbytes`` over one TCP connection
from each rank to the next and sets the rate it reached beside the route's
slowest link.  Needs root (or CAP_NET_ADMIN) and iproute2.  Exit codes: 0
done, 1 a check failed, 2 bad input or an emulation this machine refuses.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from executors.emulation import (
    PAIR_CLASSES,
    EmulatedNetwork,
    EmulationError,
    EmulationPlan,
    cleanup_stale,
    measure_transfer,
    netem_available,
    plan_emulation,
    refusal,
)
from experiments import common
from experiments.common import format_table
from topologies.text import parse_bytes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.emulate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("scenario", nargs="?", help="scenario file (YAML or JSON) whose topology to build")
    p.add_argument("--plan-only", action="store_true", help="print what would be built; create nothing")
    p.add_argument("--nbytes", type=_size, default=16 << 20,
                   help="bytes each rank sends to the next in the rate check (default 16MiB; 0 skips it)")
    p.add_argument("--out", help="also write the rate check as CSV into this folder")
    p.add_argument("--cleanup", action="store_true",
                   help="remove the namespaces of runs whose process no longer exists (a run killed with SIGKILL)")
    p.add_argument("--all", action="store_true", help="with --cleanup: remove every distsim namespace, live or not")
    return p


def _size(text: str) -> int:
    if text.strip() == "0":
        return 0
    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cleanup:
        if args.scenario:
            parser.error("--cleanup takes no scenario")
        removed = cleanup_stale(everything=args.all)
        print(f"removed {len(removed)} namespace(s)" + (": " + ", ".join(removed) if removed else ""))
        return 0
    if args.all:
        parser.error("--all goes with --cleanup")
    if not args.scenario:
        parser.error("give a scenario file, or --cleanup")
    planned = plan_or_report(args.scenario)
    if planned is None:
        return 2
    scenario, plan = planned
    if args.plan_only:
        return 0
    if args.out:
        problem = common.out_dir_problem(args.out)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    failed = False
    results: list[dict] = []
    try:
        with EmulatedNetwork(plan) as net:
            failed = not routes_match(net, plan)
            if args.nbytes and plan.nranks > 1:
                measure_rates(net, plan, scenario.topology, args.nbytes, results)
    except EmulationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1 if results or failed else 2
    except KeyboardInterrupt:
        print("interrupted; the emulated network is torn down", file=sys.stderr)
        return 130
    if results and args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(results).to_csv(out / "rates.csv", index=False)
        print(f"wrote rates.csv to {out}/")
    return 1 if failed else 0


def plan_or_report(scenario_path: str):
    """(the scenario, the plan of its emulated network), the plan printed; or None after printing why the
    scenario cannot be emulated here (the caller exits 2)."""
    scenario = common.load_scenario_or_report(scenario_path)
    if scenario is None:
        return None
    try:
        plan = plan_emulation(scenario.topology)
    except EmulationError as exc:
        print(f"error: {scenario_path}: {exc}", file=sys.stderr)
        return None
    print(plan.describe())
    rows = []
    for link in plan.links:
        a, b = link.ends
        rows.append({"link": f"{plan.node_names[a.node]} - {plan.node_names[b.node]}",
                     "mbit": link.bits_per_s / 1e6, "ends": f"{a.address} {b.address}",
                     "pairs": f"{len(plan.link_pairs.get((a.node, b.node), ()))} / "
                              f"{len(plan.link_pairs.get((b.node, a.node), ()))}"})
    print(format_table(rows, (("link", "link", ""), ("mbit", "Mbit/s each way", ".6g"), ("ends", "addresses", ""),
                              ("pairs", "rank pairs each way", ""))))
    print(f"each rank pair has a class of its own on each link it crosses (up to {PAIR_CLASSES} per direction; "
          "beyond, they share one FIFO): the pairs with data share the link's rate equally")
    if not netem_available():
        print("latency: not emulated (this kernel has no netem); each link adds only what the machine adds")
    reason = refusal(plan)
    if reason:
        print(f"error: {scenario_path}: {reason}", file=sys.stderr)
        return None
    return scenario, plan


def routes_match(net: EmulatedNetwork, plan: EmulationPlan) -> bool:
    """Whether the kernel sends every pair along the simulator's path; the first mismatches are printed."""
    kernel = {pair: net.route_path(*pair) for pair in plan.paths}
    wrong = [pair for pair, path in plan.paths.items() if kernel[pair] != path]
    print(f"routes: {len(plan.paths) - len(wrong)} of {len(plan.paths)} pairs take the simulator's path")
    for s, d in wrong[:10]:
        print(f"  rank {s} -> rank {d}: kernel {kernel[(s, d)]}, simulator {plan.paths[(s, d)]}")
    return not wrong


def measure_rates(net: EmulatedNetwork, plan: EmulationPlan, topology, nbytes: int, results: list[dict]) -> None:
    """Move ``nbytes`` from each rank to the next and append the rate reached beside the route's slowest link.

    ``results`` grows one transfer at a time, so what was measured before an
    error still decides the exit code.
    """
    for src in range(plan.nranks):
        dst = (src + 1) % plan.nranks
        bottleneck = min(topology.link_bandwidth_bytes_per_s[link] for link in topology.route(src, dst).links)
        achieved = measure_transfer(net, src, dst, nbytes)
        results.append({"src": src, "dst": dst, "nbytes": nbytes,
                        "bottleneck_bytes_per_s": bottleneck, "achieved_bytes_per_s": achieved,
                        "fraction": achieved / bottleneck})
        print(f"  rank {src} -> rank {dst}: {achieved / 1e6:.3f} MB/s of {bottleneck / 1e6:.3f} "
              f"({achieved / bottleneck:.1%})", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
