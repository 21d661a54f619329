"""The operation vocabulary: what one rank executes, in order.

Every backend (the simulator, MPI, torch.distributed) runs exactly these
operations; a high-level workload only ever produces lists of them.  They are
frozen dataclasses that serialize to plain dicts (``op_to_dict`` /
``op_from_dict``), so a scenario file, a Python object and what an MPI rank
receives are the same thing.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Union

from topologies.limits import MAX_INT, is_finite_number, short, short_names

# The collectives, their default algorithms and the lowered steps' types live with the
# semantics table; re-exported here as part of the vocabulary.
from workloads.collectives import COLLECTIVES, DEFAULT_ALGORITHM, Step, Transfer  # noqa: F401


@dataclass(frozen=True)
class Compute:
    """Local work of ``flops`` floating-point operations."""

    flops: float
    label: str = ""

    kind = "compute"

    def __post_init__(self):
        if not isinstance(self.flops, (int, float)) or not is_finite_number(self.flops) or self.flops < 0:
            raise ValueError(f"compute: flops must be a finite number >= 0, got {short(self.flops)}")
        if not isinstance(self.label, str):
            raise ValueError(f"compute: label must be a string, got {short(self.label)}")


@dataclass(frozen=True)
class Send:
    """Blocking send of ``nbytes`` to rank ``peer``; completes on delivery."""

    peer: int
    nbytes: int
    tag: int = 0

    kind = "send"

    def __post_init__(self):
        _check_p2p(self)


@dataclass(frozen=True)
class Recv:
    """Blocking receive of ``nbytes`` from rank ``peer``."""

    peer: int
    nbytes: int
    tag: int = 0

    kind = "recv"

    def __post_init__(self):
        _check_p2p(self)


@dataclass(frozen=True)
class Collective:
    """A collective over all ranks, run with a named algorithm.

    ``nbytes`` follows Thakur, Rabenseifner and Gropp (2005): the size of the
    whole vector (for allgather, the gathered output; for reduce_scatter, the
    input; for alltoall, one rank's whole send buffer).

    A non-blocking collective (``blocking=False``) starts on the rank's
    communication stream and returns at once; a later ``Wait`` names its
    ``handle``.  Non-blocking collectives of one rank run one after another, in
    issue order, as NCCL runs DDP's gradient buckets on one stream.
    An empty ``algorithm`` means the op's ``DEFAULT_ALGORITHM``.
    ``inter_algorithm`` is the all-reduce used among group leaders by the
    ``hierarchical`` algorithm.
    """

    op: str
    nbytes: int
    algorithm: str = ""
    root: int = 0
    blocking: bool = True
    handle: str | None = None
    inter_algorithm: str = "ring"

    def __post_init__(self):
        if not isinstance(self.op, str) or self.op not in COLLECTIVES:
            raise ValueError(
                f"collective: unknown op {short(self.op)}; expected one of {', '.join(COLLECTIVES)}"
            )
        if not _count(self.nbytes):
            raise ValueError(f"{self.op}: nbytes must be an integer in 0..2^63-1, got {short(self.nbytes)}")
        for name in ("algorithm", "inter_algorithm"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{self.op}: {name} must be a name, got {short(getattr(self, name))}")
        if not _count(self.root):
            raise ValueError(f"{self.op}: root must be a rank (integer >= 0), got {short(self.root)}")
        if not isinstance(self.blocking, bool):
            raise ValueError(f"{self.op}: blocking must be true or false, got {short(self.blocking)}")
        if self.handle is not None and not isinstance(self.handle, str):
            raise ValueError(f"{self.op}: handle must be a string, got {short(self.handle)}")
        if not self.algorithm:
            object.__setattr__(self, "algorithm", DEFAULT_ALGORITHM[self.op])
        if not self.blocking and not self.handle:
            raise ValueError(f"{self.op}: a non-blocking collective needs a handle")

    @property
    def kind(self) -> str:
        return self.op


@dataclass(frozen=True)
class Wait:
    """Wait for the non-blocking collectives named by ``handles``."""

    handles: tuple[str, ...]

    kind = "wait"

    def __post_init__(self):
        handles = (self.handles,) if isinstance(self.handles, str) else self.handles
        if not isinstance(handles, (list, tuple)) or not all(isinstance(h, str) for h in handles):
            raise ValueError(f"wait: handles must be a list of handle names, got {short(self.handles)}")
        object.__setattr__(self, "handles", tuple(handles))


Operation = Union[Compute, Send, Recv, Collective, Wait]

_OP_TYPES: dict[str, type] = {"compute": Compute, "send": Send, "recv": Recv, "wait": Wait}


def _count(value) -> bool:
    # Sizes, ranks and tags: the result tables hold them as int64.
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INT


def _check_p2p(op) -> None:
    if not _count(op.peer):
        raise ValueError(f"{op.kind}: peer must be a rank (integer >= 0), got {short(op.peer)}")
    if not _count(op.nbytes):
        raise ValueError(f"{op.kind}: nbytes must be an integer in 0..2^63-1, got {short(op.nbytes)}")
    # Negative tags belong to the collectives (see simcore.engine).
    if not _count(op.tag):
        raise ValueError(f"{op.kind}: tag must be an integer >= 0, got {short(op.tag)}")


def op_to_dict(op: Operation) -> dict[str, Any]:
    """A plain dict with a ``kind`` key; defaults are left out."""
    out: dict[str, Any] = {"kind": op.kind}
    for f in dataclasses.fields(op):
        if isinstance(op, Collective) and f.name == "op":
            continue
        value = getattr(op, f.name)
        if value == f.default:
            continue
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def op_from_dict(data: dict[str, Any]) -> Operation:
    """Inverse of ``op_to_dict``; raises ValueError naming what is wrong."""
    if not isinstance(data, dict) or "kind" not in data:
        raise ValueError(f"operation must be a mapping with a 'kind', got {short(data)}")
    fields = dict(data)
    kind = fields.pop("kind")
    if not isinstance(kind, str):
        raise ValueError(f"operation: kind must be a name, got {short(kind)}")
    if kind in COLLECTIVES:
        cls, fields["op"] = Collective, kind
        if kind == "barrier":
            fields.setdefault("nbytes", 0)
    elif kind in _OP_TYPES:
        cls = _OP_TYPES[kind]
    else:
        known = ", ".join(list(_OP_TYPES) + list(COLLECTIVES))
        raise ValueError(f"operation: unknown kind {short(kind)}; expected one of {known}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - names, key=str)
    if unknown:
        raise ValueError(f"{kind}: unknown field(s) {short_names(unknown)}; allowed: {', '.join(sorted(names))}")
    for key in ("nbytes", "peer", "root", "tag"):
        # YAML writes 1e6 as a float; accept integral floats for sizes.
        if isinstance(fields.get(key), float) and fields[key].is_integer() and abs(fields[key]) <= MAX_INT:
            fields[key] = int(fields[key])
    try:
        return cls(**fields)
    except TypeError as exc:
        raise ValueError(f"{kind}: {exc}") from None
