"""Strong and weak scaling of a data-parallel training step.

    python -m experiments.scaling                      # the default study (about 40 s on 2 cores)
    python -m experiments.scaling --sizes 2 4 8 --topologies ring --mode weak

One synchronous DDP step (``workloads.training.DataParallelStep``: forward,
backward in gradient buckets overlapped with their all-reduces, then wait) on
the ring, tree, hierarchical and edge-cloud topologies, for N = 2 .. 1024
ranks, without and with stragglers.  Strong scaling keeps the global batch
fixed (batch_per_rank = global_batch / N); weak scaling keeps batch_per_rank.

Definitions (per topology, mode and straggler case, relative to the smallest
N of the study, N_min):

- throughput = samples per second = N * batch_per_rank / step time;
- speedup = throughput(N) / throughput(N_min); for strong scaling that is
  T(N_min) / T(N), for weak scaling (T(N_min) / T(N)) * N / N_min;
- efficiency = speedup * N_min / N; for weak scaling that is T(N_min) / T(N);
- comm share = mean over ranks of (comm_s + wait_s) / step time: the part of
  the step a rank is not computing (exposed communication, waiting for slower
  peers, idling after its own last operation);
- energy per step = all nodes (busy and idle power) and links, in joules.

The experiment only assembles scenarios (``experiments.common``) and
tabulates results; every model lives in topologies/, workloads/ and simcore/.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from experiments import common, plots
from workloads.collectives import ALGORITHMS
from workloads.scenario import ScenarioError, scenario_from_dict
from workloads.stragglers import KINDS, SCOPES, StragglerSpec

# Up to 1024 ranks on every topology: the engine computes each bucket's
# all-reduce whole, even where stragglers or the tree's uneven latencies make
# its members start it at different times (simcore.engine holds its links
# until the last one arrives), so a 1024-rank point takes about 0.6 s.
DEFAULT_SIZES = (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# A 25M-parameter model (ResNet-50 sized; fp32 gradients are 100 MB) whose
# sample costs 6 * parameters * 512 flops (a transformer over 512 tokens).
DEFAULT_PARAMETERS = 25_000_000
DEFAULT_BYTES_PER_PARAMETER = 4
DEFAULT_FLOPS_PER_SAMPLE = 6.0 * DEFAULT_PARAMETERS * 512
DEFAULT_GLOBAL_BATCH = 2048
DEFAULT_BATCH_PER_RANK = 32
# DDP's default 25 MiB buckets: four all-reduces per step.
DEFAULT_BUCKET_BYTES = 25 * 2**20
DEFAULT_STRAGGLERS = "lognormal"
DEFAULT_STRAGGLER_PARAMS = {"lognormal": {"sigma": 0.2}}

COLUMNS = (
    "topology", "mode", "stragglers", "n", "algorithm", "batch_per_rank", "global_batch",
    "step_s", "speedup", "efficiency", "comm_share", "energy_per_step_j",
    "samples_per_s", "energy_per_sample_j", "compute_s_mean", "wait_s_mean", "messages",
)

TABLE = (
    ("topology", "topology", ""),
    ("mode", "mode", ""),
    ("stragglers", "stragglers", ""),
    ("n", "N", "d"),
    ("batch_per_rank", "batch/rank", "d"),
    ("step_s", "step s", ".4g"),
    ("speedup", "speedup", ".3f"),
    ("efficiency", "efficiency", ".3f"),
    ("comm_share", "comm share", ".3f"),
    ("energy_per_step_j", "energy/step J", ".4g"),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.scaling",
        description="Strong and weak scaling of one data-parallel training step (DDP with bucketed, overlapped "
        "all-reduce) on ring, tree, hierarchical and edge-cloud topologies, with and without stragglers. "
        "Writes scaling.csv and PNG plots into --out and prints a table.",
        epilog=(
            "Topologies: ring and tree (arity 4) with 12.5e9 B/s links; hierarchical as servers of 8 ranks "
            "(levels (N/8, 8) for N > 8, one server (N,) for N <= 8; 300e9 B/s inside a server, 25e9 between); "
            "edge_cloud with max(1, N//16) edge servers, 1 cloud node from N=3 on, and the rest devices. "
            "Definitions, per topology/mode/straggler case and relative to the smallest N: "
            "speedup = throughput(N)/throughput(N_min) (strong: T(N_min)/T(N)); efficiency = speedup*N_min/N "
            "(weak: T(N_min)/T(N)); comm share = mean over ranks of (comm_s + wait_s)/step time, the part of "
            "the step a rank does not compute. "
            "Defaults: a 25M-parameter model (4 buckets of 25 MiB), the ring all-reduce on the ring and tree "
            "and the 'hierarchical' one (reduce in groups, ring among group leaders, broadcast) where the "
            "topology has groups; N = 2 .. 1024 on every topology. A flat ring all-reduce sends 2(p-1)p "
            "messages per bucket (2.1 million at p=1024); the engine computes each all-reduce whole, so the "
            "default study (160 runs) takes about 40 s on 2 cores."
        ),
    )
    p.add_argument("--topologies", nargs="+", default=list(common.STUDY_TOPOLOGIES),
                   choices=common.STUDY_TOPOLOGIES, metavar="KIND",
                   help=f"topologies to study (default: all of {', '.join(common.STUDY_TOPOLOGIES)})")
    p.add_argument("--sizes", nargs="+", type=int, default=None, metavar="N",
                   help="numbers of ranks, for every topology (default: 2 4 8 ... 1024)")
    p.add_argument("--mode", choices=("strong", "weak", "both"), default="both",
                   help="strong (fixed global batch), weak (fixed batch per rank) or both (default)")
    w = p.add_argument_group("workload (one data-parallel step)")
    w.add_argument("--parameters", type=int, default=DEFAULT_PARAMETERS,
                   help=f"model parameters (default {DEFAULT_PARAMETERS:,})")
    w.add_argument("--bytes-per-parameter", type=int, default=DEFAULT_BYTES_PER_PARAMETER,
                   help="gradient bytes per parameter (default 4, fp32)")
    w.add_argument("--flops-per-sample", type=float, default=DEFAULT_FLOPS_PER_SAMPLE,
                   help="forward+backward flops per sample (default 6*parameters*512 = %(default).4g)")
    w.add_argument("--global-batch", type=int, default=DEFAULT_GLOBAL_BATCH,
                   help="strong scaling: samples per step over all ranks; must be divisible by every N "
                        "(default %(default)s)")
    w.add_argument("--batch-per-rank", type=int, default=DEFAULT_BATCH_PER_RANK,
                   help="weak scaling: samples per rank (default %(default)s)")
    w.add_argument("--bucket-bytes", type=int, default=DEFAULT_BUCKET_BYTES,
                   help="gradient bucket size in bytes (default 25 MiB as DDP: four buckets of the default "
                        "model; each bucket is one all-reduce, simulation cost grows with their number)")
    allreduce = ALGORITHMS["allreduce"]
    w.add_argument("--algorithm", default="auto", choices=("auto",) + allreduce,
                   help="all-reduce algorithm; auto (default): " + ", ".join(
                       f"{k}->{v}" for k, v in common.DEFAULT_ALGORITHM.items())
                   + " ('hierarchical' needs a topology with groups)")
    w.add_argument("--inter-algorithm", default="ring", choices=[a for a in allreduce if a != "hierarchical"],
                   help="all-reduce among group leaders for the hierarchical algorithm (default ring)")
    s = p.add_argument_group("stragglers")
    s.add_argument("--stragglers", default=DEFAULT_STRAGGLERS, choices=tuple(KINDS), metavar="KIND",
                   help=f"slowdown model of the straggler runs: {', '.join(KINDS)} "
                        f"(default lognormal with sigma=0.2; 'none' runs only the nominal case)")
    s.add_argument("--straggler-param", action="append", default=[], metavar="K=V",
                   help="a parameter of the model, repeatable, e.g. --straggler-param sigma=0.5 "
                        "(lognormal: mu, sigma; fixed: factor; shifted_exponential: shift, scale; "
                        "pareto: alpha, scale; slow_with_probability: p, factor)")
    s.add_argument("--straggler-scope", default="operation", choices=SCOPES,
                   help="draw a slowdown per compute operation (default) or once per node")
    s.add_argument("--straggler-cases", default="both", choices=("both", "off", "on"),
                   help="run without stragglers, with them, or both (default)")
    p.add_argument("--seed", type=int, default=1, help="scenario seed (default 1)")
    p.add_argument("--out", default="results/scaling", help="results folder (default results/scaling)")
    p.add_argument("--jobs", type=int, default=common.default_jobs(),
                   help="parallel worker processes (default: CPU count); results do not depend on it")
    p.add_argument("--no-plots", action="store_true", help="write the CSV only")
    common.add_sweep_options(p)
    common.add_max_memory_option(p)
    return p


def _straggler_spec(args, parser) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in args.straggler_param:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            parser.error(f"--straggler-param: expected K=V, got {item!r}")
        parsed = common.parse_scalar(value)
        if common.numeric_or_none(parsed) is None:
            parser.error(f"--straggler-param {key}: expected a number, got {value!r}")
        params[key.strip()] = float(parsed)
    # Given parameters override this study's defaults (sigma=0.2 for
    # lognormal), which override the model's own (workloads.stragglers.KINDS).
    params = {**DEFAULT_STRAGGLER_PARAMS.get(args.stragglers, {}), **params}
    data = {"kind": args.stragglers, **params}
    if args.straggler_scope != "operation":
        data["scope"] = args.straggler_scope
    try:
        StragglerSpec.from_dict(dict(data))
    except ValueError as exc:
        parser.error(str(exc))
    return data


def configurations(args, stragglers: dict[str, Any]) -> list[dict[str, Any]]:
    """Every (topology, mode, straggler case, N) of the study, in table order."""
    modes = ("strong", "weak") if args.mode == "both" else (args.mode,)
    cases = {"both": ("off", "on"), "off": ("off",), "on": ("on",)}[args.straggler_cases]
    if args.stragglers == "none":
        cases = ("off",)
    configs = []
    for topo in args.topologies:
        algorithm = common.DEFAULT_ALGORITHM[topo] if args.algorithm == "auto" else args.algorithm
        for mode in modes:
            for case in cases:
                for n in sizes_for(args, topo):
                    batch = args.global_batch // n if mode == "strong" else args.batch_per_rank
                    configs.append({
                        "topology": topo, "mode": mode, "stragglers": case, "n": n,
                        "algorithm": algorithm, "batch_per_rank": batch, "global_batch": batch * n,
                        "scenario": {
                            "name": f"scaling-{topo}-{mode}-N{n}-stragglers-{case}",
                            "seed": args.seed,
                            "topology": common.study_topology(topo, n),
                            "workload": {
                                "kind": "data_parallel",
                                "parameters": args.parameters,
                                "bytes_per_parameter": args.bytes_per_parameter,
                                "flops_per_sample": args.flops_per_sample,
                                "batch_per_rank": batch,
                                "bucket_bytes": args.bucket_bytes,
                                "algorithm": algorithm,
                                "inter_algorithm": args.inter_algorithm,
                            },
                            "stragglers": stragglers if case == "on" else {"kind": "none"},
                        },
                    })
    return configs


def sizes_for(args, topology: str) -> list[int]:
    """The sizes studied on ``topology``: --sizes, else the defaults."""
    return args.sizes if args.sizes is not None else list(DEFAULT_SIZES)


def _validate(args, parser) -> None:
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    for name in ("parameters", "bytes_per_parameter", "global_batch", "batch_per_rank", "bucket_bytes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.flops_per_sample >= 0:
        parser.error(f"--flops-per-sample must be >= 0, got {args.flops_per_sample}")
    if args.sizes is not None:
        bad = [n for n in args.sizes if n < 2]
        if bad:
            parser.error(f"--sizes: every N must be >= 2, got {bad}")
        args.sizes = sorted(set(args.sizes))
    args.topologies = list(dict.fromkeys(args.topologies))
    for topo in args.topologies:
        for n in sizes_for(args, topo):
            why = common.check_study_size(topo, n)
            if why:
                parser.error(f"--sizes: {why}")
    if args.mode in ("strong", "both"):
        bad = sorted({n for topo in args.topologies for n in sizes_for(args, topo) if args.global_batch % n})
        if bad:
            parser.error(f"--global-batch {args.global_batch} is not divisible by N = {bad} (strong scaling "
                         f"splits the global batch evenly)")


def _check_first(configs, parser, max_memory_bytes: int | None = None) -> None:
    # Validate the smallest and the largest N of each topology up front
    # (cheap), so that e.g. --algorithm hierarchical on a ring, or a size over
    # the memory limit, is one clear error, not a traceback from a worker process.
    chosen: dict[str, list] = {}
    for c in configs:
        first_and_largest = chosen.setdefault(c["topology"], [c, c])
        if c["n"] > first_and_largest[1]["n"]:
            first_and_largest[1] = c
    for first, largest in chosen.values():
        for c in (first, largest) if largest is not first else (first,):
            try:
                scenario_from_dict(c["scenario"], where=f"{c['topology']} N={c['n']}",
                                   max_memory_bytes=max_memory_bytes)
            except ScenarioError as exc:
                parser.error(str(exc))


def tabulate(configs: list[dict[str, Any]], results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration, with speedup and efficiency relative to the smallest N of its series."""
    rows = []
    for c, m in zip(configs, results):
        step = m["makespan_s"]
        rows.append({
            "topology": c["topology"], "mode": c["mode"], "stragglers": c["stragglers"], "n": c["n"],
            "algorithm": c["algorithm"], "batch_per_rank": c["batch_per_rank"], "global_batch": c["global_batch"],
            "step_s": step,
            "comm_share": m["comm_share"],
            "energy_per_step_j": m["energy_j"],
            "samples_per_s": c["global_batch"] / step if step > 0 else float("nan"),
            "energy_per_sample_j": m["energy_j"] / c["global_batch"],
            "compute_s_mean": m["compute_s_mean"],
            "wait_s_mean": m["wait_s_mean"],
            "messages": m["messages"],
        })
    base: dict[tuple, dict] = {}
    for row in rows:
        key = (row["topology"], row["mode"], row["stragglers"])
        if key not in base or row["n"] < base[key]["n"]:
            base[key] = row
    for row in rows:
        b = base[(row["topology"], row["mode"], row["stragglers"])]
        if row is b:
            speedup = 1.0  # exactly, not a ratio of two equal floats
        else:
            speedup = row["samples_per_s"] / b["samples_per_s"]
        row["speedup"] = speedup
        row["efficiency"] = 1.0 if row is b else speedup * b["n"] / row["n"]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    max_memory_bytes = common.start_or_report(args, args.out)
    if max_memory_bytes is None:
        return 2
    _validate(args, parser)
    stragglers = _straggler_spec(args, parser)
    configs = configurations(args, stragglers)
    _check_first(configs, parser, max_memory_bytes)

    def label(i: int, m: dict) -> str:
        c = configs[i]
        return (f"{c['topology']} N={c['n']} {c['mode']} stragglers={c['stragglers']}  "
                f"step {m['makespan_s']:.4g} s  ({m['wall_s']:.2f} s wall)")

    # Submission order only: flat algorithms cost ~N^2 messages, grouped ones ~N.
    cost = [c["n"] ** 2 if c["algorithm"] != "hierarchical" else c["n"] for c in configs]
    tasks = [(common.run_scenario_dict, (c["scenario"], "sim", None, c["scenario"]["name"], max_memory_bytes))
             for c in configs]
    try:
        results = common.run_many(tasks, jobs=args.jobs, label=label, cost=cost,
                                  cache_dir=Path(args.out) / common.POINTS_DIR, **common.sweep_kwargs(args))
    except common.SweepError as exc:
        # A configuration whose result is not finite (or that cannot finish): say which, not a traceback.
        print("error: a configuration could not run to the end", file=sys.stderr)
        common.report_sweep_failures(
            exc, lambda i: f"{configs[i]['topology']} N={configs[i]['n']} {configs[i]['mode']} "
                           f"stragglers={configs[i]['stragglers']}")
        return 1
    except common.SchedulerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    rows = tabulate(configs, results)

    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    out = common.make_out_dir(args.out)
    csv_path = out / "scaling.csv"
    frame.to_csv(csv_path, index=False)
    print(common.format_table(rows, TABLE))
    print()
    print("speedup = throughput(N)/throughput(N_min); efficiency = speedup*N_min/N; "
          "comm share = mean over ranks of (comm_s + wait_s)/step time")
    written = [csv_path]
    if not args.no_plots:
        written += plots.plot_scaling(frame, out)
    print(f"wrote {', '.join(p.name for p in written)} to {out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
