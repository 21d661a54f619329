"""A transformer training step in 3D (tensor, pipeline, data) parallelism, with experts and ZeRO.

Three parts, each usable on its own:

1. FLOP accounting.  Every forward GEMM of a layer is a readable term
   (Narayanan et al. 2021, sec. 5.1; Korthikanti et al. 2022, sec. 6), with
   its (m, n, k) per tensor-parallel rank and its bytes; the memory-bound
   parts (layer norms, softmax, dropout, activations, residuals) are terms
   of bytes moved and no FLOPs (as Narayanan counts them).  Backward is
   twice forward (the input's and the weight's gradient).  Model FLOPs (for
   MFU) count each layer's forward and backward once; hardware FLOPs (for
   HFU) are what the ranks execute: the recomputed forward and, for a
   mixture of experts, the capacity factor's padding too.  For a GPT shape
   the model FLOPs of a step are Narayanan's
   72 B s L h^2 (1 + s / (6 h) + V / (12 h L)).

2. Lowering to per-rank programs on the layout's groups
   (``workloads.groups.Layout``: tensor-parallel innermost, order tp-dp-pp):
   the pipeline schedule's forwards and backwards (``gpipe``, ``1f1b``,
   Megatron-LM's ``interleaved`` 1F1B), per layer the GEMMs, the TP
   all-reduces (or, with sequence parallelism, all-gather + reduce-scatter),
   the MoE all-to-alls, recomputation, the PP activations and gradients, the
   DP gradient reduction overlapped with the last backward, and the
   optimizer step.  Every rank of a pipeline stage runs the same program
   (its groups are relative: ``group: tp`` is its own TP group).

3. The step's report (``training_report``): time per step, tokens/s, MFU,
   HFU, the measured and the ideal pipeline bubble and exposed communication
   by group kind, from a run's tables.

Symbols: ``b`` micro-batch, ``s`` sequence, ``h`` hidden, ``a`` heads,
``kv`` key/value width (kv_heads x head_dim), ``f`` MLP width, ``V``
vocabulary, ``L`` layers, ``E`` experts, ``k`` top-k, ``t`` TP, ``p`` PP,
``d`` DP, ``e`` EP, ``v`` virtual stages, ``m`` micro-batches, ``B`` bytes
per value of the training precision.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

from topologies.limits import short, short_names
from workloads.base import ProgramSize, WorkloadBase, register
from workloads.collectives import lowered_size
from workloads.groups import Layout
from workloads.ops import Collective, Compute, Irecv, Isend, Operation, Wait
from workloads.transformer_memory import MemoryReport, check_fits, memory_per_stage
from workloads.transformer_spec import (BLOCKS, ModelSpec, ParallelSpec, TrainingSpec, block_parameters,
                                        load_model)

# Adam in mixed precision reads the fp32 master weight, momentum and variance
# (12 bytes) and the gradient (B bytes), and writes the three back and the
# training-precision copy of the weight (12 + B): 24 + 2B bytes per parameter
# (28 in bf16), with no FLOPs worth counting against the memory time.
ADAM_STATE_BYTES = 12
# Megatron-LM's vocabulary-parallel cross entropy works on fp32 logits.
LOGIT_BYTES = 4

# The names of the groups the workload runs on; ``edp`` (expert data
# parallelism) exists when ep > 1: the ranks of a DP group that hold the same
# experts.
GROUP_KINDS = {"tp": "tp", "pp": "pp", "dp": "dp", "edp": "dp", "ep": "ep"}


# ---------------------------------------------------------------------------
# 1. FLOP accounting


@dataclass(frozen=True)
class Term:
    """One piece of a layer's forward on one TP rank: a GEMM or a memory-bound op.

    ``flops`` are this rank's; ``gemm`` the (m, n, k) of one matrix product
    (``batch`` of them, as attention runs one per head and sequence);
    ``nbytes`` what it reads and writes in memory.
    """

    label: str
    flops: float = 0.0
    nbytes: int = 0
    gemm: tuple[int, ...] = ()

    def compute(self, phase: str, precision: str) -> Compute:
        return Compute(self.flops, label=f"{phase}:{self.label}", nbytes=self.nbytes, gemm=self.gemm,
                       precision=precision)

    def backward(self) -> "Term":
        # A GEMM's backward is two GEMMs of the same size (the input's gradient
        # and the weight's), so twice the FLOPs and bytes.  An elementwise op's
        # backward reads the output's gradient and what it saved and writes the
        # input's gradient: about the bytes of its forward.
        if self.gemm:
            return Term(self.label, 2 * self.flops, 2 * self.nbytes, self.gemm)
        return self


def gemm(label: str, m: int, n: int, k: int, bytes_per_value: int, batch: int = 1,
         flops: float | None = None) -> Term:
    """``batch`` products (m x k)(k x n): 2 m n k FLOPs each; reads both inputs, writes the output.

    ``flops`` overrides the count where the shape's m is a rounded token count
    (experts) and the FLOPs should stay exact.
    """
    count = 2.0 * batch * m * n * k if flops is None else flops
    return Term(label, count, bytes_per_value * batch * (m * k + k * n + m * n), (m, n, k))


def memory(label: str, nbytes: float) -> Term:
    return Term(label, 0.0, int(math.ceil(nbytes)))


# Markers in a layer's list of terms: where the tensor-parallel and
# expert-parallel communication goes.  ``F`` and ``G`` are Megatron-LM's
# conjugate operators (Shoeybi et al. 2019, fig. 3): F is the identity
# forward and an all-reduce backward, G the reverse; with sequence
# parallelism (Korthikanti et al. 2022, sec. 4.2.2) F is an all-gather
# forward and a reduce-scatter backward, G the reverse.
F, G, DISPATCH, COMBINE = "F", "G", "dispatch", "combine"


@dataclass(frozen=True)
class Shape:
    """The sizes one TP rank works with, checked once (``shape_of``)."""

    model: ModelSpec
    b: int
    t: int
    e: int
    sp: bool
    bytes_per_value: int

    @property
    def tokens(self) -> int:
        return self.b * self.model.seq_len

    @property
    def local_tokens(self) -> int:
        """Tokens a layer norm or dropout sees on this rank: all, or s/t of them with sequence parallelism."""
        return self.tokens // self.t if self.sp else self.tokens

    @property
    def kv(self) -> int:
        return self.model.kv_heads * self.model.head_dim

    @property
    def vocab_shard(self) -> int:
        """V / t rows of the embedding and output layer, V padded to a multiple of t (as Megatron-LM pads it)."""
        return -(-self.model.vocab // self.t)

    @property
    def routed_tokens(self) -> float:
        """Tokens one rank's experts process: its group's b s k assignments, padded or cut to the capacity factor.

        Each of the e ranks of an EP group sends b s k / e token copies to every
        other, uniformly (GShard's fixed-capacity dispatch), so each rank
        receives b s k of them, cf x as many with the capacity's padding.
        """
        return self.tokens * self.model.top_k * self.model.capacity_factor


def attention_terms(x: Shape) -> list:
    model, B, t = x.model, x.bytes_per_value, x.t
    b, s, h, d = x.b, model.seq_len, model.hidden, model.head_dim
    heads = model.heads // t
    return [
        # Layer norm: read and write each of the rank's b s h (or b s h / t) values.
        memory("layernorm1", 2 * B * x.local_tokens * h),
        F,
        # Q is h x h, K and V are h x kv each (grouped-query attention), split by columns.
        gemm("qkv", b * s, (h + 2 * x.kv) // t, h, B),
        # Per head: (s x d)(d x s) scores, b a / t of them: 2 b s^2 h / t FLOPs.
        gemm("scores", s, s, d, B, batch=b * heads),
        # Softmax reads the scores and writes probabilities; dropout reads them,
        # writes its output and a 1-byte mask.
        memory("softmax_dropout", (4 * B + 1) * b * heads * s * s),
        # Per head: (s x s)(s x d) attention over values: 2 b s^2 h / t FLOPs.
        gemm("values", s, d, s, B, batch=b * heads),
        # Output projection h x h, split by rows.
        gemm("proj", b * s, h, h // t, B),
        G,
        # Dropout (read, write, mask), residual add (read two, write one) and
        # the second layer norm (read, write).
        memory("dropout_residual_layernorm2", (7 * B + 1) * x.local_tokens * h),
    ]


def mlp_terms(x: Shape) -> list:
    model, B, t = x.model, x.bytes_per_value, x.t
    bs, h, f = x.tokens, model.hidden, model.ffn_hidden
    terms: list = [F, gemm("mlp_up", bs, f // t, h, B)]
    if model.gated_mlp:
        terms.append(gemm("mlp_gate", bs, f // t, h, B))
    # GeLU reads and writes b s f / t values; SwiGLU reads two and writes one.
    terms.append(memory("activation", (3 if model.gated_mlp else 2) * B * bs * f // t))
    terms += [gemm("mlp_down", bs, h, f // t, B), G, memory("dropout_residual", (5 * B + 1) * x.local_tokens * h)]
    return terms


def moe_terms(x: Shape) -> list:
    model, B, t, e = x.model, x.bytes_per_value, x.t, x.e
    h, f, experts = model.hidden, model.ffn_hidden, model.experts
    tokens = x.routed_tokens
    local_experts = experts // e
    # One expert's GEMM sees its share of the rank's routed tokens (rounded
    # for the shape; the FLOPs stay exact).
    per_expert = max(1, round(tokens / local_experts))

    def expert_gemm(label, n, k):
        return Term(label, 2.0 * tokens * n * k, B * local_experts * (per_expert * k + k * n + per_expert * n),
                    (per_expert, n, k))

    terms: list = [
        F,
        # The router (h x E) scores each of the rank's b s / t tokens: the TP
        # ranks split the tokens, as Megatron-LM's MoE layer does with
        # sequence parallelism, so no router FLOP is repeated across TP.
        gemm("router", x.tokens // t, experts, h, B),
        DISPATCH,
        expert_gemm("expert_up", f // t, h),
    ]
    if model.gated_mlp:
        terms.append(expert_gemm("expert_gate", f // t, h))
    terms.append(memory("expert_activation", (3 if model.gated_mlp else 2) * B * tokens * f / t))
    terms += [expert_gemm("expert_down", h, f // t), COMBINE, G,
              memory("dropout_residual", (5 * B + 1) * x.local_tokens * h)]
    return terms


def layer_terms(x: Shape) -> list:
    """One layer's forward on one TP rank, in order, with the communication markers."""
    return attention_terms(x) + (moe_terms(x) if x.model.moe else mlp_terms(x))


def embedding_terms(x: Shape) -> list:
    # A lookup of b s rows of the rank's V/t slice, written as b s h values
    # (zeros for tokens outside the slice), then summed over TP (G).
    return [memory("embedding", 2 * x.bytes_per_value * x.tokens * x.model.hidden), G]


def head_terms(x: Shape) -> list:
    B, h = x.bytes_per_value, x.model.hidden
    V = x.model.vocab
    logits = gemm("logits", x.tokens, x.vocab_shard, h, B)
    # The FLOPs of the unpadded vocabulary: 2 b s h V / t.
    logits = Term(logits.label, 2.0 * x.tokens * h * V / x.t, logits.nbytes, logits.gemm)
    return [memory("final_layernorm", 2 * B * x.local_tokens * h), F, logits,
            memory("cross_entropy", 2 * LOGIT_BYTES * x.tokens * x.vocab_shard)]


# Whole-model FLOPs of one sequence (b = 1), every TP rank's share summed:
# the readable sums the per-rank terms above add up to.


def layer_forward_flops(model: ModelSpec, capacity: bool = False) -> float:
    """One layer's forward FLOPs for one sequence (Narayanan et al.: 24 s h^2 + 4 s^2 h for GPT).

    ``capacity``: count the experts' GEMMs at the capacity factor (what the
    ranks execute) instead of at the routed tokens (the model's own FLOPs).
    """
    s, h, f = model.seq_len, model.hidden, model.ffn_hidden
    kv = model.kv_heads * model.head_dim
    qkv = 2 * s * h * (h + 2 * kv)
    scores_and_values = 2 * (2 * s * s * h)
    proj = 2 * s * h * h
    matrices = 3 if model.gated_mlp else 2
    if model.moe:
        tokens = s * model.top_k * (model.capacity_factor if capacity else 1.0)
        mlp = 2 * s * h * model.experts + matrices * 2 * tokens * h * f
    else:
        mlp = matrices * 2 * s * h * f
    return qkv + scores_and_values + proj + mlp


def attention_score_flops(model: ModelSpec) -> float:
    """QK^T and attention over values for one sequence: what selective recomputation repeats."""
    return 2 * (2 * model.seq_len ** 2 * model.hidden)


def logits_forward_flops(model: ModelSpec) -> float:
    return 2 * model.seq_len * model.hidden * model.vocab


def model_flops_per_step(model: ModelSpec, training: TrainingSpec) -> float:
    """Forward and backward (3 x forward) of every layer and the logits, for every sequence of the step.

    The model's own FLOPs, for MFU: no recomputation, experts at the routed tokens.
    """
    forward = model.layers * layer_forward_flops(model) + logits_forward_flops(model)
    return 3 * forward * training.global_batch


def recompute_flops_per_step(model: ModelSpec, training: TrainingSpec, recompute: str) -> float:
    """The forward FLOPs recomputation repeats in a step: a whole layer (full) or its attention scores (selective)."""
    if recompute == "full":
        per_layer = layer_forward_flops(model, capacity=True)
    elif recompute == "selective":
        per_layer = attention_score_flops(model)
    else:
        return 0.0
    return per_layer * model.layers * training.global_batch


def hardware_flops_per_step(model: ModelSpec, training: TrainingSpec, recompute: str) -> float:
    """What the ranks execute in a step, for HFU: recomputation and the experts' capacity padding included."""
    forward = model.layers * layer_forward_flops(model, capacity=True) + logits_forward_flops(model)
    return 3 * forward * training.global_batch + recompute_flops_per_step(model, training, recompute)


def narayanan_flops_per_step(model: ModelSpec, training: TrainingSpec) -> float:
    """Narayanan et al. (2021), eq. 3 without recomputation: 72 B s L h^2 (1 + s/(6h) + V/(12 h L)).

    For a GPT shape (no GQA, MLP 4h, no gate, no experts) it equals ``model_flops_per_step``.
    """
    B, s, L, h, V = training.global_batch, model.seq_len, model.layers, model.hidden, model.vocab
    return 72 * B * s * L * h * h * (1 + s / (6 * h) + V / (12 * h * L))


# ---------------------------------------------------------------------------
# Pipeline schedules: each stage's order of (forward?, micro-batch, chunk)


def schedule_order(schedule: str, p: int, stage: int, m: int, v: int = 1) -> list[tuple[bool, int, int]]:
    """The order in which ``stage`` of ``p`` runs the forwards (True) and backwards of ``m`` micro-batches.

    ``gpipe`` (Huang et al. 2019): every forward, then every backward in
    reverse, as autograd unwinds them.  ``1f1b`` (PipeDream-Flush,
    Narayanan et al. 2021): p - stage - 1 warm-up forwards, then one forward
    and one backward alternately, then the remaining backwards.
    ``interleaved`` (Narayanan et al. 2021, sec. 2.2; Megatron-LM's
    ``forward_backward_pipelining_with_interleaving``): ``v`` model chunks per
    stage, micro-batches in groups of p through each chunk in turn, with
    2 (p - stage - 1) + (v - 1) p warm-up forwards (all of them when m = p).
    """
    if schedule == "gpipe":
        return [(True, i, 0) for i in range(m)] + [(False, i, 0) for i in reversed(range(m))]
    if schedule == "1f1b":
        warmup = min(p - stage - 1, m)
        order = [(True, i, 0) for i in range(warmup)]
        for i in range(m - warmup):
            order += [(True, warmup + i, 0), (False, i, 0)]
        return order + [(False, i, 0) for i in range(m - warmup, m)]
    total = m * v

    def chunk_and_microbatch(k: int, forward: bool) -> tuple[int, int]:
        in_group = k % (p * v)
        chunk = in_group // p
        return (chunk if forward else v - 1 - chunk), (k // (p * v)) * p + k % p

    warmup = total if m == p else min((p - stage - 1) * 2 + (v - 1) * p, total)
    order = []
    for k in range(warmup):
        c, i = chunk_and_microbatch(k, True)
        order.append((True, i, c))
    for k in range(total - warmup):
        c, i = chunk_and_microbatch(warmup + k, True)
        order.append((True, i, c))
        c, i = chunk_and_microbatch(k, False)
        order.append((False, i, c))
    for k in range(total - warmup, total):
        c, i = chunk_and_microbatch(k, False)
        order.append((False, i, c))
    return order


def ideal_bubble_fraction(schedule: str, p: int, m: int, v: int = 1) -> float:
    """The idle share of a step with uniform stages and free communication.

    (p - 1) / (m + p - 1) for GPipe and 1F1B; (p - 1) / (v m + p - 1) with
    v interleaved chunks, whose bubble is v times shorter (Narayanan et al.).
    """
    v = v if schedule == "interleaved" else 1
    return (p - 1) / (v * m + p - 1)


# ---------------------------------------------------------------------------
# 2. The workload


@register
@dataclass(frozen=True)
class TransformerTraining(WorkloadBase):
    """``steps`` training steps of a decoder-only transformer over ``tp x pp x dp`` ranks.

    ``model``: a preset name (``gpt3_175b``, ``llama_70b``, ``mixtral_8x7b``),
    a model file or a mapping of the shape (``workloads.transformer_spec.ModelSpec``).
    The other fields are ``TrainingSpec``'s and ``ParallelSpec``'s.
    """

    kind: ClassVar[str] = "transformer"

    # The specs' own fields, flat as a scenario writes them; the defaults are the specs'.
    model: Any = "gpt3_175b"
    global_batch: int = TrainingSpec.global_batch
    micro_batch: int = TrainingSpec.micro_batch
    precision: str = TrainingSpec.precision
    tp: int = ParallelSpec.tp
    pp: int = ParallelSpec.pp
    dp: int = ParallelSpec.dp
    ep: int = ParallelSpec.ep
    sequence_parallel: bool = ParallelSpec.sequence_parallel
    schedule: str = ParallelSpec.schedule
    virtual_stages: int = ParallelSpec.virtual_stages
    zero: int = ParallelSpec.zero
    recompute: str = ParallelSpec.recompute
    bucket_bytes: int = ParallelSpec.bucket_bytes
    steps: int = TrainingSpec.steps

    _INTS: ClassVar[tuple[str, ...]] = ("global_batch", "micro_batch", "steps", "tp", "pp", "dp", "ep",
                                        "virtual_stages", "zero", "bucket_bytes")
    _TRAINING: ClassVar[tuple[str, ...]] = ("global_batch", "micro_batch", "precision", "steps")
    _PARALLEL: ClassVar[tuple[str, ...]] = ("tp", "pp", "dp", "ep", "sequence_parallel", "schedule",
                                            "virtual_stages", "zero", "recompute", "bucket_bytes")

    def __post_init__(self):
        # YAML writes 1e6 as a float: an integral float is that integer.
        for name in self._INTS:
            value = getattr(self, name)
            if isinstance(value, float) and value.is_integer():
                object.__setattr__(self, name, int(value))
        # Parsed once; the specs validate and name the field (workload.tp, model.hidden, ...).
        spec = load_model(self.model, "workload.model")
        object.__setattr__(self, "model", self.model if isinstance(self.model, str) else spec)
        object.__setattr__(self, "_parts", (
            spec,
            TrainingSpec(**{n: getattr(self, n) for n in self._TRAINING}),
            ParallelSpec(**{n: getattr(self, n) for n in self._PARALLEL}),
        ))
        model, _, par = self._parts
        t = par.tp
        for what, value in (("heads", model.heads), ("kv_heads", model.kv_heads), ("ffn_hidden", model.ffn_hidden)):
            if value % t:
                raise ValueError(f"workload.tp {t} must divide model.{what} {value} (each TP rank holds "
                                 f"{what} / tp of them)")
        if par.sequence_parallel and model.seq_len % t:
            raise ValueError(f"workload.sequence_parallel: tp {t} must divide model.seq_len {model.seq_len}")
        chunks = par.pp * par.virtual_stages
        if model.layers % chunks:
            raise ValueError(f"workload: model.layers {model.layers} must be a multiple of pp {par.pp} x "
                             f"virtual_stages {par.virtual_stages} = {chunks} (equal stages)")
        if par.schedule == "interleaved" and par.pp < 2:
            raise ValueError("workload.schedule: interleaved needs pp >= 2")
        if par.ep > 1 and not model.moe:
            raise ValueError(f"workload.ep {par.ep} needs a mixture-of-experts model (model.experts > 1)")
        if model.moe and model.experts % par.ep:
            raise ValueError(f"workload.ep {par.ep} must divide model.experts {model.experts}")
        if par.dp:
            self._resolved(par.tp * par.pp * par.dp)

    # -- the parts -------------------------------------------------------------

    @property
    def model_spec(self) -> ModelSpec:
        return self._parts[0]

    @property
    def training(self) -> TrainingSpec:
        return self._parts[1]

    def parallel(self, nranks: int) -> ParallelSpec:
        return self._resolved(nranks)[0]

    def microbatches(self, nranks: int) -> int:
        return self._resolved(nranks)[1]

    def _resolved(self, nranks: int) -> tuple[ParallelSpec, int]:
        par = self._parts[2].resolve(nranks)
        m = self.training.microbatches(par.dp)
        if par.schedule == "interleaved" and m % par.pp:
            raise ValueError(f"workload.schedule: interleaved needs the micro-batches per step (global_batch "
                             f"{self.global_batch} / (micro_batch {self.micro_batch} x dp {par.dp}) = {m}) to be a "
                             f"multiple of pp {par.pp}, as Megatron-LM does")
        return par, m

    def layout(self, nranks: int) -> Layout:
        par = self.parallel(nranks)
        return Layout(par.tp, par.pp, par.dp, par.ep)

    def process_groups(self, nranks: int) -> dict[str, tuple[tuple[int, ...], ...]]:
        """The layout's groups (tp, pp, dp, ep) and, with ep > 1, ``edp``.

        ``edp`` (expert data parallelism): the ranks of a DP group at the same
        position of their EP groups, which hold the same experts and reduce
        their gradients together: ``dp_group[j::ep]`` (Megatron-LM's
        expert-data-parallel group).
        """
        layout = self.layout(nranks)
        groups = dict(layout.groups())
        if layout.ep > 1:
            groups["edp"] = tuple(members[j::layout.ep] for members in groups["dp"] for j in range(layout.ep))
        return groups

    def memory(self, nranks: int) -> list[MemoryReport]:
        """Each pipeline stage's peak memory per GPU (``workloads.transformer_memory``)."""
        par = self.parallel(nranks)
        return memory_per_stage(self.model_spec, par, self.training, nranks)

    def check_fits(self, topology) -> None:
        """ValueError naming the stage, its bytes by kind, the GPU's memory and the excess, if a stage does not fit.

        The capacity is the smallest ``memory_bytes`` among the stage's ranks;
        nodes that do not state their memory (``math.inf``) fit anything.
        """
        capacities = getattr(topology, "rank_memory_bytes", None)
        if not capacities:
            return
        problems = []
        for report in self.memory(topology.nranks):
            capacity = min(capacities[r] for r in report.ranks)
            if math.isfinite(capacity):
                problem = check_fits([report], capacity)
                if problem:
                    problems.append((report.total_bytes - capacity, problem))
        if problems:
            worst = max(problems)[1]
            more = f" ({len(problems)} stages over)" if len(problems) > 1 else ""
            raise ValueError(f"workload does not fit in memory: {worst}{more}; try more tp or pp, a higher zero "
                             "stage, recompute, or a smaller micro_batch")

    # -- parameters per rank ------------------------------------------------------

    def rank_parameters(self, nranks: int, stage: int) -> tuple[int, int]:
        """(dense, expert) parameters one rank of pipeline ``stage`` holds.

        Dense: its TP share of attention, the router, norms (replicated over
        TP) and, for a dense model, the MLP; of the embedding (first stage)
        and the output layer and final norm (last stage).  Expert: its E/e
        experts' TP shares, reduced over ``edp``; with ep = 1 every DP rank
        holds all experts, and they count as dense (reduced over dp).
        """
        lowering = _Lowering(self, nranks)
        return lowering.stage_parameters(stage)

    # -- programs -------------------------------------------------------------------

    def programs(self, nranks: int, groups=None) -> list[list[Operation]]:
        lowering = _Lowering(self, nranks)
        stage_programs = [lowering.stage_program(s) for s in range(lowering.p)]
        layout = lowering.layout
        return [list(stage_programs[layout.coordinates(r)["pp"]]) for r in range(nranks)]

    def size(self, nranks: int, groups=None) -> ProgramSize:
        """Counted on one step of each stage's program, built from shared operations (no per-rank copies)."""
        lowering = _Lowering(self, nranks)
        per_stage_ranks = nranks // lowering.p
        sizes = {name: len(family[0]) for name, family in lowering.groups.items()}
        bounds: dict[tuple, tuple[int, int]] = {}
        total = ProgramSize()
        for s in range(lowering.p):
            program = lowering.stage_step(s, 0)
            size = ProgramSize(operations=len(program))
            for op in program:
                if type(op) is Collective:
                    key = (op.op, op.algorithm, op.group)
                    if key not in bounds:
                        g = sizes[op.group]
                        steps, peers = lowered_size(op.op, op.algorithm, g)
                        bounds[key] = (-(-steps // g), -(-peers // g))
                    steps, peers = bounds[key]
                    size += ProgramSize(steps=steps, peers=peers)
            total += size.times(per_stage_ranks)
        return total.times(self.steps)

    # -- accounting -------------------------------------------------------------------

    def model_flops_per_step(self) -> float:
        return model_flops_per_step(self.model_spec, self.training)

    def hardware_flops_per_step(self) -> float:
        return hardware_flops_per_step(self.model_spec, self.training, self.recompute)

    # -- dicts ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind,
                               "model": self.model if isinstance(self.model, str) else self.model.to_dict()}
        for name in self._TRAINING + self._PARALLEL:
            value = getattr(self, name)
            if value != self.__dataclass_fields__[name].default:
                out[name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        names = {"model", *cls._TRAINING, *cls._PARALLEL}
        unknown = sorted(set(data) - names, key=str)
        if unknown:
            raise ValueError(f"workload (transformer): unknown field(s) {short_names(unknown)}; "
                             f"allowed: {', '.join(sorted(names))}")
        values = dict(data)
        # The specs check each field's type and name it.
        model = values.get("model", cls.model)
        if not isinstance(model, (str, Mapping)):
            raise ValueError(f"workload.model: expected a preset name, a file or a mapping of the shape, "
                             f"got {short(model)}")
        return cls(**values)

    # -- the report -------------------------------------------------------------------------

    def training_report(self, nranks: int, makespan_s: float, records, per_group,
                        peak_flops_per_s: Sequence[float], memory_capacity_bytes: float = math.inf) -> dict[str, Any]:
        return training_report(self, nranks, makespan_s, records, per_group, peak_flops_per_s,
                               memory_capacity_bytes)


# ---------------------------------------------------------------------------
# The lowering of one step of one stage


@dataclass
class _Buckets:
    """Gradients of one group kind, gathered into buckets of ``bucket_bytes`` as backward produces them."""

    group: str
    op: str
    bucket_bytes: int
    pending: int = 0
    handles: list = field(default_factory=list)

    def add(self, nbytes: int, out: list, prefix: str) -> None:
        self.pending += nbytes
        while self.pending >= self.bucket_bytes:
            self._emit(self.bucket_bytes, out, prefix)
            self.pending -= self.bucket_bytes

    def flush(self, out: list, prefix: str) -> None:
        if self.pending:
            self._emit(self.pending, out, prefix)
            self.pending = 0

    def _emit(self, nbytes: int, out: list, prefix: str) -> None:
        handle = f"{prefix}{self.group}{len(self.handles)}"
        self.handles.append(handle)
        out.append(Collective(self.op, nbytes, blocking=False, handle=handle, group=self.group))


class _Lowering:
    """Everything one step of one stage needs, built once and shared by every layer and micro-batch."""

    def __init__(self, w: TransformerTraining, nranks: int):
        self.w = w
        par, m = w._resolved(nranks)
        self.par, self.m = par, m
        self.model = model = w.model_spec
        self.layout = Layout(par.tp, par.pp, par.dp, par.ep)
        self.groups = w.process_groups(nranks)
        self.p, self.v = par.pp, par.virtual_stages
        self.t, self.d, self.e = par.tp, par.dp, par.ep
        # With ep = 1 every DP rank holds every expert: they reduce with the dense weights on dp.
        self.edp = par.dp // par.ep if model.moe and par.ep > 1 else 1
        self.precision = w.precision
        B = self.B = w.training.bytes_per_value
        x = self.shape = Shape(model, w.micro_batch, par.tp, par.ep, par.sequence_parallel, B)
        self.layers_per_chunk = model.layers // (self.p * self.v)
        activation_values = x.tokens * model.hidden
        # Between stages each TP rank sends its own copy of the b s h
        # activations, or its s/t slice with sequence parallelism (where the
        # layer's output is already split along the sequence).
        self.message_bytes = B * activation_values // (self.t if par.sequence_parallel else 1)
        self.tp_bytes = B * activation_values
        # Every TP rank of an EP group dispatches each token copy it holds (all
        # b s tokens: with SP the all-gather before the MLP has brought them),
        # padded to the capacity as GShard's fixed-size all-to-all is: b s k cf
        # h values, spread uniformly over the group; the combine returns as many.
        self.a2a_bytes = int(round(B * x.routed_tokens * model.hidden))

        layer = layer_terms(x)
        self.layer_forward = self._lower(layer, "forward")
        self.layer_backward = self._lower_backward(layer)
        if par.recompute == "full":
            self.layer_recompute = self._lower(layer, "recompute")
        elif par.recompute == "selective":
            self.layer_recompute = [term.compute("recompute", self.precision) for term in layer
                                    if isinstance(term, Term) and term.label in ("scores", "softmax_dropout",
                                                                                 "values")]
        else:
            self.layer_recompute = []
        self.embed_forward = self._lower(embedding_terms(x), "forward")
        self.embed_backward = self._lower_backward(embedding_terms(x))
        self.head_forward = self._lower(head_terms(x), "forward")
        self.head_backward = self._lower_backward(head_terms(x))

        # Parameters per block on one rank, (dense, expert), as the memory model
        # counts them; with ep = 1 every DP rank holds every expert and they
        # reduce with the dense weights on dp.
        self.params = {}
        for block in BLOCKS:
            dense, expert = block_parameters(model, par.tp, par.ep, block)
            self.params[block] = (dense, expert) if self.e > 1 else (dense + expert, 0)

    # -- per-layer lists --------------------------------------------------------

    def _collective(self, marker: str, forward: bool) -> list[Operation]:
        if marker in (DISPATCH, COMBINE):
            return [Collective("alltoall", self.a2a_bytes, group="ep")] if self.e > 1 else []
        if self.t == 1:
            return []
        sp = self.par.sequence_parallel
        # F: identity / all-reduce (all-gather / reduce-scatter with SP); G the reverse.
        if (marker == F) == forward:
            op = "allgather" if sp else None
        else:
            op = "reduce_scatter" if sp else "allreduce"
        return [Collective(op, self.tp_bytes, group="tp")] if op else []

    def _lower(self, terms: list, phase: str) -> list[Operation]:
        out: list[Operation] = []
        for term in terms:
            if isinstance(term, Term):
                out.append(term.compute(phase, self.precision))
            else:
                out += self._collective(term, True)
        return out

    def _lower_backward(self, terms: list) -> list[Operation]:
        out: list[Operation] = []
        for term in reversed(terms):
            if isinstance(term, Term):
                out.append(term.backward().compute("backward", self.precision))
            else:
                out += self._collective(term, False)
        return out

    # -- stages ----------------------------------------------------------------------

    def blocks(self, stage: int, chunk: int) -> list[str]:
        """The blocks of virtual stage ``chunk * p + stage``: its layers, the embedding first, the head last."""
        k = chunk * self.p + stage
        blocks = ["layer"] * self.layers_per_chunk
        if k == 0:
            blocks.insert(0, "embed")
        if k == self.p * self.v - 1:
            blocks.append("head")
        return blocks

    def block_params(self, block: str) -> tuple[int, int]:
        return self.params[block]

    def stage_parameters(self, stage: int) -> tuple[int, int]:
        dense = expert = 0
        for c in range(self.v):
            for block in self.blocks(stage, c):
                d, e = self.block_params(block)
                dense, expert = dense + d, expert + e
        return dense, expert

    def stage_program(self, stage: int) -> list[Operation]:
        program: list[Operation] = []
        for step in range(self.w.steps):
            program += self.stage_step(stage, step)
        return program

    def _message(self, stage: int, forward: bool, microbatch: int, chunk: int, incoming: bool):
        """(pp peer, tag) of the activation or gradient an action receives (or sends); None at either end.

        Virtual stage k = chunk * p + stage; k + 1 follows it (wrapping from
        the last stage to the first with the next chunk).  A tag names the
        micro-batch, the receiving chunk and the direction, so messages match
        exactly, whatever the order.
        """
        p, v = self.p, self.v
        k = chunk * p + stage
        downstream = forward != incoming  # the message goes to (or comes from) k + 1
        other = k + 1 if downstream else k - 1
        if not 0 <= other < p * v:
            return None
        receiver_chunk = chunk if incoming else other // p
        tag = 2 * (microbatch * v + receiver_chunk) + (0 if forward else 1)
        return other % p, tag

    def stage_step(self, stage: int, step: int) -> list[Operation]:
        par = self.par
        order = schedule_order(par.schedule, self.p, stage, self.m, self.v)
        last_backward = {}
        for i, (forward, _, chunk) in enumerate(order):
            if not forward:
                last_backward[chunk] = i
        prefix = f"s{step}"
        reduce_op = "allreduce" if par.zero == 0 else "reduce_scatter"
        dense = _Buckets("dp", reduce_op, par.bucket_bytes) if self.d > 1 else None
        expert = _Buckets("edp", reduce_op, par.bucket_bytes) if self.edp > 1 else None
        out: list[Operation] = []
        pending_recv = self._recv(stage, order[0], prefix, 0, out)
        for i, (forward, mb, chunk) in enumerate(order):
            if pending_recv:
                out.append(Wait(tuple(pending_recv)))
            blocks = self.blocks(stage, chunk)
            action = f"{prefix}a{i}"
            if forward:
                self._forward(blocks, action, out)
            else:
                last = last_backward[chunk] == i
                self._backward(blocks, action, out, (dense, expert) if last else None, prefix)
            # Megatron-LM's combined p2p: send this action's output and post the
            # receive of the next action's input together, then wait for both.
            handles = []
            sent = self._message(stage, forward, mb, chunk, incoming=False)
            if sent is not None:
                handle = f"{action}o"
                out.append(Isend(sent[0], self.message_bytes, handle, tag=sent[1], group="pp"))
                handles.append(handle)
            if i + 1 < len(order):
                handles += self._recv(stage, order[i + 1], prefix, i + 1, out)
            pending_recv = handles
        if pending_recv:
            out.append(Wait(tuple(pending_recv)))
        self._optimizer(stage, dense, expert, out)
        return out

    def _recv(self, stage: int, action: tuple, prefix: str, i: int, out: list) -> list[str]:
        forward, mb, chunk = action
        source = self._message(stage, forward, mb, chunk, incoming=True)
        if source is None:
            return []
        handle = f"{prefix}a{i}i"
        out.append(Irecv(source[0], self.message_bytes, handle, tag=source[1], group="pp"))
        return [handle]

    def _gather(self, block: str, handle: str, out: list) -> list[Wait]:
        """ZeRO-3: start the all-gathers of a block's parameters (dense on dp, experts on edp); their waits."""
        dense, expert = self.block_params(block)
        waits = []
        for group, size, params in (("dp", self.d, dense), ("edp", self.edp, expert)):
            if size > 1 and params:
                out.append(Collective("allgather", self.B * params, blocking=False, handle=f"{handle}{group}",
                                      group=group))
                # One wait per group, so that its exposed time is counted against that group.
                waits.append(Wait((f"{handle}{group}",)))
        return waits

    def _with_parameters(self, blocks: list[str], action: str, out: list):
        """Yield each block in turn; with ZeRO-3 its parameters are gathered, the next block's prefetched."""
        if self.par.zero < 3:
            yield from blocks
            return
        pending = self._gather(blocks[0], f"{action}g0", out)
        for j, block in enumerate(blocks):
            ahead = self._gather(blocks[j + 1], f"{action}g{j + 1}", out) if j + 1 < len(blocks) else []
            out += pending
            yield block
            pending = ahead

    def _forward(self, blocks: list[str], action: str, out: list) -> None:
        lists = {"layer": self.layer_forward, "embed": self.embed_forward, "head": self.head_forward}
        for block in self._with_parameters(blocks, action, out):
            out += lists[block]

    def _backward(self, blocks: list[str], action: str, out: list, buckets, prefix: str) -> None:
        lists = {"layer": self.layer_backward, "embed": self.embed_backward, "head": self.head_backward}
        for block in self._with_parameters(list(reversed(blocks)), action, out):
            if block == "layer":
                out += self.layer_recompute
            out += lists[block]
            if buckets is not None:
                # The last micro-batch's backward of this chunk: its gradients are
                # final, so their buckets start reducing now, as DDP overlaps them.
                for bucket, params in zip(buckets, self.block_params(block)):
                    if bucket is not None and params:
                        bucket.add(self.B * params, out, prefix)
        if buckets is not None:
            for bucket in buckets:
                if bucket is not None:
                    bucket.flush(out, prefix)

    def _optimizer(self, stage: int, dense: _Buckets | None, expert: _Buckets | None, out: list) -> None:
        for bucket in (dense, expert):
            if bucket is not None and bucket.handles:
                out.append(Wait(tuple(bucket.handles)))
        dense_params, expert_params = self.stage_parameters(stage)
        zero = self.par.zero
        shard_d = self.d if zero else 1
        shard_e = self.edp if zero else 1
        local = -(-dense_params // shard_d) + -(-expert_params // shard_e)
        out.append(Compute(0.0, label="optimizer", nbytes=(2 * ADAM_STATE_BYTES + 2 * self.B) * local,
                           precision=self.precision))
        if zero in (1, 2):
            # Each rank updated its shard: gather the new weights before the next forward.
            for group, size, params in (("dp", self.d, dense_params), ("edp", self.edp, expert_params)):
                if size > 1 and params:
                    out.append(Collective("allgather", self.B * params, group=group))


# ---------------------------------------------------------------------------
# 3. The report of a step


def training_report(workload: TransformerTraining, nranks: int, makespan_s: float, records, per_group,
                    peak_flops_per_s: Sequence[float], memory_capacity_bytes: float = math.inf) -> dict[str, Any]:
    """Time per step, tokens/s, MFU, HFU, pipeline bubble and exposed communication by group kind.

    ``records``: the run's records (a DataFrame with rank, kind, start_s,
    end_s); ``per_group``: its exposed communication per rank and group
    (rank, group, comm_s); ``peak_flops_per_s``: each rank's peak in the
    workload's precision.  The measured bubble is the ranks' mean share of
    the step in which they neither compute nor wait for TP, DP or EP
    communication: the pipeline's fill and drain, and the transfers between
    stages (which ``exposed_comm_s['pp']`` also counts).  ``memory``: each
    stage's peak bytes per GPU by kind, against ``memory_capacity_bytes``.
    """
    steps = workload.steps
    par, m = workload._resolved(nranks)
    model, training = workload.model_spec, workload.training
    step_s = makespan_s / steps
    tokens = training.global_batch * model.seq_len
    model_flops = model_flops_per_step(model, training)
    hardware_flops = hardware_flops_per_step(model, training, par.recompute)
    peak = float(sum(peak_flops_per_s))
    compute = records[records["kind"] == "compute"]
    compute_s = (compute["end_s"] - compute["start_s"]).groupby(compute["rank"]).sum()
    by_kind = {"tp": 0.0, "pp": 0.0, "dp": 0.0, "ep": 0.0, "other": 0.0}
    if per_group is not None and len(per_group):
        totals = per_group.groupby(per_group["group"].fillna("").astype(str))["comm_s"].sum()
        for group, seconds in totals.items():
            by_kind[GROUP_KINDS.get(group, "other")] += float(seconds) / nranks
    busy_s = float(compute_s.sum()) / nranks + sum(v for k, v in by_kind.items() if k != "pp")
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
