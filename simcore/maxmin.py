"""Max-min fair rates by progressive filling, re-solved only as far as a change reaches.

Flows share links; the max-min fair allocation is the one progressive
filling gives: raise every flow's rate together, and fix a flow when a link
on its path fills.  It is also the one allocation in which every flow has a
*bottleneck*: a link of its path that is full and on which no flow has a
higher rate (Bertsekas and Gallager, Data Networks, sec. 6.5.2);
``bottlenecks`` checks that condition, as the tests do.

When flows start or end, the flows on the links the change touched take or
give back bandwidth, and the change goes on only through the flows whose
rates that moves.  ``resolve`` fills a set S of flows (first: those on the
touched links), the others' rates held, on what the others leave of each
link; then it checks the bottleneck condition for every flow on a link of
S, and a flow without one brings itself, or the held flows that outrun it,
into S, which is filled again.  Where no flow lacks a bottleneck the
allocation is max-min fair; where S grows past ``limit`` flows it gives up,
and the caller fills the whole connected set.

Both run compiled (numba) on the flow table's arrays (simcore.flowtable,
columns in simcore.flowlayout): a flow whose TEND has passed has sent its
last byte and no longer competes; a link's flows are its linked list.
``simcore.flowtable.rates`` fills a list of paths from scratch, for tests
and for users who want max-min rates without a simulation.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from simcore.flowlayout import (CAP, CHK, CNT, DONE, FIXED, HEAD, IN, LIN, LLIST, LMEAS, LOAD, MISSING, NEWRATE,
                                NLINKS, RATE, SOLVE, SPARE, STAMP, TEND, TOP)

# Relative slack of the bottleneck test: rates and loads summed in another
# order differ by rounding, a few units in the last place per flow.
SLACK = 1e-12


# The heap of (share, link) pairs in two arrays; sifting moves a hole rather than swapping pairs (six
# times faster under numba).
@njit(cache=True, inline="always")
def _sift_down(hs, hl, i, n):
    key = hs[i]
    link = hl[i]
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        ck = hs[c]
        cl = hl[c]
        if c + 1 < n:
            k2 = hs[c + 1]
            if k2 < ck or (k2 == ck and hl[c + 1] < cl):
                c += 1
                ck = k2
                cl = hl[c]
        if ck < key or (ck == key and cl < link):
            hs[i] = ck
            hl[i] = cl
            i = c
        else:
            break
    hs[i] = key
    hl[i] = link


@njit(cache=True, inline="always")
def _push(hs, hl, n, key, link):
    i = n
    while i > 0:
        p = (i - 1) // 2
        pk = hs[p]
        if key < pk or (key == pk and link < hl[p]):
            hs[i] = pk
            hl[i] = hl[p]
            i = p
        else:
            break
    hs[i] = key
    hl[i] = link
    return n + 1


@njit(cache=True, inline="always")
def _pop(hs, hl, n):
    n -= 1
    hs[0] = hs[n]
    hl[0] = hl[n]
    _sift_down(hs, hl, 0, n)
    return n


@njit(cache=True, error_model="numpy")
def fill(lcol, nl, mcol, mtag, nmembers, I, FL, E, LI, LF, K, C, SI, SF):
    """Progressive filling of the flows stamped ``mtag`` in column ``mcol`` (``nmembers`` of them), on the
    links LI[:nl, lcol], each with LF[:, SPARE] bandwidth left to them and LI[:, CNT] of them on it (both
    used up).  The flows fixed, in order, go to SI[:, FIXED], their rates to SF[:, 0]; returns how many.

    Each link is on the heap once, keyed by its share when last looked at.  A link's share only grows
    as flows on it are fixed (each is fixed at the smallest share of all, no more than this link's), so a
    key is a lower bound: a link that surfaces with a share grown since goes back with its new share,
    one that surfaces at its share is the link of least share, and is filled.  Ties go to the lower link
    number, as heapq orders the pairs, so the result does not depend on the order the links are listed
    in."""
    C[STAMP] += 1
    done = C[STAMP]
    hs = np.empty(nl + 1)
    hl = np.empty(nl + 1, np.int64)
    n = 0
    for i in range(nl):
        link = LI[i, lcol]
        if LI[link, CNT]:
            hs[n] = LF[link, SPARE] / LI[link, CNT]
            hl[n] = link
            n += 1
    for i in range(n // 2 - 1, -1, -1):
        _sift_down(hs, hl, i, n)
    fixed = 0
    while n > 0 and fixed < nmembers:
        key = hs[0]
        link = hl[0]
        n = _pop(hs, hl, n)
        count = LI[link, CNT]
        if count == 0:
            continue  # its flows were all fixed on other links
        share = LF[link, SPARE] / count
        if share > key:
            n = _push(hs, hl, n, share, link)  # grown since it was keyed
            continue
        e = LI[link, HEAD]
        while e >= 0:
            s = e // K
            e = E[e, 0]
            if I[s, DONE] == done or I[s, mcol] != mtag:
                continue
            I[s, DONE] = done
            SI[fixed, FIXED] = s
            SF[fixed, 0] = share
            fixed += 1
            for j in range(I[s, NLINKS]):
                other = FL[s, j]
                left = LF[other, SPARE] - share
                LF[other, SPARE] = 0.0 if left < 0.0 else left
                LI[other, CNT] -= 1
    return fixed


@njit(cache=True, inline="always")
def _rate_of(s, tag, now, F, I):
    """Its new rate if re-solved, its held one if still sending, else -1."""
    if I[s, IN] == tag:
        return F[s, NEWRATE]
    if not F[s, TEND] <= now:
        return F[s, RATE]
    return -1.0


@njit(cache=True)
def _measure(link, mt, tag, now, F, I, E, LI, LF, K):
    total = 0.0
    most = 0.0
    e = LI[link, HEAD]
    while e >= 0:
        r = _rate_of(e // K, tag, now, F, I)
        e = E[e, 0]
        if r < 0.0:
            continue
        total += r
        if r > most:
            most = r
    LF[link, LOAD] = total
    LF[link, TOP] = most
    LI[link, LMEAS] = mt


@njit(cache=True)
def _without_bottleneck(nl, tag, now, F, I, FL, E, LI, LF, K, C, SI):
    """The flows on the links LI[:nl, LLIST] without a bottleneck (to SI[:, MISSING]; returns how many),
    with the new rates of the flows stamped ``tag`` in column IN and the held rates of the others."""
    C[STAMP] += 1
    mt = C[STAMP]
    C[STAMP] += 1
    checked = C[STAMP]
    for i in range(nl):
        _measure(LI[i, LLIST], mt, tag, now, F, I, E, LI, LF, K)
    missing = 0
    for i in range(nl):
        e = LI[LI[i, LLIST], HEAD]
        while e >= 0:
            s = e // K
            e = E[e, 0]
            if I[s, CHK] == checked:
                continue
            I[s, CHK] = checked
            r = _rate_of(s, tag, now, F, I)
            if r < 0.0:
                continue
            found = False
            for j in range(I[s, NLINKS]):
                other = FL[s, j]
                if LI[other, LMEAS] != mt:
                    _measure(other, mt, tag, now, F, I, E, LI, LF, K)
                if LF[other, LOAD] >= LF[other, CAP] * (1.0 - SLACK) and r >= LF[other, TOP] * (1.0 - SLACK):
                    found = True
                    break
            if not found:
                SI[missing, MISSING] = s
                missing += 1
    return missing


@njit(cache=True, error_model="numpy")
def resolve(nseed, tag, now, limit, F, I, FL, E, LI, LF, K, C, SI, SF):
    """Re-solve after a change, starting from the ``nseed`` flows in SI[:, SOLVE] (stamped ``tag`` in
    column IN: the flows on the links the change touched); the others' rates are held.  Returns how many
    flows were re-solved (SI[:, FIXED], rates SF[:, 0], in the order fixed), or -1 where more than
    ``limit`` would have to be."""
    n = nseed
    while True:
        C[STAMP] += 1
        lt = C[STAMP]
        nl = 0
        for i in range(n):
            s = SI[i, SOLVE]
            for j in range(I[s, NLINKS]):
                link = FL[s, j]
                if LI[link, LIN] != lt:
                    LI[link, LIN] = lt
                    LI[nl, LLIST] = link
                    nl += 1
        for i in range(nl):
            link = LI[i, LLIST]
            left = LF[link, CAP]
            count = 0
            e = LI[link, HEAD]
            while e >= 0:
                s = e // K
                e = E[e, 0]
                if I[s, IN] == tag:
                    count += 1
                elif not F[s, TEND] <= now:
                    left -= F[s, RATE]
            LF[link, SPARE] = left if left > 0.0 else 0.0
            LI[link, CNT] = count
        fixed = fill(LLIST, nl, IN, tag, n, I, FL, E, LI, LF, K, C, SI, SF)
        for i in range(fixed):
            F[SI[i, FIXED], NEWRATE] = SF[i, 0]
        missing = _without_bottleneck(nl, tag, now, F, I, FL, E, LI, LF, K, C, SI)
        if missing == 0:
            return fixed
        before = n
        for m in range(missing):
            s = SI[m, MISSING]
            if I[s, IN] != tag:
                I[s, IN] = tag
                SI[n, SOLVE] = s
                n += 1
                continue
            # Held flows on its links outrun it: they are re-solved with it.
            for j in range(I[s, NLINKS]):
                e = LI[FL[s, j], HEAD]
                while e >= 0:
                    o = e // K
                    e = E[e, 0]
                    if I[o, IN] != tag and not F[o, TEND] <= now:
                        I[o, IN] = tag
                        SI[n, SOLVE] = o
                        n += 1
        if n > limit or n == before:
            return -1


def bottlenecks(rates: dict, paths: dict, capacity, slack: float = 1e-12) -> dict:
    """fid -> a bottleneck link of that flow under ``rates`` (fid -> rate) on ``paths`` (fid -> links), or
    None where it has none: the allocation is max-min fair iff no link is over capacity and no flow has None.
    ``slack``: relative, for loads and rates summed in another order."""
    load: dict[int, float] = {}
    top: dict[int, float] = {}
    for fid, links in paths.items():
        for link in links:
            load[link] = load.get(link, 0.0) + rates[fid]
            top[link] = max(top.get(link, 0.0), rates[fid])
    found = {}
    for fid, links in paths.items():
        found[fid] = next((link for link in links if load[link] >= capacity[link] * (1.0 - slack)
                           and rates[fid] >= top[link] * (1.0 - slack)), None)
    return found
