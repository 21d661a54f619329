"""Simulator speed: the engine with its fast paths (``fast``) against the same interpreter with none
(``reference``), on the same scenarios in one run.

Cases (``--cases``; each engine runs each case in a fresh child process,
so its peak memory is its own):

- ``ring256``, ``ring1024``, ``ring4096``: ring all-reduce of 100 MB on a
  ring of N ranks.  Each of the 2(N-1) steps moves one chunk per rank as a
  message of its own: 2N(N-1) messages (2 095 104 at N = 1024).  The
  simulated time is checked against the closed form
  2(N-1)a + 2((N-1)/N) n/B (Thakur, Rabenseifner and Gropp 2005).
- ``contended``: 8 ring all-reduces of 100 MB at once, one per GPU position
  (stride groups), across 128 servers of 8 ranks: the 8 rings' messages share
  every server's uplink (twice a rank's link, so each message gets 1/4 of one) in every step.
- ``ddp1024``: the default scaling study's largest straggler point
  (``python -m experiments.scaling``: data-parallel training of 1024 ranks on
  the tree, stragglers on, strong scaling): each bucket's ring all-reduce
  starts on each rank when its backward pass reaches it, at a different time
  on every rank, and the ring's messages share the tree's links.
- ``gpt128``, ``gpt1024``: one GPT-3 175B training step (tp 8, pp 8, 1F1B,
  full recompute) on 128 and 1024 A100 GPUs (``benchmarks/transformer_step.py``
  for the scenario), dp 2 and dp 16.
- ``gpt1t512``: a 1T-parameter GPT (128 layers, hidden 25600, 160 heads,
  seq 2048) on 512 A100s, tp 8, pp 64, 512 micro-batches (Narayanan et al.
  2021's largest), the representatives' records kept (run it with
  ``--engines fast``: the reference would take hours).
- ``llama405b16k``: Llama 3 405B (126 layers over 16 stages of unequal
  depth, seq 8192) on 16,384 H100s (the ``dgx_h100_pods`` preset: 2,048
  servers, rail leaves of 32 servers, pods of 512), tp 8, pp 16, dp 128,
  sequence parallel, full recompute, ZeRO-1, 2,048 sequences: the layout of
  Llama 3's training.  Each data-parallel ring of 128 crosses four leaves,
  so 512 ranks are simulated; the representatives' records are kept.

Prints per case and engine: ranks, messages, the simulated time, the wall
time to build and simulate, and the peak RSS; then per case the ratio of
the reference engine's wall time to the fast one's, and whether both gave
the same simulated time (to 1e-9).  ``--engines unfolded fast`` times every
fast path but symmetric rank classes against all of them, and compares
every record's start and end (to 1e-9): on gpt1024 the fast engine
simulates 8 ranks, one per pipeline stage (``simcore.symmetry``).

Traffic no fast path recognises (random flows on an oversubscribed tree,
concurrent jobs on a fat tree), against SimGrid: ``benchmarks/flow_speed.py``.

    python benchmarks/sim_speed.py                                  # ring256 ring1024 contended gpt128
    python benchmarks/sim_speed.py --cases ring4096 ddp1024 gpt1024 # the long ones (the reference: ~35 min)
    python benchmarks/sim_speed.py --cases ring4096 --engines fast  # the fast engine alone
    python benchmarks/sim_speed.py --cases gpt1024 --engines unfolded fast  # symmetric classes against none
    python benchmarks/sim_speed.py --cases gpt1024 gpt1t512 llama405b16k --engines fast  # issue 20's goals
"""
from __future__ import annotations

import argparse
import multiprocessing
from queue import Empty
import resource
import sys
import time

import numpy as np

NBYTES = 100_000_000
BANDWIDTH_BYTES_PER_S = 12.5e9
LATENCY_S = 1e-6
CASES = ("ring256", "ring1024", "ring4096", "contended", "ddp1024", "gpt128", "gpt1024", "gpt1t512", "llama405b16k")
DEFAULT_CASES = ("ring256", "ring1024", "contended", "gpt128")
# reference: every fast path off; unfolded: all but symmetric_ranks (each rank simulated); fast: all.
ENGINES = ("reference", "unfolded", "fast")


