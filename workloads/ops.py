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

from topologies.text import MAX_INT, is_finite_number, short, short_names

# The collectives, their default algorithms and the lowered steps' types live with the
# semantics table; re-exported here as part of the vocabulary.
from workloads.collectives import COLLECTIVES, DEFAULT_ALGORITHM, Step, Transfer  # noqa: F401


@dataclass(frozen=True)
class Compute:
    """Local work of ``flops`` floating-point operations.

    ``nbytes``: bytes it reads and writes in the node's memory, for the
    roofline (time is the larger of the FLOP time and the memory time);
    ``gemm``: the (m, n, k) of the matrix product it is, whose shape sets the
    fraction of peak FLOP/s it reaches (the node's efficiency table);
    ``precision``: which of the node's peaks applies (``""``: the node's
    default speed, ``flops_per_s``).
    """

    flops: float
    label: str = ""
    nbytes: int = 0
    gemm: tuple[int, ...] = ()
    precision: str = ""

    kind = "compute"

    def __post_init__(self):
        if not isinstance(self.flops, (int, float)) or not is_finite_number(self.flops) or self.flops < 0:
            raise ValueError(f"compute: flops must be a finite number >= 0, got {short(self.flops)}")
        if not isinstance(self.label, str):
            raise ValueError(f"compute: label must be a string, got {short(self.label)}")
        if not _count(self.nbytes):
            raise ValueError(f"compute: nbytes must be an integer in 0..2^63-1, got {short(self.nbytes)}")
        gemm = self.gemm
        if isinstance(gemm, (str, bytes)) or not isinstance(gemm, (list, tuple)) or (
                gemm and (len(gemm) != 3 or not all(_count(d) and d > 0 for d in gemm))):
            raise ValueError(f"compute: gemm must be [m, n, k] (three integers >= 1) or absent, got {short(gemm)}")
        object.__setattr__(self, "gemm", tuple(gemm))
        if not isinstance(self.precision, str):
            raise ValueError(f"compute: precision must be a name such as bf16, got {short(self.precision)}")


@dataclass(frozen=True)
class Send:
    """Blocking send of ``nbytes`` to ``peer``; completes on delivery.

    ``peer`` is a rank of ``group`` (the world, ``""``, by default), as MPI
    numbers ranks on a communicator; messages on different groups never match.
    """

    peer: int
    nbytes: int
    tag: int = 0
    group: str = ""

    kind = "send"

    def __post_init__(self):
        _check_p2p(self)


@dataclass(frozen=True)
class Recv:
    """Blocking receive of ``nbytes`` from ``peer`` (a rank of ``group``)."""

    peer: int
    nbytes: int
    tag: int = 0
    group: str = ""

    kind = "recv"

    def __post_init__(self):
        _check_p2p(self)


@dataclass(frozen=True)
class Isend:
    """Non-blocking send (MPI ``Isend``): starts at once; a later ``Wait`` on ``handle`` completes it."""

    peer: int
    nbytes: int
    handle: str
    tag: int = 0
    group: str = ""

    kind = "isend"

    def __post_init__(self):
        _check_p2p(self)
        _check_handle(self)


