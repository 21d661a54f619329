"""High-level workloads: each lowers to one program (list of operations) per rank.

A workload never knows which backend runs it; ``programs(nranks, groups)`` is
all a backend sees.  Workloads are frozen dataclasses registered by ``kind``
in ``WORKLOADS`` and round-trip through plain dicts (``to_dict`` /
``workload_from_dict``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from workloads.ops import COLLECTIVES, Collective, Compute, Operation, op_from_dict, op_to_dict

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


def check_int(obj, names, minimum: int | None) -> None:
    """ValueError naming ``workload.<name>`` unless each field is an int (>= minimum, if given)."""
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"workload.{name} must be an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise ValueError(f"workload.{name} must be >= {minimum}, got {value}")


def check_nonnegative(obj, names) -> None:
    """ValueError naming ``workload.<name>`` unless each field is a finite number >= 0."""
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
            raise ValueError(f"workload.{name} must be a finite number >= 0, got {value!r}")


def split_bytes(total: int, parts: int) -> list[int]:
    """``total`` bytes in ``parts`` near-equal shards, the first ``total % parts`` one byte larger."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def rank_tuple(value, name: str) -> tuple[int, ...]:
    """A field holding ranks, as a tuple of ints (YAML gives a list; 3.0 is accepted as 3)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"workload.{name} must be a list of ranks, got {value!r}")
    ranks = tuple(_as_int(r, f"workload.{name}") for r in value)
    if len(set(ranks)) != len(ranks):
        raise ValueError(f"workload.{name} lists a rank twice: {list(ranks)}")
    return ranks


def resolve_rank(rank: int, nranks: int, name: str) -> int:
    """``rank`` in 0..nranks-1; negative counts from the end (-1 is the last rank)."""
    resolved = rank + nranks if rank < 0 else rank
    if not 0 <= resolved < nranks:
        raise ValueError(f"workload.{name}: rank {rank} is out of range for {nranks} ranks")
    return resolved


def resolve_ranks(ranks, nranks: int, name: str) -> tuple[int, ...]:
    resolved = tuple(resolve_rank(r, nranks, name) for r in ranks)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"workload.{name} names a rank twice: {list(ranks)} with {nranks} ranks")
    return resolved


def round_half_up(x: float) -> int:
    return int(x + 0.5)


def _check_like_default(name: str, value, default) -> None:
    """A file's value must have its field's kind: true/false, text, or a finite number."""
    where = f"workload.{name}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise ValueError(f"{where} must be text, got {value!r}")
    elif isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{where} must be a finite number, got {value!r}")


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
                # Tuples as lists, so that the dict dumps to YAML and JSON.
                out[f.name] = list(value) if isinstance(value, tuple) else value
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
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for name, value in data.items():
            _check_like_default(name, value, defaults[name])
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
            # JSON has only string keys: "0" is rank 0 there.
            try:
                ranks = {_rank_key(k): v for k, v in ranks.items()}
            except ValueError:
                raise ValueError(f"workload.ranks: keys must be ranks (integers), got {list(ranks)}") from None
            keys = sorted(ranks)
            if keys != list(range(len(keys))):
                raise ValueError(f"workload.ranks: keys must be the ranks 0..{len(keys) - 1}, got {keys}")
            ranks = [ranks[k] for k in keys]
        if not isinstance(ranks, list):
            raise ValueError("workload (programs): 'ranks' must be a list (or mapping rank -> list) of operations")
        programs = []
        for r, ops in enumerate(ranks):
            if ops is not None and not isinstance(ops, list):
                raise ValueError(f"workload.ranks[{r}]: expected a list of operations, got {ops!r}")
            program = []
            for i, op in enumerate(ops or []):
                try:
                    program.append(op_from_dict(op))
                except ValueError as exc:
                    raise ValueError(f"workload.ranks[{r}][{i}]: {exc}") from None
            programs.append(tuple(program))
        return cls(programs_=tuple(programs))


def _rank_key(key) -> int:
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    if isinstance(key, str) and key.isdigit():
        return int(key)
    raise ValueError(key)


def workload_from_dict(data: dict[str, Any]):
    if not isinstance(data, dict):
        raise ValueError(f"workload: expected a mapping, got {data!r}")
    data = dict(data)
    kind = data.pop("kind", None)
    if not isinstance(kind, str) or kind not in WORKLOADS:
        raise ValueError(f"workload.kind: unknown {kind!r}; expected one of {', '.join(WORKLOADS)}")
    return WORKLOADS[kind].from_dict(data)
