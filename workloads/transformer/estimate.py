"""A training step's time in closed form: the fast estimate a layout search ranks with.

Milliseconds a layout, where the simulator takes seconds; it keeps what
decides most rankings and drops what only the simulation has (contention,
overlap as it happens, stragglers, the schedule's exact order).  Per GPU:

- **compute**: the step's hardware FLOPs (``flops.hardware_flops_per_step``,
  recomputation included) over GPUs x peak, spread over the ``m``
  micro-batches;
- **tensor parallelism**, on the critical path: per layer and micro-batch
  two all-reduces of the activations forward and two backward (two more
  with full recomputation; sequence parallelism's reduce-scatter and
  all-gather move as much), each a ring: 2(t-1)/t x bytes / bandwidth +
  2(t-1) latencies, over NVLink inside a server, else the NIC;
- **pipeline**: each micro-batch crosses each of its v chunks' stage
  boundaries forward and backward, one hop each (bytes / NIC bandwidth +
  latency);
- **the schedule**: (m + (p-1)/v) micro-batch times, the bubble being the
  (p-1)/v of them;
- **data parallelism**: the gradients (dense parameters of a GPU, at the
  training precision) reduced by a ring over dp (all-reduce, or with ZeRO a
  reduce-scatter and the parameters' all-gather: the same bytes), exposed
  past the last micro-batch's backward that it overlaps; ZeRO-3 gathers the
  parameters again forward and backward for every micro-batch, exposed.

``benchmarks/plan_estimate.py`` and every ``experiments.plan`` run measure
how well it ranks against the simulation (Spearman's rank correlation).
"""
from __future__ import annotations

from dataclasses import dataclass

from workloads.transformer.flops import hardware_flops_per_step
from workloads.transformer.spec import PRECISION_BYTES, ModelSpec, ParallelSpec, TrainingSpec, total_parameters


@dataclass(frozen=True)
class Fabric:
    """A GPU cluster's figures the estimate needs (one GPU's peak, its two networks)."""

    peak_flops_per_s: float
    gpus_per_node: int
    scale_up_bandwidth_bytes_per_s: float
    scale_up_latency_s: float
    scale_out_bandwidth_bytes_per_s: float
    scale_out_latency_s: float


@dataclass(frozen=True)
class StepEstimate:
    """A step's time and its parts, in seconds per GPU (they add up to ``step_s``)."""

    step_s: float
    compute_s: float
    bubble_s: float
    tp_s: float
    pp_s: float
    dp_s: float

    def parts(self) -> dict[str, float]:
        return {"compute": self.compute_s, "bubble": self.bubble_s, "tp": self.tp_s, "pp": self.pp_s,
                "dp": self.dp_s}


def _ring_s(nbytes: float, members: int, collectives_per_byte: float, bandwidth: float, latency: float) -> float:
    """A ring collective's time: ``collectives_per_byte`` is 2 for an all-reduce, 1 for a reduce-scatter or
    all-gather (each moves (n-1)/n of the bytes once per phase)."""
    if members <= 1 or nbytes <= 0:
        return 0.0
    return collectives_per_byte * ((members - 1) / members * nbytes / bandwidth + (members - 1) * latency)


def estimate_step(model: ModelSpec, training: TrainingSpec, par: ParallelSpec, microbatches: int,
                  fabric: Fabric) -> StepEstimate:
    """The step time of ``par`` (resolved: dp set) with ``microbatches`` per pipeline, on ``fabric``."""
    t, p, d, v, m = par.tp, par.pp, par.dp, max(1, par.virtual_stages), microbatches
    gpus = t * p * d
    B = PRECISION_BYTES[training.precision]
    compute_s = hardware_flops_per_step(model, training, par.recompute) / (gpus * fabric.peak_flops_per_s)
    per_mb_compute = compute_s / m
    activation_bytes = training.micro_batch * model.seq_len * model.hidden * B
    inside = t <= fabric.gpus_per_node
    tp_bw = fabric.scale_up_bandwidth_bytes_per_s if inside else fabric.scale_out_bandwidth_bytes_per_s
    tp_lat = fabric.scale_up_latency_s if inside else fabric.scale_out_latency_s
    per_layer = 6 if par.recompute == "full" else 4
    layers_per_gpu = model.layers / p
    per_mb_tp = layers_per_gpu * per_layer * _ring_s(activation_bytes, t, 2.0, tp_bw, tp_lat)
    out_bw, out_lat = fabric.scale_out_bandwidth_bytes_per_s, fabric.scale_out_latency_s
    hop_bytes = activation_bytes / t if par.sequence_parallel else activation_bytes
    per_mb_pp = 2 * v * (hop_bytes / out_bw + out_lat) if p > 1 else 0.0
    per_mb = per_mb_compute + per_mb_tp + per_mb_pp
    bubble_s = (p - 1) / v * per_mb
    # DP groups hold ranks tp apart (tp innermost): inside a server while tp x dp fits in one.
    dp_inside = t * d <= fabric.gpus_per_node
    dp_bw = fabric.scale_up_bandwidth_bytes_per_s if dp_inside else out_bw
    dp_lat = fabric.scale_up_latency_s if dp_inside else out_lat
    grad_bytes = total_parameters(model) / (t * p) * B
    reduce_s = _ring_s(grad_bytes, d, 2.0, dp_bw, dp_lat)
    dp_s = max(0.0, reduce_s - 2.0 / 3.0 * per_mb_compute)
    if par.zero >= 3:
        dp_s += 2 * m * _ring_s(grad_bytes, d, 1.0, dp_bw, dp_lat)
    return StepEstimate(step_s=m * per_mb + bubble_s + dp_s, compute_s=compute_s, bubble_s=bubble_s,
                        tp_s=m * per_mb_tp, pp_s=m * per_mb_pp, dp_s=dp_s)