@dataclass(frozen=True)
class Irecv:
    """Non-blocking receive (MPI ``Irecv``): posted at once; a later ``Wait`` on ``handle`` completes it."""

    peer: int
    nbytes: int
    handle: str
    tag: int = 0
    group: str = ""

    kind = "irecv"

    def __post_init__(self):
        _check_p2p(self)
        _check_handle(self)


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
    ``inter_algorithm`` is the all-reduce used among server leaders by the
    ``hierarchical`` algorithm.

    ``group`` names the process group it runs on (``workloads.groups``; the
    world, ``""``, by default); ``root`` is a rank of that group.
    ``alltoallv`` takes per-peer byte counts instead of ``nbytes``:
    ``send_nbytes[j]`` to group rank j, ``recv_nbytes[j]`` from it (MPI's
    sendcounts and recvcounts); its ``nbytes`` is ``sum(send_nbytes)``.
    """

    op: str
    nbytes: int = 0
    algorithm: str = ""
    root: int = 0
    blocking: bool = True
    handle: str | None = None
    inter_algorithm: str = "ring"
    group: str = ""
    send_nbytes: tuple[int, ...] = ()
    recv_nbytes: tuple[int, ...] = ()

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
        if not isinstance(self.group, str):
            raise ValueError(f"{self.op}: group must be a group's name, got {short(self.group)}")
        if self.op == "alltoallv":
            for name in ("send_nbytes", "recv_nbytes"):
                counts = getattr(self, name)
                if isinstance(counts, (str, bytes)) or not isinstance(counts, (list, tuple)) or not all(
                        _count(c) for c in counts):
                    raise ValueError(f"alltoallv: {name} must be a list of byte counts (integers in 0..2^63-1), "
                                     f"one per rank of the group, got {short(counts)}")
                object.__setattr__(self, name, tuple(counts))
            if len(self.send_nbytes) != len(self.recv_nbytes) or not self.send_nbytes:
                raise ValueError(f"alltoallv: send_nbytes and recv_nbytes need one count per rank of the group, "
                                 f"got {len(self.send_nbytes)} and {len(self.recv_nbytes)}")
            total = sum(self.send_nbytes)
            if self.nbytes not in (0, total) or total > MAX_INT:
                raise ValueError(f"alltoallv: nbytes is the sum of send_nbytes ({total}); got {short(self.nbytes)}")
            object.__setattr__(self, "nbytes", total)
        elif self.send_nbytes or self.recv_nbytes:
            raise ValueError(f"{self.op}: send_nbytes and recv_nbytes belong to alltoallv only")
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


Operation = Union[Compute, Send, Recv, Isend, Irecv, Collective, Wait]
# Point-to-point operations, blocking or not.
P2P = (Send, Recv, Isend, Irecv)
# Operations that a later Wait completes.
NONBLOCKING_P2P = (Isend, Irecv)

_OP_TYPES: dict[str, type] = {"compute": Compute, "send": Send, "recv": Recv, "isend": Isend, "irecv": Irecv,
                              "wait": Wait}


def is_nonblocking(op) -> bool:
    """Does a later ``Wait`` complete ``op`` (by its ``handle``)?"""
    return type(op) in NONBLOCKING_P2P or (type(op) is Collective and not op.blocking)


def op_group(op) -> str:
    """The group an operation runs on ('' for the world, and for compute and waits)."""
    return getattr(op, "group", "")


def wait_group(op: "Wait", group_of_handle: dict[str, str]) -> str:
    """The group a ``Wait``'s record carries: that of the operations it waits for when they share one, else ''."""
    groups = {group_of_handle.get(h, "") for h in op.handles}
    return groups.pop() if len(groups) == 1 else ""


def record_groups(program) -> list[str]:
    """The ``group`` each operation's record carries: its own group, and for a
    ``Wait`` the group of the operations it waits for when they share one
    (else ''), so a wait's exposed time is counted against that group."""
    of_handle: dict[str, str] = {}
    out = []
    append = out.append
    for op in program:
        if type(op) is Compute:
            append("")  # most of a training step's operations
            continue
        if type(op) is Wait:
            out.append(wait_group(op, of_handle))
            continue
        if is_nonblocking(op):
            of_handle[op.handle] = op.group
        out.append(op_group(op))
    return out


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
    if not isinstance(op.group, str):
        raise ValueError(f"{op.kind}: group must be a group's name, got {short(op.group)}")


def _check_handle(op) -> None:
    if not isinstance(op.handle, str) or not op.handle:
        raise ValueError(f"{op.kind}: handle must be a non-empty name, got {short(op.handle)}")


def _integral(value):
    if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_INT:
        return int(value)
    return value


def op_to_dict(op: Operation) -> dict[str, Any]:
    """A plain dict with a ``kind`` key; defaults are left out."""
    out: dict[str, Any] = {"kind": op.kind}
    for f in dataclasses.fields(op):
        if isinstance(op, Collective) and (f.name == "op" or (f.name == "nbytes" and op.op == "alltoallv")):
            continue
        value = getattr(op, f.name)
        # A collective's nbytes is written even when 0: op_from_dict requires it (barrier and alltoallv aside).
        if value == f.default and not (isinstance(op, Collective) and f.name == "nbytes" and op.op != "barrier"):
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
    elif kind in _OP_TYPES:
        cls = _OP_TYPES[kind]
    else:
        known = ", ".join(list(_OP_TYPES) + list(COLLECTIVES))
        raise ValueError(f"operation: unknown kind {short(kind)}; expected one of {known}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - names, key=str)
    if unknown:
        raise ValueError(f"{kind}: unknown field(s) {short_names(unknown)}; allowed: {', '.join(sorted(names))}")
    if cls is Collective and kind not in ("barrier", "alltoallv") and "nbytes" not in fields:
        raise ValueError(f"{kind}: missing nbytes (the size of the vector in bytes)")
    for key in ("nbytes", "peer", "root", "tag"):
        # YAML writes 1e6 as a float; accept integral floats for sizes.
        if key in fields:
            fields[key] = _integral(fields[key])
    for key in ("send_nbytes", "recv_nbytes", "gemm"):
        if isinstance(fields.get(key), list):
            fields[key] = tuple(_integral(c) for c in fields[key])
    try:
        return cls(**fields)
    except TypeError as exc:
        raise ValueError(f"{kind}: {exc}") from None
