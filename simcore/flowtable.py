"""The flow network's state as arrays (the compiled steps that change it are in simcore.maxmin).

Flows live in slots of a table (one row of floats and one of integers per
slot); each link keeps its flows in a doubly linked list through the table's
entries (entry ``slot * K + j`` is the slot's j-th link; ``K``, the longest
route seen, grows as routes come), so a flow joins or leaves its links in
O(route) and a link's flows are met in the order they joined, as the dicts of
the pure-Python network met them (so the sums of the solve round the same
way).  Pending last bytes are one heap of (time, sequence, slot, version):
an entry whose version is no longer the slot's was superseded and is
dropped when it surfaces.

Everything a solve, a flow's end or a rate change does runs compiled
(numba, ``cache=True``: compiled once per machine, then loaded); the SimPy
side (``simcore.network``) only moves messages and schedules one wake-up at
the heap's earliest time.  This module holds the arrays, grows them before
a compiled step could need more room, and offers from-scratch filling
(``rates``) for tests and for users who want max-min rates without a
simulation.
"""
from __future__ import annotations

import numpy as np

from simcore import maxmin
from simcore.maxmin import (ALONE, ARMED, CAP, CNT, FIXED, HEAD, HSIZE, IN, MARK, NAN, NC, NF, NI, NLF, NLI,
                            NE, NEXT, NLINKS, NSI, OWNER, PREV, RATE, SOLVE, SPARE, STACK, STAMP, TAIL, TEND,
                            VERSION, attach)


