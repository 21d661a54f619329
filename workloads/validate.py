"""Checks per-rank programs before any backend runs them."""
from __future__ import annotations

from typing import Sequence

from topologies.text import short, short_names
from workloads.collectives import check as check_collective
from workloads.collectives import SEMANTICS, group_server_groups
from workloads.groups import WORLD, ProcessGroups
from workloads.ops import P2P, Collective, Compute, Operation, Wait, is_nonblocking


class Programs(list):
    """Per-rank programs that passed ``validate_programs`` for the ranks, servers and process groups
    they were checked for: the engine and the executors take them without checking again.  A
    scenario lowers its workload once and hands every caller this same object: read it, do not
    change it (a changed program would not be checked again)."""

    def __init__(self, programs, checked_for: tuple):
        super().__init__(programs)
        self.checked_for = checked_for


def validated(programs: Sequence[Sequence[Operation]], nranks: int, groups=None,
              process_groups: ProcessGroups | None = None) -> Programs:
    """``programs`` checked (``validate_programs``) once: programs already checked for the same
    ranks, servers and groups are returned as they are."""
    pg = process_groups if process_groups is not None else ProcessGroups(nranks)
    key = (nranks, None if groups is None else tuple(tuple(g) for g in groups), pg)
    if isinstance(programs, Programs) and programs.checked_for == key:
        return programs
    validate_programs(programs, nranks, groups, pg)
    return Programs(programs, key)


def validate_programs(programs: Sequence[Sequence[Operation]], nranks: int, groups=None,
                      process_groups: ProcessGroups | None = None) -> None:
    """Raise ValueError naming the rank, the op index (or the group) and what is wrong.

    ``groups`` are the topology's servers (for the hierarchical all-reduce);
    ``process_groups`` the scenario's named groups (the world only if None).
    Besides each operation on its own, the members of every group must issue
    the same collectives on it, in the same order, with matching sizes: a
    mismatch would deadlock or corrupt a real run.
    """
    if len(programs) != nranks:
        raise ValueError(f"workload has {len(programs)} rank programs but the topology has {nranks} ranks")
    pg = process_groups if process_groups is not None else ProcessGroups(nranks)
    if pg.nranks != nranks:
        raise ValueError(f"the groups are declared over {pg.nranks} ranks but the topology has {nranks}")
    server_groups = None if groups is None else tuple(tuple(g) for g in groups)
    # Programs repeat a few operation objects many times (a training step's
    # collectives per micro-batch): each object is checked once per group size.
    checked: set = set()
    checked_ids: set = set()
    # Ranks often run equal programs (a pipeline stage's, on every tp and dp rank): a program is checked
    # once per context its checks depend on (its groups' sizes, the rank's index in each, the members where
    # a hierarchical collective needs them), in rank order, so the first rank that fails is the one named.
    distinct, program_of = distinct_programs(programs)
    uses = [_group_uses(program) for program in distinct]
    contexts: set = set()
    known = set(pg.names)

    def place(name: str, rank: int, messages: set, hierarchical: set) -> tuple:
        if name not in known:
            return ("unknown",)  # the program's check names it
        members = pg.members(name, rank)
        if members is None:
            return (None,)
        # A message's peer is checked against the rank's own place; a collective against the group's size.
        return (pg.index(name, rank) if name in messages else None, len(members),
                members if name in hierarchical else None)

    for rank, program in enumerate(programs):
        names, messages, hierarchical = uses[program_of[rank]]
        context = (program_of[rank],) + tuple(place(name, rank, messages, hierarchical) for name in names)
        if context in contexts:
            continue
        contexts.add(context)
        _check_program(rank, program, pg, server_groups, checked, checked_ids)
    # The members of a group whose programs are equal issue the same collectives on it (alltoallv's counts
    # are compared pair by pair all the same); the others are compared collective by collective.
    issued_of: dict[tuple[int, str], list] = {}

    def issued(rank: int, name: str) -> list:
        key = (program_of[rank], name)
        found = issued_of.get(key)
        if found is None:
            found = issued_of[key] = [(i, op) for i, op in enumerate(programs[rank])
                                      if type(op) is Collective and op.group == name]
        return found

    seen_groups: set = set()
    for rank in range(nranks):
        names, _, _ = uses[program_of[rank]]
        for name in names:
            members = pg.members(name, rank) if name in known else None
            if members is None:
                continue
            gid = pg.group_id(name, rank)
            if (name, gid) in seen_groups:
                continue
            seen_groups.add((name, gid))
            first = program_of[members[0]]
            if all(program_of[m] == first for m in members) and not any(
                    op.op == "alltoallv" for _, op in issued(members[0], name)):
                continue
            by_rank = {m: issued(m, name) for m in members if issued(m, name)}
            if by_rank:
                _check_matching(pg, name, gid, by_rank)


def distinct_programs(programs) -> tuple[list, list[int]]:
    """(the distinct programs, each once; per rank, its program's place among them): ranks often run
    equal programs (a pipeline stage's), compared as lists of the same operation objects."""
    distinct: list = []
    program_of: list[int] = []
    by_head: dict[tuple, list[int]] = {}
    for program in programs:
        head = (len(program), id(program[0]) if len(program) else None)
        for i in by_head.get(head, ()):
            if distinct[i] is program or distinct[i] == program:
                program_of.append(i)
                break
        else:
            by_head.setdefault(head, []).append(len(distinct))
            program_of.append(len(distinct))
            distinct.append(program)
    return distinct, program_of


