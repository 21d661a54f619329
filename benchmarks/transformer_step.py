"""Simulator cost of one GPT-3 175B training step on A100 clusters.

Each case is one scenario (a DGX A100 ``gpu_cluster`` and a ``transformer``
workload), loaded and simulated in a child process of its own so that its
peak memory (max RSS) is its own.  Prints per case: ranks, operations, wall
time to load (build and validate the programs) and to simulate, the
estimated memory (the project's closed-form estimate, checked before
anything is built) beside the peak RSS, and the simulated step time and
MFU.  A case whose
estimate exceeds ``--max-memory`` (default 2 GiB, as everywhere) is reported
as refused with its estimate, not run.

    python benchmarks/transformer_step.py                       # both cases
    python benchmarks/transformer_step.py --cases 64 --max-memory 8GiB
"""
from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import time

from executors import get_executor
from topologies.text import format_bytes, parse_bytes
from workloads.scenario import ScenarioError, memory_estimate_bytes, scenario_from_dict

CASES = {
    # Narayanan et al. (2021)'s GPT-3 layout: tp 8 inside a DGX, pp 8 across them, interleaved.
    "64": {"nodes": 8, "tp": 8, "pp": 8, "schedule": "interleaved", "virtual_stages": 2, "global_batch": 16},
    "1024": {"nodes": 128, "tp": 8, "pp": 8, "schedule": "1f1b", "virtual_stages": 1, "global_batch": 256},
}


def scenario_dict(case: dict) -> dict:
    workload = {"kind": "transformer", "model": "gpt3_175b", "micro_batch": 1, "recompute": "full",
                **{k: v for k, v in case.items() if k != "nodes"}}
    return {"name": f"gpt3-175b-{case['nodes'] * 8}-a100",
            "topology": {"builder": "gpu_cluster", "preset": "dgx_a100", "nodes": case["nodes"]},
            "workload": workload}


def run_case(name: str, max_memory_bytes: int, out) -> None:
    row = {"case": name}
    data = scenario_dict(CASES[name])
    start = time.perf_counter()
    try:
        scenario = scenario_from_dict(data, max_memory_bytes=max_memory_bytes)
    except ScenarioError as exc:
        row["refused"] = str(exc)
        out.put(row)
        return
    row["load_s"] = time.perf_counter() - start
    row["nranks"] = scenario.nranks
    row["estimate_bytes"] = sum(memory_estimate_bytes(scenario.topology, scenario.workload))
    start = time.perf_counter()
    result = get_executor("sim").run(scenario)
    row["simulate_s"] = time.perf_counter() - start
    row["operations"] = int(result.summary["operations"])
    row["step_s"] = result.makespan_s
    report = scenario.workload.training_report(
        scenario.nranks, result.makespan_s, result.records, result.per_group,
        [scenario.topology.peak_flops_per_s(r, "bf16") for r in range(scenario.nranks)])
    row["mfu"] = report["mfu"]
    # ru_maxrss is in KiB on Linux.
    row["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out.put(row)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=sorted(CASES, key=int),
                        help="GPU counts to run (default: all)")
    parser.add_argument("--max-memory", default="2GiB", help="refuse a case whose estimate exceeds this (default 2GiB)")
    args = parser.parse_args(argv)
    limit = parse_bytes(args.max_memory)
    context = multiprocessing.get_context("fork")
    print("case  ranks  operations  load_s  simulate_s  estimate  peak_rss  step_s  MFU")
    for name in args.cases:
        queue = context.Queue()
        child = context.Process(target=run_case, args=(name, limit, queue))
        child.start()
        row = queue.get()
        child.join()
        if "refused" in row:
            print(f"{name:>4}  refused: {row['refused']}")
            continue
        print(f"{name:>4}  {row['nranks']:>5}  {row['operations']:>10,}  {row['load_s']:6.1f}  {row['simulate_s']:10.1f}"
              f"  {format_bytes(row['estimate_bytes']):>8}  {format_bytes(row['peak_rss_bytes']):>8}"
              f"  {row['step_s']:6.3f}  {100 * row['mfu']:.1f}%")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