def closed_form_s(nranks: int) -> float:
    p = nranks
    # The ring's blocks are ceil/floor of n/p; the largest one sets each step's time.
    block = -(-NBYTES // p)
    return 2 * (p - 1) * (LATENCY_S + block / BANDWIDTH_BYTES_PER_S)


def build(case: str):
    """(topology, programs, simulator keyword arguments, closed-form time or None)."""
    from topologies import LinkSpec, hierarchical, ring
    from workloads.groups import ProcessGroups
    from workloads.ops import Collective

    if case.startswith("ring"):
        n = int(case[4:])
        topo = ring(n, link=LinkSpec(BANDWIDTH_BYTES_PER_S, latency_s=LATENCY_S))
        programs = [[Collective("allreduce", NBYTES, algorithm="ring")] for _ in range(n)]
        return topo, programs, {}, closed_form_s(n)
    if case == "contended":
        servers, per_server = 128, 8
        n = servers * per_server
        topo = hierarchical([servers, per_server], links=[LinkSpec(BANDWIDTH_BYTES_PER_S * 4, latency_s=LATENCY_S),
                                                          LinkSpec(BANDWIDTH_BYTES_PER_S * 2, latency_s=2 * LATENCY_S)])
        groups = ProcessGroups(n, {"dp": tuple(tuple(range(g, n, per_server)) for g in range(per_server))})
        programs = [[Collective("allreduce", NBYTES, algorithm="ring", group="dp")] for _ in range(n)]
        return topo, programs, {"process_groups": groups}, None
    if case == "ddp1024":
        from experiments.scaling import _straggler_spec, _validate, build_parser, configurations
        from workloads.scenario import scenario_from_dict

        parser = build_parser()
        args = parser.parse_args(["--topologies", "tree", "--sizes", "1024", "--mode", "strong",
                                  "--straggler-cases", "on"])
        _validate(args, parser)
        [config] = configurations(args, _straggler_spec(args, parser))
        scenario = scenario_from_dict(config["scenario"])
        kwargs = {"seed": scenario.seed, "process_groups": scenario.groups, "name": scenario.name,
                  "stragglers": scenario.stragglers, "count_idle_energy": scenario.energy.count_idle}
        return scenario.topology, scenario.programs(), kwargs, None
    # benchmarks/ is on sys.path as this script's folder, in the child processes too.
    from transformer_step import CASES as GPT_CASES
    from transformer_step import scenario_dict
    from workloads.scenario import scenario_from_dict

    if case == "llama405b16k":
        data = {"name": "llama3-405b-16k-h100",
                "topology": {"builder": "gpu_cluster", "preset": "dgx_h100_pods", "nodes": 2048},
                "workload": {"kind": "transformer", "model": "llama3_405b", "tp": 8, "pp": 16, "schedule": "1f1b",
                             "micro_batch": 1, "global_batch": 2048, "recompute": "full",
                             "sequence_parallel": True, "zero": 1}}
        scenario = scenario_from_dict(data, records=False)
        kwargs = {"seed": scenario.seed, "process_groups": scenario.groups, "name": scenario.name,
                  "expand_records": False}
        return scenario.topology, scenario.programs(), kwargs, None
    if case == "gpt1t512":
        data = {"name": "gpt-1t-512-a100", "topology": {"builder": "gpu_cluster", "preset": "dgx_a100", "nodes": 64},
                "workload": {"kind": "transformer", "recompute": "full", "tp": 8, "pp": 64, "schedule": "1f1b",
                             "micro_batch": 1, "global_batch": 512,
                             "model": {"name": "gpt_1t", "layers": 128, "hidden": 25600, "heads": 160,
                                       "seq_len": 2048, "vocab": 51200}}}
        scenario = scenario_from_dict(data, records=False)
        # The representatives' records only (RunResult.rep_of): every rank's would be 22 million rows.
        kwargs = {"seed": scenario.seed, "process_groups": scenario.groups, "name": scenario.name,
                  "expand_records": False}
        return scenario.topology, scenario.programs(), kwargs, None
    nodes = {"gpt128": 16, "gpt1024": 128}[case]
    spec = dict(GPT_CASES["1024"], nodes=nodes, global_batch=256 * nodes // 128)
    scenario = scenario_from_dict(scenario_dict(spec), max_memory_bytes=20 * 2**30)
    kwargs = {"seed": scenario.seed, "process_groups": scenario.groups, "name": scenario.name}
    return scenario.topology, scenario.programs(), kwargs, None


def run_case(case: str, engine: str, out) -> None:
    from simcore.engine import FAST_PATHS, REFERENCE, Simulator

    start = time.perf_counter()
    topo, programs, kwargs, expected = build(case)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    paths = {"fast": FAST_PATHS, "reference": REFERENCE,
             "unfolded": tuple(p for p in FAST_PATHS if p != "symmetric_ranks")}[engine]
    result = Simulator(topo, programs, fast_paths=paths, **kwargs).run()
    wall_s = time.perf_counter() - start
    out.put({"case": case, "engine": engine, "ranks": topo.nranks, "messages": result.summary["messages"],
             "simulated_s": result.makespan_s, "load_s": load_s, "wall_s": wall_s, "expected_s": expected,
             # ru_maxrss is in KiB on Linux.
             "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
             "symmetry": result.summary.get("symmetry", ""),
             "records": {c: result.records[c].to_numpy() for c in ("start_s", "end_s")}})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(DEFAULT_CASES), metavar="CASE",
                        help=f"cases to run (default: {' '.join(DEFAULT_CASES)}; all: {' '.join(CASES)})")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=["reference", "fast"],
                        help="engines to time (default: reference fast, for the ratio; unfolded: every fast path "
                             "but symmetric rank classes, compared record by record with fast)")
    args = parser.parse_args(argv)
    from topologies.text import format_bytes

    # spawn: each child starts small, so its peak RSS is the case's own.
    context = multiprocessing.get_context("spawn")
    print("case       engine     ranks   messages    simulated_s   build_s   wall_s   peak_rss", flush=True)
    ok = True
    for case in args.cases:
        rows = {}
        for engine in args.engines:
            queue = context.Queue()
            child = context.Process(target=run_case, args=(case, engine, queue))
            child.start()
            row = None
            while row is None:
                try:
                    row = queue.get(timeout=1.0)
                except Empty:
                    if not child.is_alive():
                        break
            child.join()
            if row is None:
                print(f"{case:<10} {engine:<10} failed: the child process ended with code {child.exitcode}",
                      flush=True)
                ok = False
                continue
            rows[engine] = row
            if engine != "unfolded" and "unfolded" not in args.engines:
                row.pop("records")
            print(f"{case:<10} {engine:<10} {row['ranks']:>5} {row['messages']:>10,}  {row['simulated_s']:.9f}"
                  f"  {row['load_s']:8.2f} {row['wall_s']:8.2f}  {format_bytes(row['peak_rss_bytes']):>9}",
                  flush=True)
            expected = row["expected_s"]
            if expected is not None and abs(row["simulated_s"] - expected) > 1e-9 * expected:
                print(f"  MISMATCH: the closed form gives {expected:.9f} s", file=sys.stderr)
                ok = False
        if "unfolded" in rows and "fast" in rows:
            full, fast = rows["unfolded"], rows["fast"]
            a, b = fast["records"], full["records"]
            worst = max((float(np.max(np.abs(a[c] - b[c]) / np.maximum(np.abs(b[c]), 1e-300), initial=0.0))
                         if len(a[c]) == len(b[c]) else float("inf")) for c in a)
            same = worst <= 1e-9
            ok = ok and same
            print(f"{case:<10} folded     {full['wall_s'] / fast['wall_s']:.1f}x faster than unfolded; records agree "
                  f"to {worst:.1e} relative ({fast['symmetry']}){'' if same else '  MISMATCH'}", flush=True)
        if "reference" in rows and "fast" in rows:
            ref, fast = rows["reference"], rows["fast"]
            same = abs(fast["simulated_s"] - ref["simulated_s"]) <= 1e-9 * abs(ref["simulated_s"])
            ok = ok and same
            print(f"{case:<10} ratio      {ref['wall_s'] / fast['wall_s']:.1f}x faster"
                  f"{'' if same else '  MISMATCH: the engines disagree'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
