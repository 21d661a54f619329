"""Process groups: named sets of ranks that collectives and messages run on.

A scenario declares groups by name; each name stands for a family of
disjoint groups (the ranks of one ``Comm.Split`` colour each), so that
``group: tp`` in a rank's program means "the tensor-parallel group this rank
belongs to", as ``mpu.get_tensor_model_parallel_group()`` does in
Megatron-LM.  In a file::

    groups:
      layout: {tp: 4, pp: 2}         # tp, pp, dp and ep from a parallel layout
      pairs: {blocks: 2}             # consecutive blocks of 2: [0,1], [2,3], ...
      evens: {stride: 2}             # same rank mod 2: [0,2,4,...], [1,3,5,...]
      leaders: [0, 4, 8, 12]         # one explicit group
      halves: [[0, 1, 2, 3], [4, 5, 6, 7]]

Inside a group, ranks are numbered by their position in it (the list's
order), and a collective's ``root`` and a message's ``peer`` are such group
ranks, as in MPI.  The empty name ``""`` is the world: every rank, in rank
order.  A rank may belong to no group of a name; it then must not use it.

The layout assigns every rank coordinates (tp, dp, pp) with the first name of
``order`` innermost: with the default ``tp-dp-pp`` (Megatron-LM's order) a
tensor-parallel group is ``tp`` consecutive ranks, so it sits inside one
server of a hierarchical topology whose servers hold a multiple of ``tp``
ranks.  Expert-parallel groups (``ep``) are consecutive runs of ``ep`` ranks of
each data-parallel group, as Megatron-LM carves them out of data parallelism;
``ep`` must divide ``dp``.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations
from typing import Any, Mapping

from topologies.text import MAX_INT, short, short_list, short_names

WORLD = ""
LAYOUT_KEY = "layout"
LAYOUT_DIMS = ("tp", "dp", "pp")
LAYOUT_NAMES = ("tp", "pp", "dp", "ep")
DEFAULT_ORDER = "tp-dp-pp"
_ORDERS = tuple("-".join(p) for p in permutations(LAYOUT_DIMS))

Members = tuple[int, ...]


def _positive(value, where: str) -> int:
    number = int(value) if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_INT else value
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= MAX_INT:
        raise ValueError(f"{where} must be an integer >= 1, got {short(value)}")
    return number


@dataclass(frozen=True)
class Layout:
    """A parallel layout: ``tp * pp * dp`` ranks, ``ep`` dividing ``dp``.

    ``dp`` 0 means "the rest": ``nranks // (tp * pp)``, resolved by ``resolve``.
    """

    tp: int = 1
    pp: int = 1
    dp: int = 0
    ep: int = 1
    order: str = DEFAULT_ORDER

    @classmethod
    def from_dict(cls, data, where: str = f"groups.{LAYOUT_KEY}") -> "Layout":
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected a mapping like {{tp: 4, pp: 2}}, got {short(data)}")
        unknown = sorted(set(data) - {"tp", "pp", "dp", "ep", "order"}, key=str)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {short_names(unknown)}; allowed: tp, pp, dp, ep, order")
        values: dict[str, Any] = {k: _positive(data[k], f"{where}.{k}") for k in ("tp", "pp", "dp", "ep") if k in data}
        if "order" in data:
            order = data["order"]
            if order not in _ORDERS:
                raise ValueError(f"{where}.order: expected one of {', '.join(_ORDERS)} (innermost first), "
                                 f"got {short(order)}")
            values["order"] = order
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tp": self.tp, "pp": self.pp, "dp": self.dp}
        if self.ep != 1:
            out["ep"] = self.ep
        if self.order != DEFAULT_ORDER:
            out["order"] = self.order
        return out

    def resolve(self, nranks: int, where: str = f"groups.{LAYOUT_KEY}") -> "Layout":
        """This layout with ``dp`` worked out for ``nranks``; ValueError if it does not fit."""
        model = self.tp * self.pp
        dp = self.dp or (nranks // model if nranks % model == 0 else 0)
        if model * dp != nranks or dp == 0:
            have = f"tp {self.tp} x pp {self.pp}" + (f" x dp {self.dp}" if self.dp else "")
            raise ValueError(f"{where}: {have} does not divide into the topology's {nranks} ranks"
                             if not self.dp else f"{where}: {have} = {model * self.dp} ranks, but the topology has "
                             f"{nranks}")
        if dp % self.ep:
            raise ValueError(f"{where}: ep {self.ep} must divide dp {dp}")
        return Layout(self.tp, self.pp, dp, self.ep, self.order)

    def coordinates(self, rank: int) -> dict[str, int]:
        """``{tp, dp, pp, ep}`` of ``rank`` (a resolved layout); ep is the position in its EP group."""
        coords = {}
        rest = rank
        for dim in self.order.split("-"):
            size = getattr(self, dim)
            rest, coords[dim] = divmod(rest, size)
        coords["ep"] = coords["dp"] % self.ep
        return coords

    def rank_of(self, coords: Mapping[str, int]) -> int:
        rank, scale = 0, 1
        for dim in self.order.split("-"):
            rank += coords[dim] * scale
            scale *= getattr(self, dim)
        return rank

    def groups(self) -> dict[str, tuple[Members, ...]]:
        """The groups of a resolved layout: ``tp``, ``pp``, ``dp`` and ``ep``."""
        n = self.tp * self.pp * self.dp
        out: dict[str, tuple[Members, ...]] = {}
        for dim in LAYOUT_DIMS:
            seen: dict[tuple, list[int]] = {}
            for rank in range(n):
                coords = self.coordinates(rank)
                key = tuple(coords[d] for d in LAYOUT_DIMS if d != dim)
                seen.setdefault(key, []).append(rank)
            # Every rank varies along `dim` in rank order, so position in the
            # list is the coordinate along `dim`.
            out[dim] = tuple(tuple(members) for members in seen.values())
        out["ep"] = tuple(dp_group[i: i + self.ep] for dp_group in out["dp"]
                          for i in range(0, len(dp_group), self.ep))
        return {name: out[name] for name in LAYOUT_NAMES}


class ProcessGroups:
    """The scenario's named groups over ``nranks`` ranks, validated.

    ``members(name, rank)`` is the group of that name ``rank`` belongs to
    (None if it belongs to none); ``index(name, rank)`` its position there.
    The world (``""``) is always defined.
    """

    __slots__ = ("nranks", "spec", "layout", "_groups", "_of", "_names")

    def __init__(self, nranks: int, groups: Mapping[str, tuple[Members, ...]] | None = None, *,
                 spec: Mapping[str, Any] | None = None, layout: Layout | None = None):
        self.nranks = nranks
        self.spec = dict(spec or {})
        self.layout = layout
        self._groups: dict[str, tuple[Members, ...]] = {WORLD: (tuple(range(nranks)),)}
        # name -> rank -> (group index, position); world ranks need no table.
        self._of: dict[str, dict[int, tuple[int, int]]] = {}
        for name, family in (groups or {}).items():
            self._add(name, family)
        self._names = tuple(self._groups)

    def _add(self, name: str, family: tuple[Members, ...]) -> None:
        where = f"groups.{name}"
        if not isinstance(name, str) or not name or name == LAYOUT_KEY:
            raise ValueError(f"groups: {short(name)} cannot name a group")
        if name in self._groups:
            raise ValueError(f"{where}: defined twice (the layout defines {', '.join(LAYOUT_NAMES)})")
        of: dict[int, tuple[int, int]] = {}
        for g, members in enumerate(family):
            if not members:
                raise ValueError(f"{where}: group {g} is empty")
            for i, rank in enumerate(members):
                if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < self.nranks:
                    raise ValueError(f"{where}: rank {short(rank)} is not a rank of the topology "
                                     f"(it has {self.nranks}: 0..{self.nranks - 1})")
                if rank in of:
                    other = of[rank][0]
                    where_else = "twice in one group" if other == g else f"in groups {other} and {g}"
                    raise ValueError(f"{where}: rank {rank} is {where_else}; a rank belongs to at most one "
                                     "group of a name")
                of[rank] = (g, i)
        self._groups[name] = tuple(tuple(m) for m in family)
        self._of[name] = of

    # -- lookups -----------------------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        """Every name, the world (``""``) first, then in declaration order."""
        return self._names

    def family(self, name: str) -> tuple[Members, ...]:
        self.check_name(name)
        return self._groups[name]

    def check_name(self, name: str, where: str = "") -> None:
        if name not in self._groups:
            known = ", ".join(n for n in self._names if n) or "none are declared"
            raise ValueError(f"{where}{': ' if where else ''}unknown group {short(name)}; groups: {known}")

    def members(self, name: str, rank: int) -> Members | None:
        if name == WORLD:
            return self._groups[WORLD][0]
        hit = self._of[name].get(rank)
        return None if hit is None else self._groups[name][hit[0]]

    def index(self, name: str, rank: int) -> int:
        """``rank``'s position in its group of ``name`` (its group rank)."""
        return rank if name == WORLD else self._of[name][rank][1]

    def group_id(self, name: str, rank: int) -> int:
        """Which group of ``name`` ``rank`` is in (0 for the world)."""
        return 0 if name == WORLD else self._of[name][rank][0]

    def world_rank(self, name: str, rank: int, group_rank: int) -> int:
        """The world rank of ``group_rank`` in ``rank``'s group of ``name``."""
        return group_rank if name == WORLD else self._groups[name][self._of[name][rank][0]][group_rank]

    def __eq__(self, other):
        return isinstance(other, ProcessGroups) and self.nranks == other.nranks and self._groups == other._groups

    def __hash__(self):
        return hash((self.nranks, tuple(self._groups.items())))

    def __repr__(self):
        return f"ProcessGroups({self.nranks} ranks: {', '.join(n for n in self._names if n) or 'world only'})"

    def to_dict(self) -> dict[str, Any]:
        """The declaration as given (a layout stays a layout); ``groups_from_dict`` reads it back."""
        return dict(self.spec)

    def explicit(self) -> dict[str, list[list[int]]]:
        """Every declared group as lists of ranks (what a reader of a result wants to see)."""
        return {name: [list(m) for m in family] for name, family in self._groups.items() if name}


