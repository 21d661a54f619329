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

from topologies.text import MAX_INT, format_count, is_finite_number, short, short_names
from workloads.collectives import lowered_size
from workloads.ops import COLLECTIVES, DEFAULT_ALGORITHM, Collective, Compute, Operation, op_from_dict, op_to_dict

WORKLOADS: dict[str, type] = {}

# Measured peak memory of a simulation (CPython 3.11, simcore.engine; benchmarks/memory_estimate.py prints
# estimate and peak side by side): what any run loads (the compiled flow solver, numpy's fast paths) ~60-80 MiB;
# per rank its SimPy process, random stream and table rows (~3 kB); per operation a simulated rank runs, its
# place in the program, its record as the engine logs it and its row of the records table (~260 B, ~450 B
# with a straggler model drawing for it: 330 B is within 1.5x of both); per
# operation of a rank that is a representative's image (symmetric classes, simcore.symmetry) its place in the
# program and its row of the records given to it (~150 B; ~16 B where the run keeps the representatives'
# records only); per lowered collective step what the fast paths keep of it (~2.5 B: a large ring's schedule);
# per distinct (rank, peer) pair its message queues and cached route (~2.5 kB, on an all-to-all).
# Point-to-point messages fall under their operations.
BASE_BYTES = 80 * 2**20
RANK_BYTES = 4096
OPERATION_BYTES = 330
IMAGE_OPERATION_BYTES = 150
IMAGE_OPERATION_BYTES_UNRECORDED = 16
STEP_BYTES = 3
PEER_BYTES = 2600


@dataclass(frozen=True)
class ProgramSize:
    """What a workload's programs hold, counted from closed forms before they are built.

    ``operations`` over all ranks; ``steps``: the point-to-point steps its
    collectives lower to; ``peers``: the distinct (rank, peer) pairs they
    use (upper bounds, see ``workloads.collectives.lowered_size``): a
    collective repeated (``repeated``) uses the same pairs again.
    """

    operations: int = 0
    steps: int = 0
    peers: int = 0
    # The share of ranks the engine simulates where symmetric classes hold (simcore.symmetry), as the
    # workload's layout predicts them; the others are their representatives' images.
    simulated_share: float = 1.0

    def __add__(self, other: "ProgramSize") -> "ProgramSize":
        return ProgramSize(self.operations + other.operations, self.steps + other.steps, self.peers + other.peers,
                           max(self.simulated_share, other.simulated_share))

    def times(self, n: int) -> "ProgramSize":
        """``n`` times as many ranks, each doing this."""
        return ProgramSize(self.operations * n, self.steps * n, self.peers * n, self.simulated_share)

    def repeated(self, n: int) -> "ProgramSize":
        """This done ``n`` times over by the same ranks: the same pairs."""
        return ProgramSize(self.operations * n, self.steps * n, self.peers, self.simulated_share)

    def memory_bytes(self, nranks: int, *, folded: bool = True, records: bool = True) -> int:
        """Estimated peak memory of simulating these programs on ``nranks`` ranks; ``folded``: with the
        predicted symmetric classes (else every rank simulated); ``records``: every rank's records kept."""
        share = self.simulated_share if folded else 1.0
        pairs = min(self.peers, nranks * max(nranks - 1, 0))
        simulated = self.operations * share
        images = self.operations - simulated
        image_bytes = IMAGE_OPERATION_BYTES if records else IMAGE_OPERATION_BYTES_UNRECORDED
        return int(BASE_BYTES + nranks * RANK_BYTES + simulated * OPERATION_BYTES + images * image_bytes
                   + share * (self.steps * STEP_BYTES + pairs * PEER_BYTES))

    def describe(self, nranks: int) -> str:
        return (f"{format_count(self.operations)} operations and {format_count(self.steps)} collective steps "
                f"over {format_count(nranks)} ranks")


def collective_size(op: str, algorithm: str, nranks: int, groups=None, inter_algorithm: str = "ring") -> ProgramSize:
    """One collective on every rank: one operation per rank and the steps it lowers to."""
    steps, peers = lowered_size(op, algorithm or DEFAULT_ALGORITHM.get(op, ""), nranks, groups, inter_algorithm)
    return ProgramSize(nranks, steps, peers)


