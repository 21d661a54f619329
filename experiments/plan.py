"""Which parallel layout trains a transformer fastest on a GPU cluster, and does it fit?

    python -m experiments.plan --model gpt3_175b --cluster dgx_a100 --gpus 64 --global-batch 16 \\
        --tp 8 --micro-batch 1,2 --zero 1 --recompute selective --sequence-parallel on --max-points 8
    python -m experiments.plan --model my_model.yaml --cluster dgx_h100 --gpus 16 --seq-len 4096

Four steps:

1. Enumerate layouts: every combination of the candidate tensor-parallel
   sizes (default: the divisors of the server's GPUs that divide the model's
   heads), pipeline stages (default: divisors of the layers and powers of
   two, stages of unequal depth balanced), virtual stages
   (interleaved only; default 2 and 4), expert-parallel
   sizes (MoE models only; default: divisors of the experts), micro-batch
   sizes (default: divisors of the global batch), ZeRO stages, recompute
   modes, sequence parallelism (only with tp > 1) and schedules; dp is
   GPUs / (tp x pp).  A combination that does not divide (tp x pp not
   dividing the GPUs, pp x v not dividing the layers, the global batch not a
   multiple of micro-batch x dp, ep not dividing dp, interleaved with pp < 2
   or micro-batches not a multiple of pp, ...) is dropped and counted.
2. The memory model (``workloads.transformer.memory``) gives each layout's
   peak bytes per GPU (its fullest pipeline stage); a layout over the GPU's
   memory is not simulated, but stays in the CSV with ``fits=False`` and the
   reason.
3. The fitting layouts, at most ``--max-points`` of them, run through the
   simulated executor in parallel worker processes.  When there are more,
   the ones simulated are those with the smallest *estimated* step time
   (``workloads.transformer.estimate``: compute at peak, tensor-, pipeline-
   and data-parallel collectives as rings on the cluster's links, the
   schedule's bubble; milliseconds a layout), ties broken by the layout's
   fields: the estimate only chooses, the simulator ranks.  A point that
   fails (a deadlock, the simulator's own memory limit ``--max-memory``, an
   error) is recorded with its error and the search goes on.
4. The best ``--top`` are printed, ranked by simulated step time (ties: the
   layout's fields, in the CSV's column order), each with what it loses to
   the first (the part of the step that grew most), and how well the
   estimate ranked the simulated layouts (Spearman); ``plan.csv`` (every
   enumerated layout that divides) and ``plan.png`` (step time against memory
   per GPU) go to ``--out``.

The same arguments give the same plan.csv, byte for byte: wall time is only
printed.  Exit codes: 0 done, 1 the search ran but no layout could be
simulated, 2 bad input (unknown model or cluster, a GPU count that is not a
multiple of the server's GPUs, no layout that divides or fits).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from executors import get_executor
from experiments import common, plots
from experiments.output import make_out_dir
from experiments.run import training_summary
from topologies.builders import gpu_cluster
from topologies.gpu_cluster import GPU_CLUSTER_DEFAULTS
from topologies.hardware import cluster_presets, load_cluster_preset
from topologies.model import TopologyError
from topologies.text import parse_bytes
from workloads.scenario import scenario_from_dict
from workloads.transformer import TransformerTraining
from workloads.transformer.estimate import Fabric, estimate_step
from workloads.transformer.memory import GIB, check_fits, memory_per_stage
from workloads.transformer.spec import (PRECISION_BYTES, RECOMPUTE, SCHEDULES, ModelSpec, load_model,
                                        model_presets)

# Layout fields, in the order of the CSV's columns and of the tie-break.
LAYOUT = ("tp", "pp", "dp", "ep", "micro_batch", "schedule", "virtual_stages", "zero", "recompute",
          "sequence_parallel")
EXPOSED = ("tp", "pp", "dp", "ep")
RESULT_COLUMNS = ("step_time_s", "tokens_per_s", "mfu", "hfu", "bubble") + tuple(f"exposed_{k}_s" for k in EXPOSED)
DEFAULT_SCHEDULES = ("1f1b", "interleaved")
DEFAULT_VIRTUAL_STAGES = (2, 4)
STATUS_ORDER = {"ok": 0, "failed": 1, "not simulated": 2, "does not fit": 3}

COLUMNS_HELP = """\
columns of the table and of plan.csv:
  rank               1 = fastest simulated step; empty for layouts not simulated or failed
  tp pp dp ep        tensor, pipeline, data and expert-parallel sizes (tp x pp x dp = GPUs)
  micro_batch (mb)   sequences per micro-batch; microbatches (m) = global batch / (mb x dp)
  schedule, virtual_stages (v)   pipeline schedule; model chunks per GPU (interleaved)
  zero, recompute, sequence_parallel (sp)   ZeRO stage, activation recomputation, Korthikanti's SP
  mem_gib / memory_bytes          memory per GPU of the fullest pipeline stage (memory model)
  weights/gradients/optimizer/activations_bytes   that stage's parts
  fits, over_bytes, memory_note   against the GPU's memory: bytes over it and the memory model's reason
  estimate_s         estimated step time (workloads.transformer.estimate: compute at peak, ring collectives on
                     the cluster's links, the schedule's bubble); orders --max-points
  status             ok, failed (see error), not simulated (beyond --max-points), does not fit
  step_time_s, tokens_per_s       simulated time of one step, global batch x seq_len / step time
  mfu, hfu           model / hardware FLOPs per step / (step time x GPUs x peak FLOP/s)
  bubble             measured pipeline bubble: share of the step a GPU neither computes nor waits on TP/DP/EP
  exposed_tp/pp/dp/ep_s   communication not hidden behind compute, per step, mean over GPUs
  estimate_compute/bubble/tp/pp/dp_s   the estimate's parts
  behind_first (behind #1)   the step time it loses to the first simulated, and the part that grew most
  error              why a point failed (a deadlock, the simulator's memory limit, a bad value)"""

EPILOG = f"""\
restricting the search: each of --tp, --pp, --virtual-stages, --ep, --micro-batch, --zero, --recompute,
--schedule and --sequence-parallel takes a comma-separated list that replaces its default; values that do
not divide are dropped and counted (so --tp 16 extends the search past one server).  The search simulates
at most --max-points fitting layouts (default 16, fewer past 1,024 GPUs), the ones with the smallest estimated
step time (a closed
form: compute at peak, collectives as rings on the cluster's links, the bubble; see docs/model.md).

cost: a point's operations grow as GPUs x micro-batches x layers / pp = tp x layers x global batch /
micro-batch; GPT-3 175B on 64 GPUs with tp 8, pp 8 and 8 micro-batches is 160k operations, about 10 s on one
idle core.  Raise --micro-batch, lower --global-batch or --max-points to search faster; --jobs runs points side
by side.

{COLUMNS_HELP}

exit codes: 0 done, 1 nothing could be simulated, 2 bad input or no layout fits.
"""


class PlanError(ValueError):
    """Bad input to the planner: one line, exit code 2."""


# -- parsing the options -----------------------------------------------------------------


def _int_list(text: str) -> tuple[int, ...]:
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 0:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
        values.append(int(part))
    return tuple(dict.fromkeys(values))


def _positive_int_list(text: str) -> tuple[int, ...]:
    values = _int_list(text)
    if 0 in values:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def _choice_list(choices: Sequence[str]):
    def parse(text: str) -> tuple[str, ...]:
        values = tuple(dict.fromkeys(p.strip() for p in text.split(",")))
        bad = [v for v in values if v not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"{', '.join(map(repr, bad))} not one of {', '.join(choices)}")
        return values
    return parse


def _zero_list(text: str) -> tuple[int, ...]:
    values = _int_list(text)
    if any(v > 3 for v in values):
        raise argparse.ArgumentTypeError(f"ZeRO stages are 0, 1, 2 or 3, got {text!r}")
    return values


def _sp_list(text: str) -> tuple[bool, ...]:
    return tuple({"on": True, "off": False}[v] for v in _choice_list(("on", "off"))(text))


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.plan",
        description="Search the tensor/pipeline/data/expert-parallel layouts of a transformer on a GPU cluster: "
                    "drop those that do not divide or do not fit in memory, simulate the rest and rank them by "
                    "step time; print the best and write plan.csv and plan.png.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="NAME|FILE",
                   help=f"model preset ({', '.join(model_presets())}) or a model file (YAML/JSON of "
                        "workloads.transformer.spec.ModelSpec's fields)")
    p.add_argument("--cluster", required=True, metavar="NAME|FILE",
                   help=f"cluster preset ({', '.join(cluster_presets())}) or a cluster preset file "
                        "(keywords of the gpu_cluster builder, e.g. another gpus_per_node or node_type)")
    p.add_argument("--gpus", type=_positive_int, metavar="N", required=True,
                   help="GPUs in all; a multiple of the cluster's GPUs per server (servers = GPUs / that)")
    p.add_argument("--global-batch", type=_positive_int, metavar="N", default=None,
                   help="sequences per optimizer step (default: as many as GPUs, at most 16M tokens: 2,048 "
                        "sequences of 8,192)")
    p.add_argument("--seq-len", type=_positive_int, metavar="N", help="override the model's sequence length")
    p.add_argument("--precision", default="bf16", choices=tuple(PRECISION_BYTES),
                   help="training precision (default bf16)")
    g = p.add_argument_group("the search (comma-separated lists; each replaces its default)")
    g.add_argument("--tp", type=_positive_int_list, metavar="1,2,4,8",
                   help="tensor-parallel sizes (default: divisors of the GPUs per server that divide the heads)")
    g.add_argument("--pp", type=_positive_int_list, metavar="1,2,...",
                   help="pipeline stages (default: divisors of the layers and powers of two; stages of unequal "
                        "depth are balanced)")
    g.add_argument("--virtual-stages", type=_positive_int_list, metavar="2,4", default=DEFAULT_VIRTUAL_STAGES,
                   help="model chunks per GPU for the interleaved schedule (default 2,4: more chunks shrink the "
                        "bubble but add pipeline transfers)")
    g.add_argument("--ep", type=_positive_int_list, metavar="1,2,...",
                   help="expert-parallel sizes, MoE models only (default: divisors of the experts)")
    g.add_argument("--micro-batch", type=_positive_int_list, metavar="1,2,...",
                   help="micro-batch sizes (default: divisors of the global batch)")
    g.add_argument("--zero", type=_zero_list, metavar="0,1,2,3", default=(0, 1, 2, 3),
                   help="ZeRO stages (default 0,1,2,3)")
    g.add_argument("--recompute", type=_choice_list(tuple(RECOMPUTE)), metavar="none,selective,full",
                   default=tuple(RECOMPUTE),
                   help="activation recomputation (default none,selective,full)")
    g.add_argument("--schedule", type=_choice_list(tuple(SCHEDULES)), metavar="1f1b,interleaved,gpipe",
                   default=DEFAULT_SCHEDULES,
                   help="pipeline schedules (default 1f1b,interleaved; gpipe has 1F1B's bubble and holds "
                        "more activations, so add it only to compare)")
    g.add_argument("--sequence-parallel", type=_sp_list, metavar="on,off", default=(False, True),
                   help="on, off or on,off (default); on only applies with tp > 1")
    g.add_argument("--max-points", type=_positive_int, metavar="N", default=None,
                   help="simulate at most this many fitting layouts, those with the smallest estimated step time "
                        "(default 16 up to 1,024 GPUs, then fewer as a point's simulation grows with the GPUs: "
                        "16 x 1024 / GPUs, at least 2); the others are in plan.csv as 'not simulated'")
    p.add_argument("--top", type=_positive_int, metavar="N", default=10,
                   help="rows of the printed ranking (default 10)")
    p.add_argument("--out", help="results folder (default results/plan-<model>-<cluster>-<gpus>)")
    p.add_argument("--jobs", type=_positive_int, metavar="N", default=common.default_jobs(),
                   help="parallel worker processes (default: CPU count); results do not depend on it")
    p.add_argument("--seed", type=int, default=1, help="scenario seed (default 1)")
    p.add_argument("--no-plots", action="store_true", help="write the CSV only")
    common.add_sweep_options(p)
    common.add_max_memory_option(p)
    return p


# -- the search space ----------------------------------------------------------------------


def divisors(n: int) -> tuple[int, ...]:
    return tuple(d for d in range(1, n + 1) if n % d == 0)


@dataclasses.dataclass(frozen=True)
class Cluster:
    """What the planner needs of a cluster: its name, the preset to hand the builder, and one GPU's figures."""

    name: str
    preset: str
    gpus_per_node: int
    memory_bytes: float
    peak_flops_per_s: float
    fabric: Fabric | None = None


def load_cluster(name_or_path: str, precision: str) -> Cluster:
    """The cluster preset ``name_or_path``, measured by building one server of it (PlanError if bad)."""
    try:
        preset = load_cluster_preset(name_or_path)
        shown = name_or_path if name_or_path in cluster_presets() else str(Path(name_or_path).resolve())
        server = gpu_cluster(1, preset=shown)
        peak = server.peak_flops_per_s(0, precision)
    except (TopologyError, ValueError, OSError) as exc:
        raise PlanError(f"--cluster: {exc}") from None
    stem = preset.name if name_or_path in cluster_presets() else Path(name_or_path).stem
    kw = {**GPU_CLUSTER_DEFAULTS, **preset.keywords}
    fabric = Fabric(float(peak), server.nranks, float(kw["scale_up_bandwidth_bytes_per_s"]),
                    float(kw["scale_up_latency_s"]), float(kw["scale_out_bandwidth_bytes_per_s"]),
                    float(kw["scale_out_latency_s"]))
    return Cluster(stem, shown, server.nranks, float(server.rank_memory_bytes[0]), float(peak), fabric)


def resolve_model(name_or_path: str, seq_len: int | None) -> tuple[Any, ModelSpec, str]:
    """(the workload's ``model`` value, the spec, a short name); PlanError if unknown or bad."""
    try:
        spec = load_model(name_or_path, "--model")
        if seq_len is not None:
            spec = ModelSpec.from_dict({**spec.to_dict(), "seq_len": seq_len}, "--model with --seq-len")
    except ValueError as exc:
        raise PlanError(str(exc)) from None
    preset = name_or_path in model_presets()
    name = name_or_path if preset else (spec.name or Path(name_or_path).stem)
    # A preset goes by name; a file or an override as the mapping, so workers need no file.
    value = name_or_path if preset and seq_len is None else spec.to_dict()
    return value, spec, name


@dataclasses.dataclass
class Search:
    model_value: Any
    model: ModelSpec
    gpus: int
    global_batch: int
    precision: str
    candidates: dict[str, tuple]


# The largest batch published for models of this size: Llama 3 405B's 16M tokens (2,048 sequences of 8,192).
MAX_DEFAULT_BATCH_TOKENS = 16 * 2**20


def default_global_batch(gpus: int, seq_len: int) -> int:
    """One sequence per GPU, at most ``MAX_DEFAULT_BATCH_TOKENS`` a step (a 16K-GPU job does not train on
    134M-token batches)."""
    return max(1, min(gpus, MAX_DEFAULT_BATCH_TOKENS // seq_len))


def default_max_points(gpus: int) -> int:
    """16 layouts simulated up to 1,024 GPUs; past that a point costs more (a 16,384-GPU step: ~40 s on one
    core), so fewer: 16 x 1024 / GPUs, at least 2."""
    return max(2, min(16, 16 * 1024 // gpus))


def candidates(args, model: ModelSpec, gpus_per_node: int, global_batch: int) -> dict[str, tuple]:
    """Each dimension's candidate values: the option's list, or the default (module docstring)."""
    return {
        "tp": args.tp or tuple(t for t in divisors(gpus_per_node) if model.heads % t == 0),
        # Stages of unequal depth are balanced (workloads.transformer.spec.stage_layers): the powers of two as
        # well as the layers' divisors (Llama 3 405B's 126 layers ran on 16 stages).
        "pp": args.pp or tuple(sorted(set(divisors(model.layers)) | {2 ** k for k in range(1, model.layers.bit_length())
                                                                      if 2 ** k <= model.layers})),
        "virtual_stages": args.virtual_stages,
        "ep": (args.ep or divisors(model.experts)) if model.moe else (1,),
        "micro_batch": args.micro_batch or divisors(global_batch),
        "zero": args.zero,
        "recompute": args.recompute,
        "schedule": args.schedule,
        "sequence_parallel": args.sequence_parallel,
    }


def enumerate_layouts(search: Search) -> tuple[list[dict], int]:
    """(the layouts that divide, each a dict of the LAYOUT fields; how many combinations did not divide).

    Combinations that mean nothing are not made at all (sequence parallelism
    with tp = 1, virtual stages without the interleaved schedule): the count
    is of the others that the workload rejects.
    """
    c = search.candidates
    layouts, dropped = [], 0
    for schedule, tp, pp, ep, mb, zero, recompute, sp in itertools.product(
            c["schedule"], c["tp"], c["pp"], c["ep"], c["micro_batch"], c["zero"], c["recompute"],
            c["sequence_parallel"]):
        if sp and tp == 1:
            continue
        for v in (c["virtual_stages"] if schedule == "interleaved" else (1,)):
            fields = {"tp": tp, "pp": pp, "ep": ep, "micro_batch": mb, "schedule": schedule,
                      "virtual_stages": v, "zero": zero, "recompute": recompute, "sequence_parallel": sp}
            dp = layout_dp(search, fields)
            if dp is None:
                dropped += 1
            else:
                layouts.append({**fields, "dp": dp})
    layouts.sort(key=layout_key)
    return layouts, dropped


def workload_dict(search: Search, fields: dict) -> dict:
    data = {"kind": "transformer", "model": search.model_value, "global_batch": search.global_batch,
            "precision": search.precision}
    data.update({k: fields[k] for k in LAYOUT if k in fields})
    return data


def layout_dp(search: Search, fields: dict) -> int | None:
    """dp of the layout if the workload accepts it on the GPUs (it checks every division), else None."""
    if search.gpus % (fields["tp"] * fields["pp"]):
        return None
    try:
        workload = _workload(search, fields)
        workload.microbatches(search.gpus)
        return workload.parallel(search.gpus).dp
    except ValueError:
        return None


def _workload(search: Search, fields: dict) -> TransformerTraining:
    data = workload_dict(search, fields)
    data.pop("kind")
    data["model"] = search.model
    data.pop("dp", None)
    return TransformerTraining(**data)


def layout_key(row: dict) -> tuple:
    """The tie-break: the LAYOUT fields in order, schedules and recompute modes in their options' order
    (gpipe, 1f1b, interleaved; none, selective, full), sequence parallelism off before on."""
    return tuple(SCHEDULES.index(row[k]) if k == "schedule" else RECOMPUTE.index(row[k]) if k == "recompute"
                 else row[k] for k in LAYOUT)


def describe(row: dict) -> str:
    text = f"tp={row['tp']} pp={row['pp']} dp={row['dp']}"
    if row["ep"] > 1:
        text += f" ep={row['ep']}"
    text += f" mb={row['micro_batch']} {row['schedule']}"
    if row["schedule"] == "interleaved":
        text += f" v={row['virtual_stages']}"
    return text + (f" zero={row['zero']} rc={row['recompute']}"
                   + (" sp" if row["sequence_parallel"] else ""))


def assess(search: Search, layout: dict, cluster: Cluster) -> dict:
    """The layout's row before simulation: micro-batches, memory per GPU against the GPU's, estimated step time."""
    workload = _workload(search, layout)
    par = workload.parallel(search.gpus)
    m = workload.microbatches(search.gpus)
    reports = memory_per_stage(search.model, par, workload.training, search.gpus)
    peak = max(reports, key=lambda r: (r.total_bytes, -r.stage))
    memory = float(peak.total_bytes)
    note = check_fits(reports, cluster.memory_bytes) if math.isfinite(cluster.memory_bytes) else ""
    estimate = estimate_step(search.model, workload.training, par, m, cluster.fabric) \
        if cluster.peak_flops_per_s > 0 else None
    return {
        **layout, "microbatches": m,
        "memory_bytes": memory, "mem_gib": memory / GIB,
        "weights_bytes": peak.weights_bytes, "gradients_bytes": peak.gradients_bytes,
        "optimizer_bytes": peak.optimizer_bytes, "activations_bytes": float(peak.activations_bytes),
        "fits": not note, "over_bytes": max(0.0, memory - cluster.memory_bytes) if note else 0.0,
        "memory_note": note, "estimate_s": estimate.step_s if estimate else 0.0,
        **{f"estimate_{k}_s": v for k, v in (estimate.parts() if estimate else {}).items()},
    }


# -- simulating a point ----------------------------------------------------------------------


def simulate_point(data: dict, max_memory_bytes: int | None) -> dict:
    """Run one scenario and return its step report's numbers, or {"error": ...}; never raises.

    Top-level so that the process pool can pickle it.  A failure is data: the
    search records it and goes on.
    """
    started = time.perf_counter()
    try:
        scenario = scenario_from_dict(data, where="layout", max_memory_bytes=max_memory_bytes, records=False)
        # The step's report needs no records: a folded run keeps its representatives' only.
        result = get_executor("sim", expand_records=False).run(scenario)
        report = training_summary(scenario, result)
        if report is None:
            raise ValueError("the run produced no training step (makespan 0)")
    except MemoryError:
        return {"error": "out of memory on this machine while simulating", "wall_s": time.perf_counter() - started}
    except Exception as exc:  # noqa: BLE001 - any failure of one point is recorded, not fatal
        text = " ".join(str(exc).split()) or type(exc).__name__
        return {"error": f"{type(exc).__name__}: {text}", "wall_s": time.perf_counter() - started}
    comm = report["exposed_comm_s"]
    out = {"step_time_s": report["step_time_s"], "tokens_per_s": report["tokens_per_s"], "mfu": report["mfu"],
           "hfu": report["hfu"], "bubble": report["bubble_fraction"],
           "wall_s": time.perf_counter() - started}
    for kind in EXPOSED:
        out[f"exposed_{kind}_s"] = float(comm.get(kind, 0.0))
    return out


def scenario_dict(search: Search, cluster: Cluster, row: dict, seed: int) -> dict:
    return {
        "name": f"plan {describe(row)}",
        "seed": seed,
        "topology": {"builder": "gpu_cluster", "preset": cluster.preset, "nodes": search.gpus // cluster.gpus_per_node},
        "workload": workload_dict(search, row),
    }


def simulation_cost(row: dict) -> float:
    """A relative cost, to start the dearest points first: GPUs x micro-batches x layers per stage
    per GPU, i.e. tp x global batch / micro-batch for a given model."""
    return float(row["tp"] * row["dp"] * row["microbatches"])


# -- the command ------------------------------------------------------------------------------

CSV_COLUMNS = (("rank",) + LAYOUT + ("microbatches", "status", "step_time_s", "tokens_per_s", "mfu", "hfu", "bubble")
               + tuple(f"exposed_{k}_s" for k in EXPOSED)
               + ("memory_bytes", "weights_bytes", "gradients_bytes", "optimizer_bytes", "activations_bytes", "fits",
                  "over_bytes", "memory_note", "estimate_s", "estimate_compute_s", "estimate_bubble_s",
                  "estimate_tp_s", "estimate_pp_s", "estimate_dp_s", "behind_first", "error"))


def rank_rows(rows: list[dict]) -> list[dict]:
    """Rows in the CSV's order: simulated by step time, then failed, not simulated, not fitting; ties by layout."""
    def key(row):
        status = STATUS_ORDER[row["status"]]
        time_key = row["step_time_s"] if status == 0 else 0.0
        return (status, time_key, layout_key(row))
    ordered = sorted(rows, key=key)
    k = 0
    for row in ordered:
        if row["status"] == "ok":
            k += 1
            row["rank"] = k
        else:
            row["rank"] = None
    return ordered


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    wall_start = time.perf_counter()
    try:
        model_value, model, model_name, cluster = load_inputs(args)
    except PlanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    global_batch = args.global_batch or default_global_batch(args.gpus, model.seq_len)
    out = Path(args.out or Path("results") / common.safe_name(f"plan-{model_name}-{cluster.name}-{args.gpus}"))
    max_memory_bytes = common.start_or_report(args, out)
    if max_memory_bytes is None:
        return 2
    search = Search(model_value, model, args.gpus, global_batch, args.precision,
                    candidates(args, model, cluster.gpus_per_node, global_batch))
    try:
        rows, fitting = assess_layouts(search, cluster, model_name)
    except PlanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not fitting:
        return report_nothing_fits(rows, out)
    chosen = choose_layouts(fitting, args.max_points or default_max_points(args.gpus))
    try:
        results = simulate_layouts(chosen, search, cluster, args, out, max_memory_bytes)
    except common.SchedulerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    for row, result in zip(chosen, results):
        if "error" in result:
            row.update(status="failed", error=result["error"])
        else:
            row.update({k: v for k, v in result.items() if k != "wall_s"}, status="ok")
    return report_plan(rank_rows(rows), model, cluster, args, out, wall_start)


def load_inputs(args) -> tuple[Any, ModelSpec, str, Cluster]:
    """(the model's workload value, its spec, its short name, the cluster); PlanError if one is bad or the GPUs
    do not fill whole servers."""
    model_value, model, model_name = resolve_model(args.model, args.seq_len)
    cluster = load_cluster(args.cluster, args.precision)
    if args.gpus % cluster.gpus_per_node:
        raise PlanError(f"--gpus {args.gpus} is not a multiple of the {cluster.gpus_per_node} GPUs per server "
                        f"of {cluster.name}")
    return model_value, model, model_name, cluster


def assess_layouts(search: Search, cluster: Cluster, model_name: str) -> tuple[list[dict], list[dict]]:
    """(every layout that divides, assessed and not yet simulated; those that fit in memory), as printed;
    PlanError if none divides."""
    layouts, undivided = enumerate_layouts(search)
    servers = search.gpus // cluster.gpus_per_node
    print(f"plan {model_name} (seq_len {search.model.seq_len}) on {search.gpus} GPUs of {cluster.name} "
          f"({servers} server{'s' if servers > 1 else ''}, {cluster.memory_bytes / GIB:.4g} GiB per GPU), "
          f"global batch {search.global_batch}, {search.precision}")
    print(f"layouts: {len(layouts) + undivided} combinations, {undivided} do not divide, {len(layouts)} do")
    if not layouts:
        raise PlanError("no layout divides: relax --tp, --pp, --micro-batch, --virtual-stages or --ep, or change "
                        "--gpus or --global-batch")
    rows = [assess(search, layout, cluster) for layout in layouts]
    fitting = [r for r in rows if r["fits"]]
    over = len(rows) - len(fitting)
    if math.isfinite(cluster.memory_bytes):
        print(f"memory: {over} of {len(rows)} do not fit in {cluster.memory_bytes / GIB:.4g} GiB per GPU "
              f"(kept in plan.csv with fits=False and why), {len(fitting)} fit")
    else:
        print("memory: the cluster's node type gives no memory capacity; nothing is dropped for memory")
    for row in rows:
        row.update({"status": "does not fit" if not row["fits"] else "not simulated", "error": ""})
        for column in RESULT_COLUMNS:
            row[column] = math.nan
    return rows, fitting


def report_nothing_fits(rows: list[dict], out: Path) -> int:
    """Say which layout comes closest and write plan.csv, so that each layout's reason can be read; exit 2."""
    smallest = min(rows, key=lambda r: (r["memory_bytes"], layout_key(r)))
    print(f"error: no layout fits in memory; the smallest needs {smallest['mem_gib']:.1f} GiB per GPU "
          f"({describe(smallest)}): add GPUs, allow zero 3, full recompute or more pp", file=sys.stderr)
    written = write_csv(rank_rows(rows), out)
    print(f"wrote {', '.join(p.name for p in written)} (why each layout does not fit) to {out}/")
    return 2


def choose_layouts(fitting: list[dict], max_points: int) -> list[dict]:
    """The fitting layouts to simulate: at most ``max_points``, by estimated step time (module docstring)."""
    chosen = sorted(fitting, key=lambda r: (r["estimate_s"], layout_key(r)))[:max_points]
    if len(chosen) < len(fitting):
        print(f"simulating {len(chosen)} of the {len(fitting)} fitting layouts, those with the smallest estimated "
              f"step time (--max-points {max_points})")
    else:
        print(f"simulating {len(chosen)} layouts")
    return chosen


def simulate_layouts(chosen: list[dict], search: Search, cluster: Cluster, args, out: Path,
                     max_memory_bytes: int) -> list[dict]:
    """Each chosen layout's ``simulate_point`` result, in order; a point that failed is ``{"error": ...}``."""
    tasks = [(simulate_point, (scenario_dict(search, cluster, row, args.seed), max_memory_bytes)) for row in chosen]

    def label(i: int, result: dict) -> str:
        what = describe(chosen[i])
        if "error" in result:
            return f"{what}  failed: {result['error'][:160]}"
        return f"{what}  step {result['step_time_s']:.4g} s  ({result['wall_s']:.1f} s wall)"

    try:
        # simulate_point returns a failure as data: cache successes only, so a rerun retries the rest.
        return common.run_many(tasks, jobs=args.jobs, label=label, cost=[simulation_cost(r) for r in chosen],
                               cache_dir=out / common.POINTS_DIR, **common.sweep_kwargs(args),
                               cache_if=lambda result: "error" not in result)
    except common.SweepError as exc:
        # simulate_point never raises; a failure here is the worker's own (e.g. a lost worker).
        common.report_sweep_failures(exc, lambda i: describe(chosen[i]))
        results = list(exc.results)
        for i, why in exc.failures:
            results[i] = {"error": why}
        return results


def report_plan(ordered: list[dict], model: ModelSpec, cluster: Cluster, args, out: Path, wall_start: float) -> int:
    """Write plan.csv (and plan.png) from the ranked rows and print the best; 0, or 1 if none was simulated."""
    ok = [r for r in ordered if r["status"] == "ok"]
    for row in ordered:
        row["behind_first"] = behind(row, ok[0]) if ok and row["status"] == "ok" and row is not ok[0] else ""
    written = write_csv(ordered, out)
    failed = sum(r["status"] == "failed" for r in ordered)
    print()
    if ok:
        print(f"best {min(args.top, len(ok))} of {len(ok)} simulated layouts, by step time:")
        print(common.format_table(ok[:args.top], table_columns(model.moe, "interleaved" in args.schedule)))
        print()
        print("step s: simulated step; MFU: model FLOPs / (step x GPUs x peak); mem: memory per GPU, fullest stage; "
              "exposed TP/PP/DP/EP: communication not hidden behind compute, s per step (mean over GPUs); "
              "behind #1: the step time it loses to the first, and the part that loses most")
        if len(ok) >= 3:
            rho = spearman([r["estimate_s"] for r in ok], [r["step_time_s"] for r in ok])
            ratio = float(pd.Series([r["estimate_s"] / r["step_time_s"] for r in ok]).median())
            print(f"the estimate against the simulation over these {len(ok)} layouts: Spearman rank correlation "
                  f"{rho:.2f}, estimate / simulated step {ratio:.2f} (median)")
    if failed:
        print(failure_summary([r for r in ordered if r["status"] == "failed"]))
    if not args.no_plots and ok:
        frame = pd.DataFrame(ordered, columns=CSV_COLUMNS)
        written += plots.plot_plan(frame, out, capacity_bytes=cluster.memory_bytes)
    print(f"wrote {', '.join(p.name for p in written)} to {out}/ ({time.perf_counter() - wall_start:.0f} s wall)")
    if not ok:
        print("error: no layout could be simulated; see the error column of plan.csv", file=sys.stderr)
        return 1
    return 0


TABLE = (("rank", "#", "d"), ("tp", "tp", "d"), ("pp", "pp", "d"), ("dp", "dp", "d"), ("ep", "ep", "d"),
         ("micro_batch", "mb", "d"), ("microbatches", "m", "d"), ("schedule", "schedule", ""),
         ("virtual_stages", "v", "d"), ("zero", "zero", "d"), ("recompute", "recompute", ""),
         ("sp", "sp", ""), ("step_time_s", "step s", ".4g"), ("tokens_per_s", "tokens/s", ".4g"),
         ("mfu_pct", "MFU %", ".1f"), ("mem_gib", "mem GiB", ".1f"), ("exposed_tp_s", "TP s", ".3g"),
         ("exposed_pp_s", "PP s", ".3g"), ("exposed_dp_s", "DP s", ".3g"), ("exposed_ep_s", "EP s", ".3g"),
         ("behind_first", "behind #1", ""))


def failure_summary(failed: list[dict]) -> str:
    """The failed points by reason: how many went over the simulator's memory limit (and what would let
    them run), and the first other error as it was."""
    over = [r for r in failed if "over the limit of" in r["error"]]
    lines = [f"{len(failed)} layout(s) failed in the simulator (status=failed, error in plan.csv):"]
    if over:
        estimates = []
        for row in over:
            text = row["error"].split("need an estimated ", 1)[-1].split(" of memory", 1)[0]
            estimates.append(text)
        limit = over[0]["error"].split("over the limit of ", 1)[-1].split(";", 1)[0].split(" (", 1)[0]
        low, high = min(estimates, key=parse_bytes), max(estimates, key=parse_bytes)
        lines.append(f"  {len(over)} over the simulator's memory limit of {limit} (estimated {low}"
                     + (f" to {high}" if high != low else "") + "): raise it with --max-memory, "
                     "or search a smaller --global-batch (the operations grow with it)")
    other = [r for r in failed if r not in over]
    if other:
        lines.append(f"  {len(other)} other(s), the first: {describe(other[0])}: {other[0]['error'][:300]}")
    return "\n".join(lines)


def behind(row: dict, first: dict) -> str:
    """Why ``row`` is slower than ``first``: the step time it loses, and the part (bubble, an exposed
    communication, compute and the rest) that grew most."""
    lost = row["step_time_s"] - first["step_time_s"]
    if lost <= 1e-9 * first["step_time_s"]:
        return "tie"
    parts = {kind.upper(): row[f"exposed_{kind}_s"] - first[f"exposed_{kind}_s"] for kind in EXPOSED}
    parts["bubble"] = row["bubble"] * row["step_time_s"] - first["bubble"] * first["step_time_s"]
    parts["compute"] = lost - sum(parts.values())
    name, value = max(parts.items(), key=lambda kv: kv[1])
    return f"+{lost:.3g} s: {name} +{value:.3g} s"


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(((rx - rx.mean()) * (ry - ry.mean())).mean() / (rx.std() * ry.std()))


def table_columns(moe: bool, interleaved: bool) -> tuple:
    """The printed table's columns: ep only for a MoE model, v only when the interleaved schedule is searched."""
    drop = set(() if moe else ("ep", "exposed_ep_s")) | set(() if interleaved else ("virtual_stages",))
    return tuple(c for c in TABLE if c[0] not in drop)


def write_csv(rows: list[dict], out: Path) -> list[Path]:
    for row in rows:
        row["sp"] = "on" if row["sequence_parallel"] else "off"
        row["mfu_pct"] = 100 * row["mfu"] if isinstance(row.get("mfu"), float) else math.nan
    out = make_out_dir(out)
    path = out / "plan.csv"
    frame = pd.DataFrame(rows, columns=CSV_COLUMNS)
    frame["rank"] = frame["rank"].astype("Int64")
    frame.to_csv(path, index=False)
    return [path]


if __name__ == "__main__":
    raise SystemExit(main())
