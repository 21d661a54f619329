"""High-level workloads: each lowers to one program (list of operations) per rank.

A workload never knows which backend runs it; ``programs(nranks, groups)`` is
all a backend sees.  Workloads are frozen dataclasses registered by ``kind``
in ``WORKLOADS`` and round-trip through plain dicts (``to_dict`` /
``workload_from_dict``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from workloads.ops import COLLECTIVES, Collective, Compute, Operation, op_from_dict, op_to_dict

Groups = "tuple[tuple[int, ...], ...] | None"

WORKLOADS: dict[str, type] = {}


def register(cls):
    WORKLOADS[cls.kind] = cls
    return cls


def _as_int(value, where: str) -> int:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    return value


class WorkloadBase:
    kind: ClassVar[str] = ""
    _int_fields: ClassVar[tuple[str, ...]] = ()

    def programs(self, nranks: int, groups=None) -> list[list[Operation]]:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value != f.default:
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(
                f"workload ({cls.kind}): unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(fields))}"
            )
        data = dict(data)
        for name in cls._int_fields:
            if name in data:
                data[name] = _as_int(data[name], f"workload.{name}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(f"workload ({cls.kind}): {exc}") from None


@register
@dataclass(frozen=True)
class CollectiveWorkload(WorkloadBase):
    """``iterations`` of one collective on every rank, with optional compute between."""

    kind: ClassVar[str] = "collective"
    _int_fields: ClassVar[tuple[str, ...]] = ("nbytes", "root", "iterations")

    op: str = "allreduce"
    nbytes: int = 1 << 20
    algorithm: str = ""
    root: int = 0
    iterations: int = 1
    compute_flops: float = 0.0
    inter_algorithm: str = "ring"

    def __post_init__(self):
        if self.op not in COLLECTIVES:
            raise ValueError(f"workload.op: unknown collective {self.op!r}; expected one of {', '.join(COLLECTIVES)}")
        if self.iterations < 1:
            raise ValueError(f"workload.iterations must be >= 1, got {self.iterations}")
        if self.nbytes < 0:
            raise ValueError(f"workload.nbytes must be >= 0, got {self.nbytes}")
        if self.compute_flops < 0:
            raise ValueError(f"workload.compute_flops must be >= 0, got {self.compute_flops}")

    def programs(self, nranks: int, groups=None) -> list[list[Operation]]:
        coll = Collective(
            self.op, self.nbytes, algorithm=self.algorithm, root=self.root, inter_algorithm=self.inter_algorithm
        )
        program: list[Operation] = []
        for _ in range(self.iterations):
            if self.compute_flops:
                program.append(Compute(self.compute_flops))
            program.append(coll)
        return [list(program) for _ in range(nranks)]


@register
@dataclass(frozen=True)
class ProgramsWorkload(WorkloadBase):
    """Explicit per-rank programs: ``programs[r]`` is rank r's list of operations."""

    kind: ClassVar[str] = "programs"

    programs_: tuple[tuple[Operation, ...], ...] = ()

    def programs(self, nranks: int, groups=None) -> list[list[Operation]]:
        if len(self.programs_) != nranks:
            raise ValueError(
                f"workload (programs): {len(self.programs_)} rank programs given but the topology has {nranks} ranks"
            )
        return [list(p) for p in self.programs_]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "ranks": [[op_to_dict(op) for op in p] for p in self.programs_]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        unknown = sorted(set(data) - {"ranks"})
        if unknown:
            raise ValueError(f"workload (programs): unknown field(s) {', '.join(unknown)}; allowed: ranks")
        ranks = data.get("ranks")
        if isinstance(ranks, dict):
            keys = sorted(ranks)
            if keys != list(range(len(keys))):
                raise ValueError(f"workload.ranks: keys must be the ranks 0..{len(keys) - 1}, got {keys}")
            ranks = [ranks[k] for k in keys]
        if not isinstance(ranks, list):
            raise ValueError("workload (programs): 'ranks' must be a list (or mapping rank -> list) of operations")
        programs = []
        for r, ops in enumerate(ranks):
            program = []
            for i, op in enumerate(ops or []):
                try:
                    program.append(op_from_dict(op))
                except ValueError as exc:
                    raise ValueError(f"workload.ranks[{r}][{i}]: {exc}") from None
            programs.append(tuple(program))
        return cls(programs_=tuple(programs))


def workload_from_dict(data: dict[str, Any]):
    if not isinstance(data, dict):
        raise ValueError(f"workload: expected a mapping, got {data!r}")
    data = dict(data)
    kind = data.pop("kind", None)
    if kind not in WORKLOADS:
        raise ValueError(f"workload.kind: unknown {kind!r}; expected one of {', '.join(WORKLOADS)}")
    return WORKLOADS[kind].from_dict(data)