class FlowTable:
    """The arrays (see the module's docstring), grown in place by the Python side before a compiled step
    could need more room."""

    def __init__(self, capacities_bytes_per_s: list[float], slots: int = 64, width: int = 4):
        links = len(capacities_bytes_per_s)
        self.K = width
        self.F = np.zeros((slots, NF), order="F")
        self.I = np.zeros((slots, NI), np.int64, order="F")
        self.FL = np.full((slots, width), -1, np.int64)
        self.E = np.full((slots * width, NE), -1, np.int64, order="F")
        self.LI = np.zeros((links, NLI), np.int64, order="F")
        self.LI[:, HEAD] = -1
        self.LI[:, TAIL] = -1
        self.LF = np.zeros((links, NLF), order="F")
        self.LF[:, CAP] = capacities_bytes_per_s
        self.C = np.zeros(NC, np.int64)
        self.Hf = np.zeros(256)
        self.Hi = np.zeros((256, 3), np.int64)
        # Per-slot scratch of the compiled steps: lists of slots, and rates in the order fixed.
        self.SI = np.zeros((slots, NSI), np.int64, order="F")
        self.SF = np.zeros((slots, 1), order="F")
        self.F[:, TEND] = NAN
        self.F[:, ARMED] = NAN
        self.free: list[int] = list(range(slots - 1, -1, -1))

    def take_slot(self, links: tuple[int, ...]) -> int:
        """A free slot with ``links`` set (and room for them)."""
        if not self.free:
            self._grow_slots()
        if len(links) > self.K:
            self._widen(len(links))
        slot = self.free.pop()
        row = self.FL[slot]
        row[:len(links)] = links
        self.I[slot, NLINKS] = len(links)
        return slot

    def release(self, slot: int) -> None:
        """The slot's flow is gone: pending events that name it (by version) are dropped."""
        self.I[slot, VERSION] += 1
        self.I[slot, ALONE] = 0
        f = self.F[slot]
        f[RATE] = 0.0
        f[TEND] = NAN
        f[ARMED] = NAN
        self.free.append(slot)

    def heap_room(self, more: int) -> None:
        need = int(self.C[HSIZE]) + more
        if need > self.Hf.shape[0]:
            size = max(need, 2 * self.Hf.shape[0])
            self.Hf = np.concatenate([self.Hf, np.zeros(size - self.Hf.shape[0])])
            self.Hi = np.concatenate([self.Hi, np.zeros((size - self.Hi.shape[0], 3), np.int64)])

    def _grow_slots(self) -> None:
        old = self.F.shape[0]
        new = 2 * old
        F = np.zeros((new, NF), order="F")
        F[:, TEND] = NAN
        F[:, ARMED] = NAN
        F[:old] = self.F
        self.F = F
        self.I = np.asfortranarray(np.concatenate([self.I, np.zeros((old, NI), np.int64)]))
        self.FL = np.concatenate([self.FL, np.full((old, self.K), -1, np.int64)])
        self.E = np.asfortranarray(np.concatenate([self.E, np.full((old * self.K, NE), -1, np.int64)]))
        self.SI = np.zeros((new, NSI), np.int64, order="F")
        self.SF = np.zeros((new, 1), order="F")
        self.free.extend(range(new - 1, old - 1, -1))

    def _widen(self, width: int) -> None:
        """Room for routes of ``width`` links: entry numbers move from slot * K + j to slot * width + j."""
        K = self.K
        slots = self.F.shape[0]
        FL = np.full((slots, width), -1, np.int64)
        FL[:, :K] = self.FL
        self.FL = FL

        def moved(e):
            return np.where(e >= 0, (e // K) * width + e % K, -1)

        E = np.full((slots * width, NE), -1, np.int64, order="F")
        index = moved(np.arange(slots * K))
        E[index, NEXT] = moved(self.E[:, NEXT])
        E[index, PREV] = moved(self.E[:, PREV])
        E[index, OWNER] = self.E[:, OWNER]
        self.E = E
        self.LI[:, HEAD] = moved(self.LI[:, HEAD])
        self.LI[:, TAIL] = moved(self.LI[:, TAIL])
        self.K = width

    def fill_from_scratch(self, slots: list[int]) -> list[float]:
        """Progressive filling of the flows in ``slots`` (on their links) alone: their rates, in that order."""
        mark = self._stamp()
        links: dict[int, None] = {}
        for slot in slots:
            self.I[slot, MARK] = mark
            for link in self.FL[slot, :self.I[slot, NLINKS]].tolist():
                links[link] = None
        for i, link in enumerate(links):
            self.LI[i, STACK] = link
            self.LF[link, SPARE] = self.LF[link, CAP]
            self.LI[link, CNT] = sum(1 for s in self.slots_on(link) if self.I[s, MARK] == mark)
        fixed = maxmin.fill(STACK, len(links), MARK, mark, len(slots), self.I, self.FL, self.E, self.LI,
                            self.LF, self.K, self.C, self.SI, self.SF)
        rate = dict(zip(self.SI[:fixed, FIXED].tolist(), self.SF[:fixed, 0].tolist()))
        return [rate[slot] for slot in slots]

    def resolve_from(self, seed: list[int], now: float, limit: int) -> list[tuple[int, float]] | None:
        """maxmin.resolve from the flows in ``seed`` (the others' RATE held): (slot, rate) in the order
        fixed, or None where it would reach past ``limit`` flows."""
        tag = self._stamp()
        for i, slot in enumerate(seed):
            self.I[slot, IN] = tag
            self.SI[i, SOLVE] = slot
        fixed = maxmin.resolve(len(seed), tag, now, limit, self.F, self.I, self.FL, self.E, self.LI, self.LF,
                               self.K, self.C, self.SI, self.SF)
        if fixed < 0:
            return None
        return list(zip(self.SI[:fixed, FIXED].tolist(), self.SF[:fixed, 0].tolist()))

    def _stamp(self) -> int:
        self.C[STAMP] += 1
        return int(self.C[STAMP])

    def slots_on(self, link: int) -> list[int]:
        """The slots of the flows on ``link``, in the order they joined it."""
        out = []
        e = int(self.LI[link, HEAD])
        E = self.E
        while e >= 0:
            out.append(int(E[e, OWNER]))
            e = int(E[e, NEXT])
        return out


def rates(paths, capacity_bytes_per_s) -> list[float]:
    """Max-min fair rates of flows on ``paths`` (each a sequence of link numbers, no link twice) over links
    of ``capacity_bytes_per_s``, filled from scratch."""
    capacity = [float(c) for c in capacity_bytes_per_s]
    for link, c in enumerate(capacity):
        if not 0.0 < c < float("inf"):
            raise ValueError(f"rates: link {link}'s capacity must be finite and > 0, got {c!r}")
    table = FlowTable(capacity)
    slots = []
    for i, path in enumerate(paths):
        links = tuple(int(link) for link in path)
        if not links or len(set(links)) != len(links) or not all(0 <= link < len(capacity) for link in links):
            raise ValueError(f"rates: path {i} must list distinct links of 0 to {len(capacity) - 1}, got {links}")
        slot = table.take_slot(links)
        attach(slot, table.I, table.FL, table.E, table.LI, table.K)
        slots.append(slot)
    return table.fill_from_scratch(slots)
