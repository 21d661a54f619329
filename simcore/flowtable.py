"""The flow network's state as arrays, and the compiled steps that change it.

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
the heap's earliest time.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from simcore import maxmin

from simcore.flowlayout import (ALONE, ARMED, ARMED_N, ATTACHED, CAP, CNT, COMP, COUNT, DUR, FIXED, HEAD, HSEQ,
                                HSIZE, IDLE, IN, LONE, LSEEN, MARK, MINCAP, NC, NEAR_FAILED, NEAR_SOLVED, NF,
                                NI, NLF, NLI, NLINKS, NSI, OUT, RATE, RATES, REM, SEEN, SOLVE, SOLVES, SPARE,
                                STACK, STAMP, TAIL, TEND, TLAST, VERSION)

NAN = float("nan")


class FlowTable:
    """The arrays (see the module's docstring), grown in place by the Python side before a compiled step
    could need more room."""

    def __init__(self, capacities_bytes_per_s: list[float], slots: int = 64, width: int = 4):
        links = len(capacities_bytes_per_s)
        self.K = width
        self.F = np.zeros((slots, NF), order="F")
        self.I = np.zeros((slots, NI), np.int64, order="F")
        self.FL = np.full((slots, width), -1, np.int64)
        self.E = np.full((slots * width, 2), -1, np.int64, order="F")
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
        self.E = np.asfortranarray(np.concatenate([self.E, np.full((old * self.K, 2), -1, np.int64)]))
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

        E = np.full((slots * width, 2), -1, np.int64, order="F")
        index = moved(np.arange(slots * K))
        E[index] = moved(self.E)
        self.E = E
        self.LI[:, HEAD] = moved(self.LI[:, HEAD])
        self.LI[:, TAIL] = moved(self.LI[:, TAIL])
        self.K = width

    def fill_from_scratch(self, slots: list[int]) -> list[float]:
        """Progressive filling of the flows in ``slots`` (on their links) alone: their rates, in that order."""
        C_STAMP = self._stamp()
        links: dict[int, None] = {}
        for slot in slots:
            self.I[slot, MARK] = C_STAMP
            for link in self.FL[slot, :self.I[slot, NLINKS]].tolist():
                links[link] = None
        for i, link in enumerate(links):
            self.LI[i, STACK] = link
            self.LF[link, SPARE] = self.LF[link, CAP]
            self.LI[link, CNT] = sum(1 for s in self.slots_on(link) if self.I[s, MARK] == C_STAMP)
        fixed = maxmin.fill(STACK, len(links), MARK, C_STAMP, len(slots), self.I, self.FL, self.E, self.LI,
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
        E, K = self.E, self.K
        while e >= 0:
            out.append(e // K)
            e = int(E[e, 0])
        return out


def rates(paths, capacity_bytes_per_s) -> list[float]:
    """Max-min fair rates of flows on ``paths`` (each a sequence of link numbers, no link twice) over links
    of ``capacity_bytes_per_s``, filled from scratch."""
    table = FlowTable(list(capacity_bytes_per_s))
    slots = []
    for path in paths:
        slot = table.take_slot(tuple(int(link) for link in path))
        attach(slot, table.I, table.FL, table.E, table.LI, table.K)
        slots.append(slot)
    return table.fill_from_scratch(slots)


# -- compiled steps --------------------------------------------------------------


@njit(cache=True)
def attach(s, I, FL, E, LI, K):
    """The flow in slot ``s`` joins the tail of each of its links' lists."""
    for j in range(I[s, NLINKS]):
        link = FL[s, j]
        e = s * K + j
        tail = LI[link, TAIL]
        E[e, 0] = -1
        E[e, 1] = tail
        if tail >= 0:
            E[tail, 0] = e
        else:
            LI[link, HEAD] = e
        LI[link, TAIL] = e
        LI[link, COUNT] += 1
    I[s, ATTACHED] = 1


@njit(cache=True, inline="always")
def unlink(s, F, I, FL, E, LI, LF, K, note_idle):
    """The flow in slot ``s`` leaves its links (if still on them); with ``note_idle``, each link's bucket
    refills from when its last byte left, if later than the link's last."""
    if I[s, ATTACHED] == 0:
        return
    tend = F[s, TEND]
    for j in range(I[s, NLINKS]):
        link = FL[s, j]
        e = s * K + j
        nxt = E[e, 0]
        prv = E[e, 1]
        if prv >= 0:
            E[prv, 0] = nxt
        else:
            LI[link, HEAD] = nxt
        if nxt >= 0:
            E[nxt, 1] = prv
        else:
            LI[link, TAIL] = prv
        LI[link, COUNT] -= 1
        if note_idle and tend > LF[link, IDLE]:
            LF[link, IDLE] = tend
    I[s, ATTACHED] = 0


# The pending last bytes: a heap of (time, sequence) keys with (slot, version), sifted by moving a hole.
@njit(cache=True, inline="always")
def heap_push(Hf, Hi, C, when, s, version):
    i = C[HSIZE]
    C[HSIZE] = i + 1
    seq = C[HSEQ]
    C[HSEQ] += 1
    while i > 0:
        p = (i - 1) // 2
        if when < Hf[p] or (when == Hf[p] and seq < Hi[p, 0]):
            Hf[i] = Hf[p]
            Hi[i, 0] = Hi[p, 0]
            Hi[i, 1] = Hi[p, 1]
            Hi[i, 2] = Hi[p, 2]
            i = p
        else:
            break
    Hf[i] = when
    Hi[i, 0] = seq
    Hi[i, 1] = s
    Hi[i, 2] = version


@njit(cache=True, inline="always")
def _heap_pop(Hf, Hi, C):
    """Drops the top entry (read it first)."""
    n = C[HSIZE] - 1
    C[HSIZE] = n
    if n == 0:
        return
    when = Hf[n]
    seq = Hi[n, 0]
    s = Hi[n, 1]
    version = Hi[n, 2]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and (Hf[c + 1] < Hf[c] or (Hf[c + 1] == Hf[c] and Hi[c + 1, 0] < Hi[c, 0])):
            c += 1
        if Hf[c] < when or (Hf[c] == when and Hi[c, 0] < seq):
            Hf[i] = Hf[c]
            Hi[i, 0] = Hi[c, 0]
            Hi[i, 1] = Hi[c, 1]
            Hi[i, 2] = Hi[c, 2]
            i = c
        else:
            break
    Hf[i] = when
    Hi[i, 0] = seq
    Hi[i, 1] = s
    Hi[i, 2] = version


@njit(cache=True, inline="always")
def _clean_top(Hf, Hi, I, C):
    while C[HSIZE] > 0 and Hi[0, 2] != I[Hi[0, 1], VERSION]:
        _heap_pop(Hf, Hi, C)


@njit(cache=True, inline="always")
def set_rate(s, rate, alone, now, F, I, Hf, Hi, C):
    """Slot ``s`` sends at ``rate`` from ``now``; 1 where it needs a lone delivery event (its duration in
    column DUR), else 0 (an earlier last byte is pushed on the heap; a later one keeps its entry, which
    goes on to the new end when it surfaces)."""
    if rate == F[s, RATE] and alone == I[s, ALONE]:
        # Unchanged.  (A flow that was alone and now shares at the same rate still needs an entry: its
        # lone delivery would never free bandwidth for the others when its last byte leaves.)
        return 0
    old = F[s, RATE]
    if old != 0.0:
        rem = F[s, REM] - old * (now - F[s, TLAST])
        F[s, REM] = rem if rem >= 0.0 else 0.0
    F[s, TLAST] = now
    F[s, RATE] = rate
    I[s, ALONE] = alone
    duration = F[s, REM] / rate
    tend = now + duration
    F[s, TEND] = tend
    if alone:
        I[s, VERSION] += 1
        F[s, ARMED] = NAN
        F[s, DUR] = duration
        C[ARMED_N] += 1
        return 1
    armed = F[s, ARMED]
    if armed != armed or armed > tend:
        I[s, VERSION] += 1
        F[s, ARMED] = tend
        C[ARMED_N] += 1
        heap_push(Hf, Hi, C, tend, s, I[s, VERSION])
    return 0


@njit(cache=True)
def link_quiet(link, t0, F, E, LI, K):
    """No flow on ``link`` still has bytes to send at ``t0``."""
    e = LI[link, HEAD]
    while e >= 0:
        if not F[e // K, TEND] <= t0:
            return False
        e = E[e, 0]
    return True


@njit(cache=True, error_model="numpy")
def solve(touched, ntouched, now, F, I, FL, E, LI, LF, K, Hf, Hi, C, SI, SF, note_idle, incremental_min,
          seed_share, limit_share):
    """Re-solve the rates of the flows connected to the links ``touched[:ntouched]`` (see simcore.network);
    returns how many flows need a lone delivery event (their slots in SI[:, LONE], durations in column
    DUR)."""
    C[SOLVES] += 1
    C[STAMP] += 1
    seen = C[STAMP]
    nlone = 0
    for ti in range(ntouched):
        start = touched[ti]
        if LI[start, SEEN] == seen or LI[start, COUNT] == 0:
            continue
        LI[start, SEEN] = seen
        C[STAMP] += 1
        mark = C[STAMP]
        nc, nl = _component(start, seen, mark, now, F, I, FL, E, LI, LF, K, SI, note_idle)
        if nc == 0:
            continue
        if nc == 1:
            C[RATES] += 1
            s = SI[0, COMP]
            if set_rate(s, F[s, MINCAP], 1, now, F, I, Hf, Hi, C):
                SI[nlone, LONE] = s
                nlone += 1
            continue
        if (nc >= incremental_min and C[NEAR_FAILED] <= 2 * C[NEAR_SOLVED] + 8
                and _resolve_near(nc, nl, mark, now, F, I, FL, E, LI, LF, K, Hf, Hi, C, SI, SF, touched,
                                  ntouched, seed_share, limit_share)):
            continue
        C[RATES] += nc
        for i in range(nl):
            link = LI[i, STACK]
            LF[link, SPARE] = LF[link, CAP]
            LI[link, CNT] = LI[link, COUNT]
        nfixed = maxmin.fill(STACK, nl, MARK, mark, nc, I, FL, E, LI, LF, K, C, SI, SF)
        for i in range(nfixed):
            set_rate(SI[i, FIXED], SF[i, 0], 0, now, F, I, Hf, Hi, C)
    _clean_top(Hf, Hi, I, C)
    return nlone


@njit(cache=True)
def _component(start, seen, mark, now, F, I, FL, E, LI, LF, K, SI, note_idle):
    """The flows connected to link ``start`` (slots in SI[:, COMP], stamped ``mark`` in column MARK) and the
    links they cross (in LI[:, STACK]); lingering flows met on the way (their last byte has left) leave
    their links.  Returns (flows, links)."""
    nc = 0
    queued = 1
    LI[0, STACK] = start
    walked = 0
    while queued > walked:
        link = LI[walked, STACK]
        walked += 1
        e = LI[link, HEAD]
        while e >= 0:
            nxt = E[e, 0]
            s = e // K
            if I[s, MARK] != mark:
                if F[s, TEND] <= now:
                    unlink(s, F, I, FL, E, LI, LF, K, note_idle)  # it lingers only until its delivery
                else:
                    I[s, MARK] = mark
                    SI[nc, COMP] = s
                    nc += 1
                    for j in range(I[s, NLINKS]):
                        other = FL[s, j]
                        if LI[other, SEEN] != seen:
                            LI[other, SEEN] = seen
                            LI[queued, STACK] = other
                            queued += 1
            e = nxt
    return nc, walked


@njit(cache=True, error_model="numpy")
def _resolve_near(nc, nl, mark, now, F, I, FL, E, LI, LF, K, Hf, Hi, C, SI, SF, touched, ntouched, seed_share,
                  limit_share):
    """Re-solve the component (stamped ``mark``, its links in LI[:nl, STACK]) from the flows on its touched
    links out, only as far as rates move (maxmin.resolve); False where the change touches more than
    1/seed_share of it already or the re-solve would reach 1/limit_share of it (the caller fills it whole)."""
    C[STAMP] += 1
    tag = C[STAMP]
    for ti in range(ntouched):
        LI[touched[ti], LSEEN] = tag
    nseed = 0
    for i in range(nl):
        link = LI[i, STACK]
        if LI[link, LSEEN] != tag:
            continue
        e = LI[link, HEAD]
        while e >= 0:
            s = e // K
            if I[s, MARK] == mark and I[s, IN] != tag:
                I[s, IN] = tag
                SI[nseed, SOLVE] = s
                nseed += 1
            e = E[e, 0]
    if nseed * seed_share > nc:
        return False
    nfixed = maxmin.resolve(nseed, tag, now, nc // limit_share, F, I, FL, E, LI, LF, K, C, SI, SF)
    if nfixed < 0:
        C[NEAR_FAILED] += 1
        return False
    C[NEAR_SOLVED] += 1
    C[RATES] += nfixed
    for i in range(nfixed):
        s = SI[i, FIXED]
        rate = SF[i, 0]
        old = F[s, RATE]
        # A rate that moved by rounding only (the same share, summed in another order) keeps its entry.
        if old != rate and abs(rate - old) <= maxmin.SLACK * rate:
            rate = old
        set_rate(s, rate, 0, now, F, I, Hf, Hi, C)
    return True


@njit(cache=True)
def due(now, F, I, FL, E, LI, LF, K, Hf, Hi, C, SI, note_idle):
    """Pop the heap's entries due by ``now``: a flow whose last byte has left leaves its links; one whose
    rate fell since goes back on the heap at its new end.  Returns (ended, touched): the ended flows'
    slots in SI[:ended, COMP] in the order they ended, and the links they left that still carry flows in
    LI[:touched, OUT]."""
    ended = 0
    touched = 0
    C[STAMP] += 1
    tag = C[STAMP]
    while C[HSIZE] > 0 and Hf[0] <= now:
        s = Hi[0, 1]
        version = Hi[0, 2]
        _heap_pop(Hf, Hi, C)
        if version != I[s, VERSION]:
            continue  # superseded by a later rate change
        F[s, ARMED] = NAN
        tend = F[s, TEND]
        if tend > now:
            F[s, ARMED] = tend
            C[ARMED_N] += 1
            heap_push(Hf, Hi, C, tend, s, version)
            continue
        was_on = I[s, ATTACHED]
        unlink(s, F, I, FL, E, LI, LF, K, note_idle)
        if was_on:
            for j in range(I[s, NLINKS]):
                link = FL[s, j]
                if LI[link, COUNT] > 0 and LI[link, LSEEN] != tag:
                    LI[link, LSEEN] = tag
                    LI[touched, OUT] = link
                    touched += 1
        I[s, VERSION] += 1  # no event names it any more
        SI[ended, COMP] = s
        ended += 1
    _clean_top(Hf, Hi, I, C)
    return ended, touched