def register(cls):
    WORKLOADS[cls.kind] = cls
    return cls


def _as_int(value, where: str) -> int:
    # YAML writes 1e6 as a float; an integral float is that integer, up to
    # int64 (1e308 is integral too, and no count or size).
    number = int(value) if isinstance(value, float) and value.is_integer() else value
    if isinstance(number, bool) or not isinstance(number, int):
        raise ValueError(f"{where}: expected an integer, got {short(value)}")
    if abs(number) > MAX_INT:
        raise ValueError(f"{where}: expected an integer of at most 2^63-1 in size, got {short(value)}")
    return number


def check_int(obj, names, minimum: int | None) -> None:
    """ValueError naming ``workload.<name>`` unless each field is an int (>= minimum, if given; at most 2^63-1)."""
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"workload.{name} must be an integer, got {short(value)}")
        if minimum is not None and value < minimum:
            raise ValueError(f"workload.{name} must be >= {minimum}, got {short(value)}")
        if abs(value) > MAX_INT:
            raise ValueError(f"workload.{name} must be at most 2^63-1, got {short(value)}")


def check_nonnegative(obj, names) -> None:
    """ValueError naming ``workload.<name>`` unless each field is a finite number >= 0."""
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, (int, float)) or not is_finite_number(value) or value < 0:
            raise ValueError(f"workload.{name} must be a finite number >= 0, got {short(value)}")


def split_bytes(total: int, parts: int) -> list[int]:
    """``total`` bytes in ``parts`` near-equal shards, the first ``total % parts`` one byte larger."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def rank_tuple(value, name: str) -> tuple[int, ...]:
    """A field holding ranks, as a tuple of ints (YAML gives a list; 3.0 is accepted as 3)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"workload.{name} must be a list of ranks, got {short(value)}")
    ranks = tuple(_as_int(r, f"workload.{name}") for r in value)
    if len(set(ranks)) != len(ranks):
        raise ValueError(f"workload.{name} lists a rank twice: {short(list(ranks))}")
    return ranks


def resolve_rank(rank: int, nranks: int, name: str) -> int:
    """``rank`` in 0..nranks-1; negative counts from the end (-1 is the last rank)."""
    resolved = rank + nranks if rank < 0 else rank
    if not 0 <= resolved < nranks:
        raise ValueError(f"workload.{name}: rank {short(rank)} is out of range for {nranks} ranks")
    return resolved


def resolve_ranks(ranks, nranks: int, name: str) -> tuple[int, ...]:
    resolved = tuple(resolve_rank(r, nranks, name) for r in ranks)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"workload.{name} names a rank twice: {short(list(ranks))} with {nranks} ranks")
    return resolved


def round_half_up(x: float) -> int:
    return int(x + 0.5)


def _check_like_default(name: str, value, default) -> None:
    """A file's value must have its field's kind: true/false, text, or a finite number."""
    where = f"workload.{name}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {short(value)}")
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise ValueError(f"{where} must be text, got {short(value)}")
    elif isinstance(default, (int, float)):
        if not isinstance(value, (int, float)) or not is_finite_number(value):
            raise ValueError(f"{where} must be a finite number, got {short(value)}")