def world_groups(nranks: int) -> ProcessGroups:
    return ProcessGroups(nranks)


def groups_from_dict(data, nranks: int, where: str = "groups") -> ProcessGroups:
    """Build and validate the ``groups:`` section of a scenario for ``nranks`` ranks."""
    if data is None:
        return ProcessGroups(nranks)
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a mapping of group names to ranks, got {short(data)}")
    families: dict[str, tuple[Members, ...]] = {}
    layout = None
    for name, spec in data.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: group names must be non-empty text, got {short(name)}")
        if name == LAYOUT_KEY:
            layout = Layout.from_dict(spec, f"{where}.{LAYOUT_KEY}").resolve(nranks, f"{where}.{LAYOUT_KEY}")
            for gname, family in layout.groups().items():
                if gname in data:
                    raise ValueError(f"{where}.{gname}: defined twice (the layout defines {', '.join(LAYOUT_NAMES)})")
                families[gname] = family
            continue
        families[name] = _family(spec, nranks, f"{where}.{name}")
    try:
        return ProcessGroups(nranks, families, spec=data, layout=layout)
    except ValueError as exc:
        raise ValueError(str(exc).replace("groups.", f"{where}.", 1) if where != "groups" else str(exc)) from None


def _family(spec, nranks: int, where: str) -> tuple[Members, ...]:
    if isinstance(spec, Mapping):
        if len(spec) != 1 or next(iter(spec)) not in ("blocks", "stride"):
            raise ValueError(f"{where}: expected {{blocks: k}}, {{stride: k}}, a list of ranks or a list of lists, "
                             f"got {short(spec)}")
        (how, k), = spec.items()
        k = _positive(k, f"{where}.{how}")
        if nranks % k:
            raise ValueError(f"{where}.{how}: {k} does not divide the topology's {nranks} ranks")
        if how == "blocks":
            return tuple(tuple(range(i, i + k)) for i in range(0, nranks, k))
        return tuple(tuple(range(i, nranks, k)) for i in range(k))
    if isinstance(spec, (list, tuple)) and spec:
        if all(isinstance(x, (list, tuple)) for x in spec):
            return tuple(_ranks(g, nranks, f"{where}[{i}]") for i, g in enumerate(spec))
        return (_ranks(spec, nranks, where),)
    raise ValueError(f"{where}: expected {{blocks: k}}, {{stride: k}}, a list of ranks or a list of lists, "
                     f"got {short(spec)}")


def _ranks(values, nranks: int, where: str) -> Members:
    if not values:
        raise ValueError(f"{where}: a group needs at least one rank")
    out = []
    for value in values:
        rank = int(value) if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_INT else value
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < nranks:
            raise ValueError(f"{where}: rank {short(value)} is not a rank of the topology "
                             f"(it has {nranks}: 0..{nranks - 1})")
        out.append(rank)
    twice = next((r for i, r in enumerate(out) if r in out[:i]), None)
    if twice is not None:
        raise ValueError(f"{where}: names rank {twice} twice ({short_list(out)}); a rank belongs to at most one "
                         "group of a name")
    return tuple(out)