def _group_uses(program) -> tuple[tuple[str, ...], set, set]:
    """(the group names a program's collectives and messages use, in order; those its messages use; those
    a hierarchical collective uses)."""
    names: dict[str, None] = {}
    messages: set = set()
    hierarchical: set = set()
    for op in {id(op): op for op in program}.values():
        kind = type(op)
        if kind is Collective or kind in P2P:
            names[op.group] = None
            if kind in P2P:
                messages.add(op.group)
            elif op.algorithm == "hierarchical":
                hierarchical.add(op.group)
    return tuple(names), messages, hierarchical


def _check_program(rank: int, program, pg: ProcessGroups, server_groups, checked: set, checked_ids: set) -> None:
    """Each operation of ``rank``'s program on its own: ValueError naming the rank and the op index."""
    handles: set[str] = set()
    members_of: dict[str, tuple] = {}  # this rank's group of each name

    def where(index, op):
        return f"rank {rank} op {index} ({getattr(op, 'kind', type(op).__name__)})"

    for index, op in enumerate(program):
        kind = type(op)
        if kind is Compute:
            continue  # checked when it was made; most of a training step's operations
        if kind is Collective or kind in P2P:
            members = members_of.get(op.group)
            if members is None:
                members = members_of[op.group] = _members(pg, op.group, rank, where(index, op))
            size = len(members)
        if kind in P2P:
            if op.peer >= size or op.peer == pg.index(op.group, rank):
                on = f" of group {op.group}" if op.group else ""
                if op.peer >= size:
                    raise ValueError(f"{where(index, op)}: peer {op.peer} is not a rank{on} (there are {size})")
                raise ValueError(f"{where(index, op)}: a rank cannot {op.kind} to itself")
        elif kind is Collective:
            hierarchical = op.algorithm == "hierarchical"
            seen = (id(op), members if hierarchical else size)
            if seen not in checked_ids:
                key = (op, members if hierarchical else size)
                if key not in checked:
                    try:
                        check_collective(op, size, group_server_groups(members, server_groups)
                                         if hierarchical else None)
                    except ValueError as exc:
                        raise ValueError(f"{where(index, op)}: {exc}"
                                         + (f" (on group {op.group})" if op.group else "")) from None
                    checked.add(key)
                checked_ids.add(seen)
        elif kind is Wait:
            missing = [h for h in op.handles if h not in handles]
            if missing:
                raise ValueError(f"{where(index, op)}: waits for unknown handle(s) {short_names(missing)}")
        else:
            raise ValueError(f"{where(index, op)}: not an operation: {short(op)}")
        if is_nonblocking(op):
            if op.handle in handles:
                raise ValueError(f"{where(index, op)}: handle {short(op.handle)} is already in use")
            handles.add(op.handle)


def _members(pg: ProcessGroups, name: str, rank: int, where: str) -> tuple[int, ...]:
    pg.check_name(name, where)
    members = pg.members(name, rank)
    if members is None:
        raise ValueError(f"{where}: rank {rank} is in no group {name}")
    return members


def _check_matching(pg: ProcessGroups, name: str, gid: int, by_rank: dict[int, list]) -> None:
    members = pg.family(name)[gid]
    label = f"group {name} {_ranks(members)}" if name != WORLD else "the world"
    counts = {r: len(by_rank.get(r, ())) for r in members}
    first = members[0]
    for r in members:
        if counts[r] != counts[first]:
            raise ValueError(
                f"{label}: rank {r} issues {counts[r]} collective(s) on it but rank {first} issues "
                f"{counts[first]}; every member must issue the same collectives (this would deadlock)")
    ops = [by_rank.get(r, []) for r in members]
    keys: dict[int, tuple] = {}  # id of an op -> what members must agree on

    def key_of(op):
        key = keys.get(id(op))
        if key is None:
            key = keys[id(op)] = _matching_key(op)
        return key

    for k in range(counts[first]):
        ref_index, ref = ops[0][k]
        ref_key = key_of(ref)
        for i, r in enumerate(members):
            index, op = ops[i][k]
            if op is not ref and key_of(op) != ref_key:
                raise ValueError(
                    f"{label}: collective #{k + 1} on it is {_describe(ref)} at rank {first} op {ref_index} but "
                    f"{_describe(op)} at rank {r} op {index}; every member must issue the same collectives")
        if ref.op == "alltoallv":
            # Every member's k-th is an alltoallv now, so the counts can be compared.
            for i, r in enumerate(members):
                index, op = ops[i][k]
                for j, peer in enumerate(members):
                    sent = ops[j][k][1].send_nbytes[i]
                    if op.recv_nbytes[j] != sent:
                        raise ValueError(
                            f"{label}: alltoallv #{k + 1} on it: rank {r} op {index} expects "
                            f"{op.recv_nbytes[j]} B from rank {peer} but rank {peer} sends it {sent} B")


def _matching_key(op: Collective) -> tuple:
    # What members must agree on: a root only where the op has one, the
    # leaders' algorithm only for the hierarchical all-reduce (check() ignores
    # both elsewhere, and so does every executor), a size except for alltoallv
    # (whose counts are compared pairwise).
    return (op.op, op.algorithm, op.root if SEMANTICS[op.op].rooted else None,
            op.inter_algorithm if op.algorithm == "hierarchical" else None,
            None if op.op == "alltoallv" else op.nbytes)


def _describe(op: Collective) -> str:
    root = f" root {op.root}" if SEMANTICS[op.op].rooted else ""
    size = "" if op.op == "alltoallv" else f" of {op.nbytes} B"
    inter = f" inter {op.inter_algorithm}" if op.algorithm == "hierarchical" else ""
    return f"{op.op} ({op.algorithm}{inter}){root}{size}"


def _ranks(members: tuple[int, ...]) -> str:
    text = ", ".join(map(str, members[:8])) + (", ..." if len(members) > 8 else "")
    return f"[{text}]"
