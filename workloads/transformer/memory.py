"""Memory per rank of a transformer training step: model states and activations.

Every byte is a named term with its source, so a reader can check it against
the paper line by line (Calculon's style):

- model states (weights, gradients, optimizer) under ZeRO 0-3: Rajbhandari
  et al. (2020), sec. 3-5;
- activations of one layer for one micro-batch: Korthikanti et al. (2022),
  sec. 4.1-4.2 and Table 2, extended (each extension documented where it is
  made) to grouped-query attention, gated (SwiGLU) MLPs and mixtures of
  experts;
- how many micro-batches' activations a pipeline stage holds at its peak:
  the schedules of Huang et al. (GPipe, 2019) and Narayanan et al. (2021,
  1F1B and interleaved 1F1B, as Megatron-LM runs them; counted in
  ``schedule``), plus the input embedding's and the output layer's
  activations (Korthikanti sec. 4.3).

Symbols: ``s`` sequence length, ``b`` micro-batch size, ``h`` hidden size,
``a`` attention heads, ``kv`` = kv_heads x head_dim (the width of K and V),
``f`` ffn hidden size, ``V`` vocabulary, ``L`` layers, ``t`` tensor-parallel
size, ``p`` pipeline stages, ``v`` virtual stages (model chunks per rank),
``d`` data-parallel size, ``m`` micro-batches per step.

Not counted: the CUDA context and allocator fragmentation, communication
buffers (DDP buckets, pipeline send/receive tensors, all-to-all staging),
ZeRO-3's gathered copy of the layer being computed, and temporaries that
live inside one kernel.  A plan that fits with only a few GiB to spare may
still run out of memory for real.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from topologies.text import format_bytes
from workloads.groups import DEFAULT_ORDER, Layout
from workloads.transformer.schedule import in_flight_chunks, in_flight_first_chunk, in_flight_last_chunk
from workloads.transformer.spec import (LOGIT_BYTES, PRECISION_BYTES, ModelSpec, ParallelSpec, TrainingSpec,
                                        block_parameters, stage_layers)

GIB = 2**30
# Dropout masks are one byte per element in PyTorch (a bool tensor), whatever
# the training precision (Korthikanti sec. 4.1).
MASK_BYTES = 1


# ---------------------------------------------------------------------------
# Model states (Rajbhandari et al. 2020)


def state_bytes_per_parameter(precision: str) -> tuple[int, int, int]:
    """(weights, gradients, optimizer K) bytes per parameter for Adam in ``precision``.

    16-bit mixed precision (bf16, fp16; also fp8, whose GEMMs run on
    transient casts of 16-bit weights): 2-byte weights and gradients, and
    K = 12: an fp32 master copy, momentum and variance (ZeRO sec. 3.1).
    fp32 or tf32 training keeps no master copy: 4-byte weights and gradients,
    and K = 8 (momentum and variance).
    """
    if PRECISION_BYTES[precision] >= 4:
        return 4, 4, 8
    return 2, 2, 12


def model_state_bytes(parameters: int, *, zero: int, shards: int, precision: str = "bf16") -> dict[str, int]:
    """Weights, gradients and optimizer bytes of ``parameters`` under ZeRO stage ``zero``.

    ``shards`` is N_d, the data-parallel size the states are partitioned
    over.  With w = g = 2 and K = 12 (ZeRO, Figure 1):

    - ZeRO-0 (DDP):  (2 + 2 + K) Psi
    - ZeRO-1 (P_os): 2 Psi + 2 Psi + K Psi / N_d
    - ZeRO-2 (P_os+g): 2 Psi + (2 + K) Psi / N_d
    - ZeRO-3 (P_os+g+p): (2 + 2 + K) Psi / N_d

    A partition is ceil(Psi / N_d): DeepSpeed pads its flat buffers to a
    multiple of N_d.
    """
    if zero not in (0, 1, 2, 3):
        raise ValueError(f"zero must be 0, 1, 2 or 3, got {zero!r}")
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards!r}")
    w, g, k = state_bytes_per_parameter(precision)
    shard = math.ceil(parameters / shards)
    return {
        "weights_bytes": w * (shard if zero >= 3 else parameters),
        "gradients_bytes": g * (shard if zero >= 2 else parameters),
        "optimizer_bytes": k * (shard if zero >= 1 else parameters),
    }


def stage_parameters(model: ModelSpec, parallel: ParallelSpec, stage: int) -> dict[str, int]:
    """Parameters one rank of pipeline ``stage`` holds: ``dense`` and ``expert``.

    Every matrix of a layer is split over the t ranks of its tensor-parallel
    group, and so, by choice, are the norms, the row-parallel biases and the
    router, which Megatron-LM replicates: they are 6h + h x experts of a
    layer's 12h^2 or more, t/(2h) of a rank's share (0.03% for GPT-3 at
    t = 8), and splitting them keeps t x p x (a rank's dense parameters) =
    the model's.  Experts: each rank of an expert-parallel group of ``ep``
    holds experts/ep of each layer's experts, each split over t (Megatron's
    expert tensor parallelism defaults to t).  The input embedding (first
    stage) and the output layer and final norm (last stage) are
    vocab-parallel: V/t rows each, V padded up to a multiple of t as
    Megatron-LM pads it.
    """
    check_layout(model, parallel)
    p = parallel.pp
    blocks = (["layer"] * _layers_of_stage(model, parallel, stage) + (["embed"] if stage == 0 else [])
              + (["head"] if stage == p - 1 else []))
    dense = expert = 0
    for block in blocks:
        d, e = block_parameters(model, parallel.tp, parallel.ep, block)
        dense, expert = dense + d, expert + e
    return {"dense": dense, "expert": expert}


# ---------------------------------------------------------------------------
# Activations of one layer for one micro-batch (Korthikanti et al. 2022)


def _activation_value_bytes(precision: str) -> int:
    # Korthikanti's 2 bytes per value are fp16/bf16; fp32 and tf32 training
    # store 4; fp8 GEMMs keep their inputs' 16-bit copies for the backward.
    return 4 if PRECISION_BYTES[precision] >= 4 else 2


def _expert_tokens(model: ModelSpec, parallel: ParallelSpec, tokens: int) -> int:
    """Tokens one rank's local experts process for ``tokens`` tokens per rank.

    GShard's capacity: each expert takes at most ceil(cf x top_k x T / E)
    tokens, T = ep x tokens those of the expert-parallel group; a rank holds
    E/ep experts, so it processes (E/ep) x capacity ~ cf x top_k x tokens.
    Counted at capacity: Megatron-LM pads to it when tokens are dropped, and
    an unbalanced router can fill it.
    """
    capacity = math.ceil(model.capacity_factor * model.top_k * parallel.ep * tokens / model.experts)
    return (model.experts // parallel.ep) * capacity


def layer_activation_terms(model: ModelSpec, parallel: ParallelSpec, training: TrainingSpec) -> dict[str, float]:
    """Bytes one layer stores for its backward, for one micro-batch, on one rank, by named term.

    The terms of Korthikanti et al. (2022), sec. 4.1 (16-bit values, 1-byte
    dropout masks); their sum for a GPT layer (f = 4h, kv = h, dense) is
    Table 2's entry for the layout:

    ================================  ==========================
    no parallelism                    sbh (34 + 5as/h)
    tensor parallel                   sbh (10 + 24/t + 5as/(ht))
    tensor + sequence parallel        sbh/t (34 + 5as/h)
    selective recompute               sbh (10 + 24/t)
    selective recompute + sequence    sbh 34/t
    full recompute                    2sbh (2sbh/t with sequence parallel)
    ================================  ==========================

    Tensor parallelism splits the terms between the column- and row-parallel
    GEMMs over t; the others (layer norms, dropouts, the inputs of the QKV
    and first MLP GEMMs) are replicated unless sequence parallelism splits
    them along s.  Extensions, each a term below:

    - grouped-query attention: K and V are kv wide, not h (Q stays h); the
      score terms are per query head (a), so unchanged.  K and V are counted
      as the QKV GEMM writes them, before any repeat to a heads (what
      FlashAttention and PyTorch's SDPA with GQA keep).
    - gated MLP (SwiGLU): the activation's input is the gate and up
      projections, 2 x 2sbf (Megatron-LM's fused SwiGLU saves its 2f-wide
      input and recomputes SiLU in the backward), plus the down projection's
      input 2sbf; a plain MLP keeps 2sbf (GeLU input) + 2sbf (second GEMM
      input), which for f = 4h is the paper's 16sbh.
    - mixture of experts: the router's input (the norm's output, 2sbh) and
      its fp32 probabilities (4sbE), the dispatched tokens (the experts'
      first GEMM input), the experts' f-wide terms for the tokens the rank's
      experts process (about cf x top_k x sb, see ``_expert_tokens``), and
      the experts' outputs, kept for the gradient of the routing weights.

    ``recompute``: ``selective`` drops the attention-score terms (QK^T
    softmax, its dropout mask and output: 5as^2b/t), which the backward
    recomputes; ``full`` keeps only the layer's input.
    """
    check_layout(model, parallel)
    s, b, h, a = model.seq_len, training.micro_batch, model.hidden, model.heads
    f, t = model.ffn_hidden, parallel.tp
    kv = model.kv_heads * model.head_dim
    x = _activation_value_bytes(training.precision)
    # Terms replicated across the tensor-parallel group, unless sequence
    # parallelism splits them along the sequence.
    r = t if parallel.sequence_parallel else 1
    sbh = s * b * h

    if parallel.recompute == "full":
        return {"layer input (checkpoint, recomputed from)": x * sbh / r}

    terms: dict[str, float] = {
        # Attention block (Korthikanti sec. 4.1: 11sbh + 5as^2b, of which
        # 4sbh + 2sbh + 2sbh and the scores split over t).
        "attention: layer-norm input": x * sbh / r,
        "attention: QKV GEMM input": x * sbh / r,
        "attention: Q (for QK^T)": x * sbh / t,
        "attention: K (for QK^T), kv wide": x * s * b * kv / t,
        "attention: softmax output (a s^2 b)": x * a * s * s * b / t,
        "attention: softmax dropout mask": MASK_BYTES * a * s * s * b / t,
        "attention: dropout output (for x V)": x * a * s * s * b / t,
        "attention: V (for scores x V), kv wide": x * s * b * kv / t,
        "attention: output projection input": x * sbh / t,
        "attention: output dropout mask": MASK_BYTES * sbh / r,
        "mlp: layer-norm input": x * sbh / r,
    }
    if parallel.recompute == "selective":
        for name in ("attention: softmax output (a s^2 b)", "attention: softmax dropout mask",
                     "attention: dropout output (for x V)"):
            del terms[name]

    # The MLP's f-wide terms, per token it processes.
    if model.gated_mlp:
        ffn = {"mlp: gate and up projections (SwiGLU input)": 2 * x * f / t,
               "mlp: down projection input": x * f / t}
    else:
        ffn = {"mlp: activation (GeLU) input": x * f / t,
               "mlp: second GEMM input": x * f / t}

    if model.moe:
        routed = _expert_tokens(model, parallel, s * b)
        terms["mlp: router input"] = x * sbh / r
        terms["mlp: router probabilities (fp32)"] = 4 * s * b * model.experts / r
        terms["mlp: dispatched tokens (expert first GEMM input)"] = x * routed * h / r
        for name, per_token in ffn.items():
            terms[name.replace("mlp:", "mlp: experts'")] = per_token * routed
        terms["mlp: expert outputs (for the routing weights' gradient)"] = x * routed * h / r
    else:
        terms["mlp: first GEMM input"] = x * sbh / r
        for name, per_token in ffn.items():
            terms[name] = per_token * s * b
    terms["mlp: dropout mask"] = MASK_BYTES * sbh / r
    return terms


def layer_activation_bytes(model: ModelSpec, parallel: ParallelSpec, training: TrainingSpec) -> float:
    """The sum of ``layer_activation_terms``."""
    return sum(layer_activation_terms(model, parallel, training).values())


def embedding_activation_terms(model: ModelSpec, parallel: ParallelSpec, training: TrainingSpec) -> dict[str, float]:
    """What the input embedding keeps for one micro-batch (first stage).

    Korthikanti sec. 4.3: the embedding's dropout mask, sbh (sbh/t with
    sequence parallelism).  The dropout's output is the first layer's input,
    counted there.
    """
    s, b, h = model.seq_len, training.micro_batch, model.hidden
    r = parallel.tp if parallel.sequence_parallel else 1
    return {"embedding: dropout mask": MASK_BYTES * s * b * h / r}


def output_activation_terms(model: ModelSpec, parallel: ParallelSpec, training: TrainingSpec) -> dict[str, float]:
    """What the output layer keeps for one micro-batch (last stage).

    Korthikanti sec. 4.3: the final layer norm's input 2sbh, the output
    GEMM's input 2sbh (each /t with sequence parallelism) and the
    cross-entropy's fp32 logits 4sbV/t (vocab-parallel): with sequence
    parallelism (4sbh/t)(1 + V/h), as in the paper.
    """
    s, b, h = model.seq_len, training.micro_batch, model.hidden
    t = parallel.tp
    r = t if parallel.sequence_parallel else 1
    x = _activation_value_bytes(training.precision)
    return {
        "output: final layer-norm input": x * s * b * h / r,
        "output: output GEMM input": x * s * b * h / r,
        "output: logits (fp32, for the cross-entropy)": LOGIT_BYTES * s * b * math.ceil(model.vocab / t),
    }


# ---------------------------------------------------------------------------
# Layout checks


def check_layout(model: ModelSpec, parallel: ParallelSpec) -> None:
    """ValueError naming the sizes if the model does not split as ``parallel`` asks."""
    t = parallel.tp
    for what, size in (("heads", model.heads), ("kv_heads", model.kv_heads), ("hidden", model.hidden),
                       ("ffn_hidden", model.ffn_hidden)):
        if size % t:
            raise ValueError(f"workload: tp {t} must divide the model's {what} {size}")
    stage_layers(model.layers, parallel)  # the split, or why there is none
    if parallel.sequence_parallel and model.seq_len % t:
        raise ValueError(f"workload: sequence parallelism needs tp {t} to divide seq_len {model.seq_len}")
    if parallel.ep > 1 and not model.moe:
        raise ValueError(f"workload: ep {parallel.ep} needs a mixture-of-experts model (experts > 1)")
    if model.moe and model.experts % parallel.ep:
        raise ValueError(f"workload: ep {parallel.ep} must divide the model's experts {model.experts}")


def _layers_of_stage(model: ModelSpec, parallel: ParallelSpec, stage: int) -> int:
    """The layers pipeline stage ``stage`` holds, over its virtual stages."""
    split = stage_layers(model.layers, parallel)
    return sum(split[c * parallel.pp + stage] for c in range(parallel.virtual_stages))


# ---------------------------------------------------------------------------
# The report


@dataclass(frozen=True)
class MemoryReport:
    """Peak bytes one rank of a pipeline stage needs (every rank of a stage needs the same)."""

    stage: int
    ranks: tuple[int, ...]
    first: bool
    last: bool
    layers: int
    in_flight_chunks: int
    weights_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    activations_bytes: float
    activation_terms: dict[str, float] = field(default_factory=dict, compare=False, repr=False)

    @property
    def total_bytes(self) -> float:
        return self.weights_bytes + self.gradients_bytes + self.optimizer_bytes + self.activations_bytes

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "ranks": list(self.ranks), "first": self.first, "last": self.last,
                "layers": self.layers, "in_flight_chunks": self.in_flight_chunks,
                "weights_bytes": self.weights_bytes, "gradients_bytes": self.gradients_bytes,
                "optimizer_bytes": self.optimizer_bytes, "activations_bytes": self.activations_bytes,
                "total_bytes": self.total_bytes, "activation_terms": dict(self.activation_terms)}


def stage_activation_terms(model: ModelSpec, parallel: ParallelSpec, training: TrainingSpec, *,
                           stage: int, microbatches: int) -> dict[str, float]:
    """Peak activation bytes of one rank of ``stage``, by term.

    In-flight chunks x layers per chunk x one layer's stored bytes; with
    recompute, plus the working set of the one layer being recomputed (full:
    all its activations; selective: its attention scores); the embedding's
    terms on the first stage and the output layer's on the last, times the
    micro-batches whose first/last chunk is held at once.  Adding the
    largest counts is an upper bound where they do not peak together
    (interleaved); for GPipe and 1F1B it is exact.
    """
    p, v = parallel.pp, parallel.virtual_stages
    schedule = parallel.schedule
    chunks = in_flight_chunks(schedule, stages=p, microbatches=microbatches, stage=stage, virtual_stages=v)
    # The stage's largest chunk (an upper bound where its chunks differ, as the interleaved count is).
    split = stage_layers(model.layers, parallel)
    chunk_layers = max(split[c * p + stage] for c in range(v))
    stored = layer_activation_bytes(model, parallel, training)
    out = {f"layers: {chunks} chunks in flight x {chunk_layers} layers x one layer": chunks * chunk_layers * stored}
    if parallel.recompute != "none":
        whole = layer_activation_bytes(model, _no_recompute(parallel), training)
        if parallel.recompute == "full":
            out["recompute: one layer's activations during its backward"] = whole
        else:
            out["recompute: one layer's attention scores during its backward"] = whole - stored
    if stage == 0:
        first = in_flight_first_chunk(schedule, stages=p, microbatches=microbatches, virtual_stages=v)
        for name, nbytes in embedding_activation_terms(model, parallel, training).items():
            out[f"{name} x {first} micro-batches"] = first * nbytes
    if stage == p - 1:
        last = in_flight_last_chunk(schedule, stages=p, microbatches=microbatches, virtual_stages=v)
        for name, nbytes in output_activation_terms(model, parallel, training).items():
            out[f"{name} x {last} micro-batches"] = last * nbytes
    return out


def _no_recompute(parallel: ParallelSpec) -> ParallelSpec:
    return dataclasses.replace(parallel, recompute="none")


def memory_per_stage(model: ModelSpec, parallel: ParallelSpec, training: TrainingSpec, nranks: int, *,
                     order: str = DEFAULT_ORDER) -> list[MemoryReport]:
    """One report per pipeline stage, naming its ranks in the ``order`` layout of ``workloads.groups``.

    Dense parameters are ZeRO-sharded over the d data-parallel ranks, expert
    parameters over the d/ep ranks that hold the same experts (expert data
    parallelism, as Megatron-LM shards them).
    """
    parallel = parallel.resolve(nranks)
    check_layout(model, parallel)
    t, p, d, ep = parallel.tp, parallel.pp, parallel.dp, parallel.ep
    m = training.microbatches(d)
    if parallel.schedule == "interleaved" and m % p:
        raise ValueError(f"workload: the interleaved schedule needs the micro-batches per step ({m}) to be a "
                         f"multiple of pp {p}")
    layout = Layout(tp=t, pp=p, dp=d, ep=ep, order=order)
    ranks_of: list[list[int]] = [[] for _ in range(p)]
    for rank in range(nranks):
        ranks_of[layout.coordinates(rank)["pp"]].append(rank)
    reports = []
    for stage in range(p):
        params = stage_parameters(model, parallel, stage)
        dense = model_state_bytes(params["dense"], zero=parallel.zero, shards=d, precision=training.precision)
        expert = model_state_bytes(params["expert"], zero=parallel.zero, shards=d // ep,
                                   precision=training.precision)
        terms = stage_activation_terms(model, parallel, training, stage=stage, microbatches=m)
        reports.append(MemoryReport(
            stage=stage, ranks=tuple(ranks_of[stage]), first=stage == 0, last=stage == p - 1,
            layers=_layers_of_stage(model, parallel, stage),
            in_flight_chunks=in_flight_chunks(parallel.schedule, stages=p, microbatches=m, stage=stage,
                                              virtual_stages=parallel.virtual_stages),
            weights_bytes=dense["weights_bytes"] + expert["weights_bytes"],
            gradients_bytes=dense["gradients_bytes"] + expert["gradients_bytes"],
            optimizer_bytes=dense["optimizer_bytes"] + expert["optimizer_bytes"],
            activations_bytes=sum(terms.values()), activation_terms=terms))
    return reports


def memory_per_rank(model: ModelSpec, parallel: ParallelSpec, training: TrainingSpec, nranks: int, *,
                    order: str = DEFAULT_ORDER) -> list[MemoryReport]:
    """Report ``r`` is rank r's: its stage's report (the ranks of a stage need the same bytes)."""
    out: list[MemoryReport | None] = [None] * nranks
    for report in memory_per_stage(model, parallel, training, nranks, order=order):
        for rank in report.ranks:
            out[rank] = report
    return out  # type: ignore[return-value]


def _gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.1f}"


def _ranks_text(ranks: Iterable[int], most: int = 4) -> str:
    runs: list[list[int]] = []
    for rank in sorted(ranks):
        if runs and rank == runs[-1][1] + 1:
            runs[-1][1] = rank
        else:
            runs.append([rank, rank])
    parts = [f"{lo}-{hi}" if hi > lo else f"{lo}" for lo, hi in runs]
    return ", ".join(parts[:most]) + (f", ... ({len(parts) - most} more runs)" if len(parts) > most else "")


def check_fits(reports: Iterable[MemoryReport], capacity_bytes: float) -> str:
    """"" if every stage fits in ``capacity_bytes`` per GPU, else one line about the worst one.

    E.g. "stage 0 (ranks 0-7) needs 93.1 GiB (weights 20.3, gradients 20.3,
    optimizer 30.5, activations 22.0) on 80 GiB GPUs: 13.1 GiB over".
    Accepts ``memory_per_stage``'s or ``memory_per_rank``'s list.
    """
    if not capacity_bytes > 0:
        raise ValueError(f"capacity_bytes must be > 0, got {capacity_bytes!r}")
    stages = {r.stage: r for r in reports}
    over = sorted((r for r in stages.values() if r.total_bytes > capacity_bytes),
                  key=lambda r: (-r.total_bytes, r.stage))
    if not over:
        return ""
    worst = over[0]
    capacity = (f"{capacity_bytes / GIB:.1f}".removesuffix(".0") + " GiB" if capacity_bytes >= GIB / 10
                else format_bytes(int(capacity_bytes)))
    more = f"; {len(over) - 1} more stage(s) over too" if len(over) > 1 else ""
    return (f"stage {worst.stage} (ranks {_ranks_text(worst.ranks)}) needs {_gib(worst.total_bytes)} GiB "
            f"(weights {_gib(worst.weights_bytes)}, gradients {_gib(worst.gradients_bytes)}, "
            f"optimizer {_gib(worst.optimizer_bytes)}, activations {_gib(worst.activations_bytes)}) "
            f"on {capacity} GPUs: {_gib(worst.total_bytes - capacity_bytes)} GiB over{more}")
