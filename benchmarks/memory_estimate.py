"""The memory estimate against the measured peak, case by case.

The estimate (``workloads.scenario.memory_estimate_bytes``: topology and
programs, from closed forms, before anything is built) is what the memory
limit (``--max-memory``, default 2 GiB) is checked against; it should be
within 1.5x of what a run takes.  Each case is loaded and simulated in a
child process of its own; "growth" is its peak RSS over its RSS before the
scenario was built (the imports are not the scenario's).

    python benchmarks/memory_estimate.py                 # every case (~2 min)
    python benchmarks/memory_estimate.py --cases gpt64 a2a512

Cases: gptN, GPT-3 175B on N A100s (tp 8, pp 8; 64 interleaved, others
1F1B with 16 micro-batches per replica; gpt128s with stragglers, so that
every rank is simulated); l405_256, Llama 3 405B on 256
H100s (tp 8, pp 16, dp 2); ringN, one ring all-reduce on a ring of N; a2aN,
one all-to-all on a switch of N.
"""
from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CASES = ("gpt64", "gpt128", "gpt128s", "gpt1024", "l405_256", "ring1024", "ring4096", "a2a256", "a2a512")


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024
    return 0


def case_dict(name: str) -> dict:
    from transformer_step import CASES as GPT_CASES
    from transformer_step import scenario_dict
    if name == "gpt64":
        return scenario_dict(GPT_CASES["64"])
    if name == "gpt128s":
        # Stragglers break the symmetry: every rank simulated.
        return dict(case_dict("gpt128"), stragglers={"kind": "lognormal", "mu": 0.0, "sigma": 0.1})
    if name.startswith("gpt"):
        nodes = int(name[3:]) // 8
        return scenario_dict(dict(GPT_CASES["1024"], nodes=nodes, global_batch=256 * nodes // 128))
    if name == "l405_256":
        return {"name": name, "topology": {"builder": "gpu_cluster", "preset": "dgx_h100", "nodes": 32},
                "workload": {"kind": "transformer", "model": "llama3_405b", "micro_batch": 1, "recompute": "full",
                             "sequence_parallel": True, "zero": 1, "tp": 8, "pp": 16, "global_batch": 32}}
    if name.startswith("ring"):
        return {"name": name, "topology": {"builder": "ring", "n": int(name[4:])},
                "workload": {"kind": "collective", "op": "allreduce", "nbytes": 1 << 24, "algorithm": "ring"}}
    if name.startswith("a2a"):
        return {"name": name, "topology": {"builder": "switch", "n": int(name[3:])},
                "workload": {"kind": "collective", "op": "alltoall", "nbytes": 1 << 20}}
    raise KeyError(name)


def run_case(name: str, out) -> None:
    import simcore.engine  # noqa: F401 - the imports are not the scenario's memory
    from executors import get_executor
    from workloads.scenario import memory_estimate_bytes, scenario_from_dict

    before = _rss_bytes()
    scenario = scenario_from_dict(case_dict(name), max_memory_bytes=2**50)
    # As the scenario's check counts it: folded unless a straggler model applies.
    estimate = sum(memory_estimate_bytes(scenario.topology, scenario.workload, folded=not scenario.stragglers.active))
    result = get_executor("sim").run(scenario)
    # ru_maxrss is in KiB on Linux.
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    out.put({"case": name, "ranks": scenario.nranks, "operations": int(result.summary["operations"]),
             "estimate": estimate, "growth": growth, "symmetry": result.summary.get("symmetry", "")})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), metavar="CASE",
                        help=f"cases to run (default: all of {' '.join(CASES)})")
    args = parser.parse_args(argv)
    from topologies.text import format_bytes
    context = multiprocessing.get_context("fork")
    print(f"{'case':<10} {'ranks':>6} {'operations':>11} {'estimate':>11} {'growth':>11} {'ratio':>6}  symmetry")
    worst = 1.0
    for name in args.cases:
        queue = context.Queue()
        child = context.Process(target=run_case, args=(name, queue))
        child.start()
        child.join()
        if queue.empty():
            print(f"{name:<10} failed (exit code {child.exitcode})")
            continue
        row = queue.get()
        ratio = row["estimate"] / row["growth"]
        worst = max(worst, ratio, 1 / ratio)
        print(f"{name:<10} {row['ranks']:>6} {row['operations']:>11,} {format_bytes(row['estimate']):>11} "
              f"{format_bytes(row['growth']):>11} {ratio:>6.2f}  {row['symmetry']}", flush=True)
    print(f"worst factor between estimate and growth: {worst:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
