"""Pipeline parallelism (GPipe, 1F1B): the ranks are the stages of one model, in rank order.

A step splits the batch into M micro-batches.  Stage s runs the forward pass
of each micro-batch (``forward_flops``) and sends its activations
(``activation_bytes``) to stage s+1; the backward pass (``backward_factor`` x
forward) sends the activations' gradient, of the same size, from s+1 back to
s.  ``gpipe`` runs all forwards, then all backwards (Huang et al. 2019);
``1f1b`` (PipeDream-Flush, Narayanan et al. 2021) starts backwards as early as
possible, alternating one forward and one backward, which bounds the
activations in flight by S instead of M but leaves the bubble unchanged.  With
S uniform stages and free communication a step takes
(M + S - 1)(t_f + t_b): M micro-batches plus S - 1 fill and drain slots.  A
message costs a stage alpha + n beta of its time line (sends are blocking),
which GPipe adds 2(M + S - 2) times along its critical path.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from topologies.text import short
from workloads.base import ProgramSize, WorkloadBase, check_int, check_nonnegative, register
from workloads.ops import Compute, Operation, Recv, Send

SCHEDULES = ("gpipe", "1f1b")


@register
@dataclass(frozen=True)
class PipelineParallel(WorkloadBase):
    """``steps`` pipeline-parallel training steps over all ranks as stages.

    ``forward_flops`` is one stage's forward pass of one micro-batch;
    ``optimizer_flops`` is one stage's optimizer step, run after its last
    backward of the step (no flush across stages beyond what the data
    dependencies impose).
    """

    kind: ClassVar[str] = "pipeline"
    _int_fields: ClassVar[tuple[str, ...]] = ("microbatches", "activation_bytes", "steps")

    microbatches: int = 8
    forward_flops: float = 1.0e12
    backward_factor: float = 2.0
    activation_bytes: int = 16 * 2**20
    schedule: str = "gpipe"
    steps: int = 1
    optimizer_flops: float = 0.0

    def __post_init__(self):
        check_int(self, ("microbatches", "steps"), 1)
        check_int(self, ("activation_bytes",), 0)
        check_nonnegative(self, ("forward_flops", "backward_factor", "optimizer_flops"))
        if self.schedule not in SCHEDULES:
            raise ValueError(f"workload.schedule: unknown {short(self.schedule)}; expected one of {', '.join(SCHEDULES)}")

    @property
    def backward_flops(self) -> float:
        return self.backward_factor * self.forward_flops

    def size(self, nranks: int, groups=None) -> ProgramSize:
        # Per stage and micro-batch: a forward and a backward pass, each at
        # most a receive, a compute and a send; then the optimizer step.
        return ProgramSize(operations=self.steps * nranks * (6 * self.microbatches + 1))

    def programs(self, nranks: int, groups=None) -> list[list[Operation]]:
        build = self._gpipe if self.schedule == "gpipe" else self._one_f_one_b
        programs = []
        for s in range(nranks):
            step = build(s, nranks)
            if self.optimizer_flops:
                step.append(Compute(self.optimizer_flops, label="optimizer"))
            programs.append(step * self.steps)
        return programs

    # Each pass is (receive, compute, send); a stage at either end of the
    # pipeline has no receive or no send.
    def _forward(self, s: int, stages: int, m: int) -> tuple:
        a = self.activation_bytes
        return (
            Recv(s - 1, a) if s > 0 else None,
            Compute(self.forward_flops, label=f"forward[{m}]"),
            Send(s + 1, a) if s < stages - 1 else None,
        )

    def _backward(self, s: int, stages: int, m: int) -> tuple:
        a = self.activation_bytes
        return (
            Recv(s + 1, a) if s < stages - 1 else None,
            Compute(self.backward_flops, label=f"backward[{m}]"),
            Send(s - 1, a) if s > 0 else None,
        )

    def _gpipe(self, s: int, stages: int) -> list[Operation]:
        m_count = self.microbatches
        passes = [self._forward(s, stages, m) for m in range(m_count)]
        # Backwards run in reverse micro-batch order, as autograd unwinds them.
        passes += [self._backward(s, stages, m) for m in reversed(range(m_count))]
        return [op for p in passes for op in p if op is not None]

    def _one_f_one_b(self, s: int, stages: int) -> list[Operation]:
        m_count = self.microbatches
        warmup = min(stages - s - 1, m_count)
        ops: list[Operation] = []
        for m in range(warmup):
            ops += self._forward(s, stages, m)
        steady = m_count - warmup
        early_recv = False
        for i in range(steady):
            recv, compute, send = self._forward(s, stages, warmup + i)
            ops += (None if early_recv else recv, compute, send)
            recv, compute, send = self._backward(s, stages, i)
            ops += (recv, compute)
            # In the steady state stage s sends an activation to s+1 while
            # s+1 sends a gradient to s.  Stage s+1 therefore receives its
            # next activation before it sends the gradient, so a pair of
            # stages never blocks in two sends at once (rendezvous MPI).
            early_recv = s > 0 and i + 1 < steady
            if early_recv:
                ops.append(self._forward(s, stages, warmup + i + 1)[0])
            ops.append(send)
        for i in range(steady, m_count):
            ops += self._backward(s, stages, i)
        return [op for op in ops if op is not None]
