"""Lowering one training step of a transformer to the program each pipeline stage's ranks run.

On the layout's groups (``workloads.groups.Layout``: tensor-parallel
innermost, order tp-dp-pp): the pipeline schedule's forwards and backwards
(``schedule``), per layer the GEMMs and memory-bound terms (``flops``), the
TP all-reduces (or, with sequence parallelism, all-gather + reduce-scatter),
the MoE all-to-alls, recomputation, the PP activations and gradients, the DP
gradient reduction overlapped with the last backward, and the optimizer
step.  Every rank of a pipeline stage runs the same program (its groups are
relative: ``group: tp`` is its own TP group).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from workloads.ops import Collective, Compute, Irecv, Isend, Operation, Wait
from workloads.transformer.flops import (COMBINE, DISPATCH, F, SELECTIVE_RECOMPUTE, Shape, Term, embedding_terms,
                                         head_terms, layer_terms, optimizer_bytes)
from workloads.transformer.schedule import schedule_order
from workloads.transformer.spec import (BLOCKS, ModelSpec, ParallelSpec, TrainingSpec, block_parameters,
                                        stage_layers)


def padded(nbytes: int, members: int) -> int:
    """``nbytes`` rounded up to a multiple of the group's ``members``: Megatron-LM pads its gradient and
    parameter buffers so that each data-parallel rank's shard is whole, and a ring's chunks are then equal
    on every member (which is also what lets its members fold into classes, ``simcore.symmetry``)."""
    return -(-nbytes // members) * members


@dataclass
class _Buckets:
    """Gradients of one group kind, gathered into buckets of ``bucket_bytes`` as backward produces them,
    each padded to a multiple of the group's ``members``."""

    group: str
    op: str
    bucket_bytes: int
    members: int = 1
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
        out.append(Collective(self.op, padded(nbytes, self.members), blocking=False, handle=handle, group=self.group))


class Lowering:
    """Everything one step of one stage needs, built once and shared by every layer and micro-batch.

    ``par``: the layout resolved for the ranks (``ParallelSpec.resolve``);
    ``m``: its micro-batches per step.
    """

    def __init__(self, model: ModelSpec, training: TrainingSpec, par: ParallelSpec, m: int):
        self.model, self.training, self.par, self.m = model, training, par, m
        self.p, self.v = par.pp, par.virtual_stages
        self.t, self.d, self.e = par.tp, par.dp, par.ep
        # With ep = 1 every DP rank holds every expert: they reduce with the dense weights on dp.
        self.edp = par.dp // par.ep if model.moe and par.ep > 1 else 1
        self.precision = training.precision
        B = self.B = training.bytes_per_value
        x = self.shape = Shape(model, training.micro_batch, par.tp, par.ep, par.sequence_parallel, B)
        self.chunk_layers = stage_layers(model.layers, par)
        self.message_bytes = x.stage_message_bytes
        self.tp_bytes = x.tp_collective_bytes
        self.a2a_bytes = x.alltoall_bytes

        layer = layer_terms(x)
        self.layer_forward = self._lower(layer, "forward")
        self.layer_backward = self._lower_backward(layer)
        self.layer_recompute = self._recompute(layer)
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

    def _recompute(self, layer: list) -> list[Operation]:
        """What the backward of a layer runs again first: the whole forward (full) or its attention scores."""
        if self.par.recompute == "full":
            return self._lower(layer, "recompute")
        if self.par.recompute == "selective":
            return [term.compute("recompute", self.precision) for term in layer
                    if isinstance(term, Term) and term.label in SELECTIVE_RECOMPUTE]
        return []

    # -- stages ----------------------------------------------------------------------

    def blocks(self, stage: int, chunk: int) -> list[str]:
        """The blocks of virtual stage ``chunk * p + stage``: its layers, the embedding first, the head last."""
        k = chunk * self.p + stage
        blocks = ["layer"] * self.chunk_layers[k]
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
        for step in range(self.training.steps):
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
        dense = _Buckets("dp", reduce_op, par.bucket_bytes, self.d) if self.d > 1 else None
        expert = _Buckets("edp", reduce_op, par.bucket_bytes, self.edp) if self.edp > 1 else None
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
                out.append(Collective("allgather", padded(self.B * params, size), blocking=False,
                                      handle=f"{handle}{group}", group=group))
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
        out.append(Compute(0.0, label="optimizer", nbytes=optimizer_bytes(local, self.B), precision=self.precision))
        if zero in (1, 2):
            # Each rank updated its shard: gather the new weights before the next forward.
            for group, size, params in (("dp", self.d, dense_params), ("edp", self.edp, expert_params)):
                if size > 1 and params:
                    out.append(Collective("allgather", padded(self.B * params, size), group=group))
