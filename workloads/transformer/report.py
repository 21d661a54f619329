"""The report of a transformer training step, from a run's tables.

Time per step, tokens/s, MFU and HFU (``flops``), the measured and the ideal
pipeline bubble (``schedule``), exposed communication by group kind, and
each stage's memory per GPU (``memory``).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from workloads.transformer.flops import hardware_flops_per_step, model_flops_per_step
from workloads.transformer.schedule import ideal_bubble_fraction

if TYPE_CHECKING:  # the workload imports this report, not the other way round
    from workloads.transformer.workload import TransformerTraining

# The names of the groups the workload runs on; ``edp`` (expert data
# parallelism) exists when ep > 1: the ranks of a DP group that hold the same
# experts.
GROUP_KINDS = {"tp": "tp", "pp": "pp", "dp": "dp", "edp": "dp", "ep": "ep"}


def training_report(workload: TransformerTraining, nranks: int, makespan_s: float, records, per_group,
                    peak_flops_per_s: Sequence[float], memory_capacity_bytes: float = math.inf,
                    compute_s_by_rank: Sequence[float] | None = None) -> dict[str, Any]:
    """Time per step, tokens/s, MFU, HFU, pipeline bubble and exposed communication by group kind.

    ``records``: the run's records (a DataFrame with rank, kind, start_s,
    end_s); ``per_group``: its exposed communication per rank and group
    (rank, group, comm_s); ``peak_flops_per_s``: each rank's peak in the
    workload's precision.  The measured bubble is the ranks' mean share of
    the step in which they neither compute nor wait for TP, DP or EP
    communication: the pipeline's fill and drain, and the transfers between
    stages (which ``exposed_comm_s['pp']`` also counts).  ``memory``: each
    stage's peak bytes per GPU by kind, against ``memory_capacity_bytes``.
    ``compute_s_by_rank`` (each rank's compute time), where given, stands
    for the records' computes: a folded run keeps its representatives'
    records only.
    """
    steps = workload.training.steps
    par, m = workload.parallel(nranks), workload.microbatches(nranks)
    model, training = workload.model_spec, workload.training
    step_s = makespan_s / steps
    tokens = training.global_batch * model.seq_len
    model_flops = model_flops_per_step(model, training)
    hardware_flops = hardware_flops_per_step(model, training, par.recompute)
    peak = float(sum(peak_flops_per_s))
    if compute_s_by_rank is None:
        compute = records[records["kind"] == "compute"]
        compute_total_s = float((compute["end_s"] - compute["start_s"]).sum())
    else:
        compute_total_s = float(sum(compute_s_by_rank))
    by_kind = {"tp": 0.0, "pp": 0.0, "dp": 0.0, "ep": 0.0, "other": 0.0}
    if per_group is not None and len(per_group):
        totals = per_group.groupby(per_group["group"].fillna("").astype(str))["comm_s"].sum()
        for group, seconds in totals.items():
            by_kind[GROUP_KINDS.get(group, "other")] += float(seconds) / nranks
    busy_s = compute_total_s / nranks + sum(v for k, v in by_kind.items() if k != "pp")
    bubble = max(0.0, 1.0 - busy_s / makespan_s) if makespan_s > 0 else 0.0
    return {
        "step_time_s": step_s,
        "tokens_per_s": tokens / step_s if step_s > 0 else 0.0,
        "model_flops_per_step": model_flops,
        "hardware_flops_per_step": hardware_flops,
        "mfu": model_flops / (step_s * peak) if step_s > 0 and peak > 0 else 0.0,
        "hfu": hardware_flops / (step_s * peak) if step_s > 0 and peak > 0 else 0.0,
        "microbatches": m,
        "bubble_fraction": bubble,
        "bubble_fraction_ideal": ideal_bubble_fraction(par.schedule, par.pp, m, par.virtual_stages),
        # Mean over ranks, per step; "tp" is SP's all-gathers and reduce-scatters when sequence_parallel.
        "exposed_comm_s": {k: v / steps for k, v in by_kind.items() if v or k != "other"},
        "memory": [{"stage": r.stage, "weights_bytes": r.weights_bytes, "gradients_bytes": r.gradients_bytes,
                    "optimizer_bytes": r.optimizer_bytes, "activations_bytes": r.activations_bytes,
                    "total_bytes": r.total_bytes} for r in workload.memory(nranks)],
        "memory_capacity_bytes": memory_capacity_bytes,
        "layout": {"tp": par.tp, "pp": par.pp, "dp": par.dp, "ep": par.ep, "schedule": par.schedule,
                   "virtual_stages": par.virtual_stages, "zero": par.zero, "recompute": par.recompute,
                   "sequence_parallel": par.sequence_parallel},
    }


def format_training_report(report: Mapping[str, Any]) -> str:
    """A few lines for a terminal."""
    comm = report["exposed_comm_s"]
    step = report["step_time_s"]
    layout = report["layout"]
    kinds = [k for k in comm if k != "ep" or layout["ep"] > 1]
    share = ", ".join(f"{k.upper()} {comm[k]:.4g} s ({100 * comm[k] / step:.1f}%)" if step > 0
                      else f"{k.upper()} {comm[k]:.4g} s" for k in kinds)
    return "\n".join([
        f"training        tp {layout['tp']} x pp {layout['pp']} x dp {layout['dp']}"
        + (f" (ep {layout['ep']})" if layout["ep"] > 1 else "")
        + f", {layout['schedule']}, {report['microbatches']} micro-batches, zero {layout['zero']}, "
          f"recompute {layout['recompute']}" + (", sequence parallel" if layout["sequence_parallel"] else ""),
        f"step time       {step:.6g} s, {report['tokens_per_s']:.6g} tokens/s",
        f"MFU / HFU       {100 * report['mfu']:.2f}% / {100 * report['hfu']:.2f}% "
        f"({report['model_flops_per_step']:.4g} / {report['hardware_flops_per_step']:.4g} FLOP per step)",
        f"pipeline bubble {100 * report['bubble_fraction']:.1f}% measured, "
        f"{100 * report['bubble_fraction_ideal']:.1f}% ideal",
        f"exposed comm    {share} per step (mean over ranks)",
    ] + _memory_lines(report))


def _memory_lines(report: Mapping[str, Any]) -> list[str]:
    stages = report.get("memory") or []
    if not stages:
        return []
    gib = 2.0**30
    peak = max(stages, key=lambda r: (r["total_bytes"], -r["stage"]))
    capacity = report.get("memory_capacity_bytes", math.inf)
    of = f" of {capacity / gib:.4g} GiB" if math.isfinite(capacity) else ""
    return [f"memory per GPU  {peak['total_bytes'] / gib:.4g} GiB{of} at stage {peak['stage']} (weights "
            f"{peak['weights_bytes'] / gib:.4g}, gradients {peak['gradients_bytes'] / gib:.4g}, optimizer "
            f"{peak['optimizer_bytes'] / gib:.4g}, activations {peak['activations_bytes'] / gib:.4g} GiB)"]