class WorkloadBase:
    kind: ClassVar[str] = ""
    _int_fields: ClassVar[tuple[str, ...]] = ()

    def programs(self, nranks: int, groups=None) -> list[list[Operation]]:
        raise NotImplementedError

    def process_groups(self, nranks: int) -> dict[str, tuple[tuple[int, ...], ...]] | None:
        """Groups the workload makes itself (name -> family of rank tuples), or None.

        A workload with a parallel layout of its own (``transformer``) returns
        its groups here; the scenario adds them to the ones it declares
        (``workloads.scenario``), so a user never writes them out.
        """
        return None

    def check_fits(self, topology) -> None:
        """Raise ValueError if the workload's own state cannot fit in the
        topology's nodes' memory (``transformer``: weights, gradients,
        optimizer state and activations per GPU); nothing to check by default."""
        return None

    def size(self, nranks: int, groups=None) -> ProgramSize:
        """What ``programs(nranks, groups)`` would hold, for the memory estimate.

        This fallback builds the programs and counts them; a workload whose
        programs can be large overrides it with closed forms, so that a
        scenario too large for memory is refused before anything is built.
        """
        return programs_size(self.programs(nranks, groups), nranks, groups)

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
        unknown = sorted(set(data) - fields, key=str)
        if unknown:
            raise ValueError(
                f"workload ({cls.kind}): unknown field(s) {short_names(unknown)}; allowed: {', '.join(sorted(fields))}"
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
    # Every rank runs it on its own group of this name (the world by default).
    group: str = ""

    def __post_init__(self):
        if self.op == "alltoallv":
            raise ValueError("workload.op: alltoallv takes per-rank counts; write it in a 'programs' workload")
        if self.op not in COLLECTIVES:
            raise ValueError(f"workload.op: unknown collective {short(self.op)}; expected one of {', '.join(COLLECTIVES)}")
        if self.iterations < 1:
            raise ValueError(f"workload.iterations must be >= 1, got {self.iterations}")
        if self.nbytes < 0:
            raise ValueError(f"workload.nbytes must be >= 0, got {self.nbytes}")
        if self.compute_flops < 0:
            raise ValueError(f"workload.compute_flops must be >= 0, got {self.compute_flops}")

    def size(self, nranks: int, groups=None) -> ProgramSize:
        per_iteration = collective_size(self.op, self.algorithm, nranks, groups, self.inter_algorithm)
        if self.compute_flops:
            per_iteration += ProgramSize(operations=nranks)
        return per_iteration.repeated(self.iterations)

    def programs(self, nranks: int, groups=None) -> list[list[Operation]]:
        coll = Collective(
            self.op, self.nbytes, algorithm=self.algorithm, root=self.root, inter_algorithm=self.inter_algorithm,
            group=self.group,
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

    def size(self, nranks: int, groups=None) -> ProgramSize:
        return programs_size(self.programs_, nranks, groups)

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
                raise ValueError(f"workload.ranks: keys must be ranks (integers), got {short(list(ranks))}") from None
            keys = sorted(ranks)
            if keys != list(range(len(keys))):
                raise ValueError(f"workload.ranks: keys must be the ranks 0..{len(keys) - 1}, got {short(keys)}")
            ranks = [ranks[k] for k in keys]
        if not isinstance(ranks, list):
            raise ValueError("workload (programs): 'ranks' must be a list (or mapping rank -> list) of operations")
        programs = []
        for r, ops in enumerate(ranks):
            if ops is not None and not isinstance(ops, list):
                raise ValueError(f"workload.ranks[{r}]: expected a list of operations, got {short(ops)}")
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
    if isinstance(key, str) and key.isdigit() and len(key) <= 19:
        return int(key)
    raise ValueError(key)


def programs_size(programs, nranks: int, groups=None) -> ProgramSize:
    """The size of built (or given) programs: their operations, and what their collectives lower to."""
    size = ProgramSize()
    for program in programs:
        lowered: dict[tuple, tuple[int, int]] = {}
        size += ProgramSize(operations=len(program))
        for op in program:
            if isinstance(op, Collective):
                key = (op.op, op.algorithm, op.inter_algorithm)
                new = key not in lowered
                if new:
                    steps, peers = lowered_size(op.op, op.algorithm, nranks, groups, op.inter_algorithm)
                    # Per rank: the bounds are over all ranks, this op runs on one.
                    lowered[key] = (-(-steps // max(nranks, 1)), -(-peers // max(nranks, 1)))
                steps, peers = lowered[key]
                # A collective repeated uses its pairs again: counted the first time only (per program).
                size += ProgramSize(steps=steps, peers=peers if new else 0)
    return size


def workload_from_dict(data: dict[str, Any]):
    if not isinstance(data, dict):
        raise ValueError(f"workload: expected a mapping, got {short(data)}")
    data = dict(data)
    kind = data.pop("kind", None)
    if not isinstance(kind, str) or kind not in WORKLOADS:
        raise ValueError(f"workload.kind: unknown {short(kind)}; expected one of {', '.join(WORKLOADS)}")
    return WORKLOADS[kind].from_dict(data)
