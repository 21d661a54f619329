"""FLOP and byte accounting of a transformer layer, one readable term per GEMM or memory-bound op.

Every forward GEMM of a layer is a term (Narayanan et al. 2021, sec. 5.1;
Korthikanti et al. 2022, sec. 6), with its (m, n, k) per tensor-parallel rank
and its bytes; the memory-bound parts (layer norms, softmax, dropout,
activations, residuals) are terms of bytes moved and no FLOPs (as Narayanan
counts them).  Backward is twice forward (the input's and the weight's
gradient).  Model FLOPs (for MFU) count each layer's forward and backward
once; hardware FLOPs (for HFU) are what the ranks execute: the recomputed
forward and, for a mixture of experts, the capacity factor's padding too.
For a GPT shape the model FLOPs of a step are Narayanan's
72 B s L h^2 (1 + s / (6 h) + V / (12 h L)).

The bytes that cross the network (a stage's activations, a TP collective,
an expert all-to-all) and the optimizer step's bytes are terms here too;
``lowering`` places them in the programs.

Symbols: ``b`` micro-batch, ``s`` sequence, ``h`` hidden, ``a`` heads,
``kv`` key/value width (kv_heads x head_dim), ``f`` MLP width, ``V``
vocabulary, ``L`` layers, ``E`` experts, ``k`` top-k, ``t`` TP, ``e`` EP,
``B`` bytes per value of the training precision.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from workloads.ops import Compute
from workloads.transformer.spec import LOGIT_BYTES, ModelSpec, TrainingSpec

# Adam in mixed precision reads the fp32 master weight, momentum and variance
# (12 bytes) and the gradient (B bytes), and writes the three back and the
# training-precision copy of the weight (12 + B): 24 + 2B bytes per parameter
# (28 in bf16), with no FLOPs worth counting against the memory time.
ADAM_STATE_BYTES = 12

# The terms of a layer's attention that selective recomputation repeats in the
# backward (Korthikanti et al. 2022, sec. 5): the scores, their softmax and
# dropout, and the product with the values.
SELECTIVE_RECOMPUTE = ("scores", "softmax_dropout", "values")


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

    # -- bytes on the network ---------------------------------------------------

    @property
    def stage_message_bytes(self) -> int:
        """The activations (or their gradient) one TP rank sends to the next (previous) pipeline stage.

        Each TP rank sends its own copy of the b s h activations, or its s/t
        slice with sequence parallelism (where the layer's output is already
        split along the sequence).
        """
        return self.bytes_per_value * self.tokens * self.model.hidden // (self.t if self.sp else 1)

    @property
    def tp_collective_bytes(self) -> int:
        """An F or G's all-reduce (all-gather, reduce-scatter with SP): the b s h activations."""
        return self.bytes_per_value * self.tokens * self.model.hidden

    @property
    def alltoall_bytes(self) -> int:
        """One MoE dispatch (or combine) of one rank: b s k cf h values.

        Every TP rank of an EP group dispatches each token copy it holds (all
        b s tokens: with SP the all-gather before the MLP has brought them),
        padded to the capacity as GShard's fixed-size all-to-all is, spread
        uniformly over the group; the combine returns as many.
        """
        return int(round(self.bytes_per_value * self.routed_tokens * self.model.hidden))


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


def optimizer_bytes(parameters: int, bytes_per_value: int) -> int:
    """What Adam's step reads and writes for ``parameters`` (``ADAM_STATE_BYTES``): 24 + 2B bytes each."""
    return (2 * ADAM_STATE_BYTES + 2 * bytes_per_value) * parameters
