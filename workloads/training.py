"""A data-parallel training step, as PyTorch DDP runs it.

Forward, then backward in gradient buckets: as soon as a bucket's gradients
exist its all-reduce starts on the communication stream while backward goes
on with the next bucket (DDP's overlap); the optimizer runs after all buckets
are reduced.  With gradient accumulation the first micro-batches skip the
all-reduce (DDP's ``no_sync``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from topologies.text import short
from workloads.base import ProgramSize, WorkloadBase, collective_size, register
from workloads.ops import Collective, Compute, Operation, Wait


@register
@dataclass(frozen=True)
class DataParallelStep(WorkloadBase):
    """``steps`` synchronous data-parallel training steps.

    ``flops_per_sample`` counts forward and backward (about 6 x parameters x
    tokens for a transformer); ``forward_fraction`` of it is forward.
    Gradients are ``parameters * bytes_per_parameter`` bytes, all-reduced in
    buckets of ``bucket_bytes`` (DDP's default is 25 MiB).
    """

    kind: ClassVar[str] = "data_parallel"
    _int_fields: ClassVar[tuple[str, ...]] = (
        "parameters", "bytes_per_parameter", "batch_per_rank", "bucket_bytes", "accumulation_steps", "steps",
    )

    parameters: int = 25_000_000
    bytes_per_parameter: int = 4
    flops_per_sample: float = 6 * 25_000_000 * 512
    batch_per_rank: int = 8
    bucket_bytes: int = 25 * 2**20
    accumulation_steps: int = 1
    steps: int = 1
    algorithm: str = "ring"
    inter_algorithm: str = "ring"
    overlap: bool = True
    forward_fraction: float = 1 / 3
    optimizer_flops_per_parameter: float = 0.0

    def __post_init__(self):
        for name in ("parameters", "bytes_per_parameter", "batch_per_rank", "bucket_bytes",
                     "accumulation_steps", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"workload.{name} must be >= 1, got {short(getattr(self, name))}")
        if not self.flops_per_sample >= 0:
            raise ValueError(f"workload.flops_per_sample must be >= 0, got {short(self.flops_per_sample)}")
        if not 0 <= self.forward_fraction <= 1:
            raise ValueError(f"workload.forward_fraction must be in [0, 1], got {short(self.forward_fraction)}")
        if self.optimizer_flops_per_parameter < 0:
            raise ValueError("workload.optimizer_flops_per_parameter must be >= 0")

    @property
    def gradient_bytes(self) -> int:
        return self.parameters * self.bytes_per_parameter

    @property
    def bucket_count(self) -> int:
        return -(-self.gradient_bytes // self.bucket_bytes)

    def size(self, nranks: int, groups=None) -> ProgramSize:
        buckets = self.bucket_count
        computes = 2 * (self.accumulation_steps - 1) + 1 + (buckets if self.overlap else 1) + (
            1 if self.optimizer_flops_per_parameter else 0) + (1 if self.overlap else 0)  # the Wait
        step = ProgramSize(operations=computes * nranks)
        step += collective_size("allreduce", self.algorithm, nranks, groups, self.inter_algorithm).repeated(buckets)
        return step.repeated(self.steps)

    def bucket_sizes(self) -> list[int]:
        total = self.gradient_bytes
        count = self.bucket_count
        return [self.bucket_bytes] * (count - 1) + [total - self.bucket_bytes * (count - 1)]

    def programs(self, nranks: int, groups=None) -> list[list[Operation]]:
        micro_flops = self.flops_per_sample * self.batch_per_rank
        forward = Compute(micro_flops * self.forward_fraction, label="forward")
        backward_flops = micro_flops * (1 - self.forward_fraction)
        buckets = self.bucket_sizes()
        total = self.gradient_bytes
        program: list[Operation] = []
        for step in range(self.steps):
            for _ in range(self.accumulation_steps - 1):
                program += [forward, Compute(backward_flops, label="backward")]
            program.append(forward)
            if self.overlap:
                handles = []
                for i, size in enumerate(buckets):
                    handle = f"s{step}b{i}"
                    handles.append(handle)
                    program.append(Compute(backward_flops * size / total, label=f"backward[{i}]"))
                    program.append(
                        Collective("allreduce", size, algorithm=self.algorithm, blocking=False, handle=handle,
                                   inter_algorithm=self.inter_algorithm)
                    )
                program.append(Wait(tuple(handles)))
            else:
                program.append(Compute(backward_flops, label="backward"))
                for size in buckets:
                    program.append(
                        Collective("allreduce", size, algorithm=self.algorithm, inter_algorithm=self.inter_algorithm)
                    )
            if self.optimizer_flops_per_parameter:
                program.append(Compute(self.optimizer_flops_per_parameter * self.parameters, label="optimizer"))
        return [list(program) for _ in range(nranks)]
