"""How well the closed-form step estimate ranks layouts against the simulation.

For a model on a cluster (default GPT-3 175B on 64 DGX A100 GPUs, global
batch 64, every layout experiments.plan searches by default), the layouts
that fit are sorted by the estimate (``workloads.transformer.estimate``) and
``--points`` of them, evenly spaced over that order, are simulated in full.
Prints each point's estimate and simulated step, then Spearman's rank
correlation between them, the median and range of estimate / simulated, and
how far the estimate's first is from the best simulated.

    python benchmarks/plan_estimate.py                      # ~2 min on 2 cores
    python benchmarks/plan_estimate.py --points 40 --jobs 2
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
from types import SimpleNamespace

from experiments import plan


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt3_175b")
    parser.add_argument("--cluster", default="dgx_a100")
    parser.add_argument("--gpus", type=int, default=64)
    parser.add_argument("--points", type=int, default=24, help="layouts to simulate (default 24)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    args = parser.parse_args(argv)
    options = plan.build_parser().parse_args(["--model", args.model, "--cluster", args.cluster,
                                              "--gpus", str(args.gpus)])
    model_value, model, model_name, cluster = plan.load_inputs(options)
    global_batch = options.global_batch or args.gpus
    search = SimpleNamespace(model_value=model_value, model=model, gpus=args.gpus, global_batch=global_batch,
                             precision=options.precision,
                             candidates=plan.candidates(options, model, cluster.gpus_per_node, global_batch))
    rows, fitting = plan.assess_layouts(search, cluster, model_name)
    ordered = sorted(fitting, key=lambda r: (r["estimate_s"], plan.layout_key(r)))
    k = min(args.points, len(ordered))
    picked = [ordered[round(i * (len(ordered) - 1) / max(k - 1, 1))] for i in range(k)]
    tasks = [(plan.scenario_dict(search, cluster, row, 1), 2**40) for row in picked]
    with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
        results = pool.starmap(plan.simulate_point, tasks)
    print(f"{'layout':<62} {'estimate s':>10} {'simulated s':>11}")
    est, sim = [], []
    for row, result in zip(picked, results):
        if "error" in result:
            print(f"{plan.describe(row):<62} {row['estimate_s']:>10.4g}  failed: {result['error'][:60]}")
            continue
        est.append(row["estimate_s"])
        sim.append(result["step_time_s"])
        print(f"{plan.describe(row):<62} {row['estimate_s']:>10.4g} {result['step_time_s']:>11.4g}")
    ratios = sorted(e / s for e, s in zip(est, sim))
    print(f"\n{len(est)} layouts of {len(ordered)} that fit: Spearman rank correlation {plan.spearman(est, sim):.3f}; "
          f"estimate / simulated median {ratios[len(ratios) // 2]:.2f} (range {ratios[0]:.2f}-{ratios[-1]:.2f}); "
          f"the estimate's first simulates at {sim[0]:.4g} s, the best at {min(sim):.4g} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
