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

Both run compiled (numba) on the flow table's arrays (simcore.flowtable
holds them; their columns are named here): a flow whose TEND has passed has
sent its last byte and no longer competes; a link's flows are its linked
list.  The table's other steps (a flow joining or leaving its links, a
solve after a change, the heap of pending last bytes) are compiled here
too: numba's cache is checked against the file a function is in, not the
files of the functions it calls, so every compiled function of the flow
network lives in this one file, and a change anywhere in it recompiles them
all.
"""
from __future__ import annotations

from numba import njit

NAN = float("nan")

# Float columns of a flow's slot: its rate, bytes left as of TLAST, when its last byte leaves (NaN: not
# yet solved), when its pending heap entry surfaces (NaN: none), its path's narrowest link, the duration
# of a lone flow's last rate (for its delivery event), and the rate a re-solve gives it.
RATE, REM, TLAST, TEND, ARMED, MINCAP, DUR, NEWRATE = range(8)
NF = 8
# Integer columns of a slot: its links' count, the version pending events must carry, alone (its pending
# event is a delivery), on its links, and stamps of the compiled steps' sets (component, fixed, re-solved,
# checked).
NLINKS, VERSION, ALONE, ATTACHED, MARK, DONE, IN, CHK = range(8)
NI = 8
# Integer columns of a link: its list's ends and length, stamps (walked, touched, in a re-solve,
# measured), a count of the flows being filled on it, and lists of link numbers the steps build (the
# filling's sorted links and its heap of links keyed again, keys in HKEY and RKEY), and the size of the
# link's connected set when a solve last walked it.
HEAD, TAIL, COUNT, SEEN, LSEEN, LIN, LMEAS, CNT, STACK, LLIST, OUT, HLINK, RLINK, CSIZE = range(14)
NLI = 14
# Float columns of a link: capacity, when its bucket's refill starts, bandwidth left to a fill, and the
# load and top rate of the bottleneck check.
CAP, IDLE, SPARE, LOAD, TOP, HKEY, RKEY = range(7)
NLF = 7
# Columns of an entry (a flow on one of its links): the next and previous entries of the link's list, and
# the flow's slot (entry // K, kept: an integer division costs tens of cycles on the lists' hot walks).
NEXT, PREV, OWNER = range(3)
NE = 3
# Scratch columns (SI, integers; SF, floats) of per-slot lists: a component, a fill's order (SF: rates),
# a re-solve's set, lone flows, and flows without a bottleneck.
COMP, FIXED, SOLVE, LONE, MISSING = range(5)
NSI = 5
# Counters: solves, rates computed, near re-solves that stayed near and that gave up, last bytes put on
# the heap, the stamp counter, the heap's size and sequence; NEAR_WORK: flows the re-solves near a change went through (each round of each, failed ones too);
# NEAR_SAVED: flows the successful ones spared filling (their connected sets).
SOLVES, RATES, NEAR_SOLVED, NEAR_FAILED, ARMED_N, STAMP, HSIZE, HSEQ, NEAR_WORK, NEAR_SAVED = range(10)
NC = 10

# Relative slack of the bottleneck test: rates and loads summed in another
# order differ by rounding, a few units in the last place per flow.
SLACK = 1e-12


# Kernels that allocate nothing are compiled without numba's reference counting (``_nrt=False``): a call
# to one then costs about a nanosecond, not the 45 ns of counting references to its array arguments.
KERNEL = dict(cache=True, error_model="numpy", _nrt=False)

# Near re-solves (see solve): what a flow costs one against what it costs a filling, the start they are
# given before their work is weighed against what they spared, and how often they are tried regardless.
NEAR_START_FLOWS = 4096
NEAR_COST = 8
NEAR_PROBE = 64


# The filling's links: first all of them sorted by share in columns HKEY and HLINK, then a heap of those
# keyed again in RKEY and RLINK.  Sifting moves a hole rather than swapping pairs (six times faster).
@njit(**KERNEL)
def _swap(LF, LI, a, b):
    k = LF[a, HKEY]
    LF[a, HKEY] = LF[b, HKEY]
    LF[b, HKEY] = k
    link = LI[a, HLINK]
    LI[a, HLINK] = LI[b, HLINK]
    LI[b, HLINK] = link


@njit(**KERNEL)
def _sort(LF, LI, n):
    """Sort rows [0, n) of (HKEY, HLINK) by key: three-way quicksort (a filling's keys are a link's
    capacity over its flows: few distinct values, each split once), median of three, insertion sort
    below 16 rows; the larger side of each split waits on a stack in column OUT (depth log n; no
    recursion, which numba's cache does not load back safely).  Equal keys keep no particular order:
    links taken at one share all give their flows that same share, so the rates do not depend on it
    (beyond the last bit of a sum)."""
    depth = 0
    lo = 0
    hi = n
    while True:
        while hi - lo > 16:
            a = LF[lo, HKEY]
            b = LF[(lo + hi) // 2, HKEY]
            c = LF[hi - 1, HKEY]
            pivot = max(min(a, b), min(max(a, b), c))
            # [lo, lt) < pivot, [lt, i) == pivot, (gt, hi) > pivot
            lt = lo
            i = lo
            gt = hi - 1
            while i <= gt:
                k = LF[i, HKEY]
                if k < pivot:
                    _swap(LF, LI, i, lt)
                    lt += 1
                    i += 1
                elif k > pivot:
                    _swap(LF, LI, i, gt)
                    gt -= 1
                else:
                    i += 1
            if lt - lo < hi - gt - 1:
                LI[depth, OUT] = gt + 1
                LI[depth + 1, OUT] = hi
                hi = lt
            else:
                LI[depth, OUT] = lo
                LI[depth + 1, OUT] = lt
                lo = gt + 1
            depth += 2
        for i in range(lo + 1, hi):
            key = LF[i, HKEY]
            link = LI[i, HLINK]
            j = i
            while j > lo and LF[j - 1, HKEY] > key:
                LF[j, HKEY] = LF[j - 1, HKEY]
                LI[j, HLINK] = LI[j - 1, HLINK]
                j -= 1
            LF[j, HKEY] = key
            LI[j, HLINK] = link
        if depth == 0:
            return
        depth -= 2
        lo = LI[depth, OUT]
        hi = LI[depth + 1, OUT]


@njit(**KERNEL)
def _push(LF, LI, n, key, link):
    i = n
    while i > 0:
        p = (i - 1) // 2
        pk = LF[p, RKEY]
        if key < pk or (key == pk and link < LI[p, RLINK]):
            LF[i, RKEY] = pk
            LI[i, RLINK] = LI[p, RLINK]
            i = p
        else:
            break
    LF[i, RKEY] = key
    LI[i, RLINK] = link
    return n + 1


@njit(**KERNEL)
def _pop(LF, LI, n):
    n -= 1
    key = LF[n, RKEY]
    link = LI[n, RLINK]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        ck = LF[c, RKEY]
        cl = LI[c, RLINK]
        if c + 1 < n:
            k2 = LF[c + 1, RKEY]
            if k2 < ck or (k2 == ck and LI[c + 1, RLINK] < cl):
                c += 1
                ck = k2
                cl = LI[c, RLINK]
        if ck < key or (ck == key and cl < link):
            LF[i, RKEY] = ck
            LI[i, RLINK] = cl
            i = c
        else:
            break
    LF[i, RKEY] = key
    LI[i, RLINK] = link
    return n


@njit(**KERNEL)
def fill(lcol, nl, mcol, mtag, nmembers, I, FL, E, LI, LF, K, C, SI, SF):
    """Progressive filling of the flows stamped ``mtag`` in column ``mcol`` (``nmembers`` of them), on the
    links LI[:nl, lcol], each with LF[:, SPARE] bandwidth left to them and LI[:, CNT] of them on it (both
    used up).  The flows fixed, in order, go to SI[:, FIXED], their rates to SF[:, 0]; returns how many.

    Links are taken by least share: all of them sorted by their shares at the start, then merged with a
    heap of those keyed again.  A link's share only grows as flows on it are fixed (each is fixed at the
    smallest share of all, no more than this link's), so a key is a lower bound: a link taken with a
    share grown since goes on the heap with its new share, one taken at its share is a link of least
    share, and is filled.  Links of equal share give their flows that same share whatever their order,
    so the rates do not depend on the order the links are listed in (beyond the last bit of a sum).
    Sorting first costs less than a heap of every link: most links (a host's own link, say) are taken
    only to find all their flows fixed elsewhere."""
    C[STAMP] += 1
    done = C[STAMP]
    n = 0
    for i in range(nl):
        link = LI[i, lcol]
        if LI[link, CNT]:
            LF[n, HKEY] = LF[link, SPARE] / LI[link, CNT]
            LI[n, HLINK] = link
            n += 1
    _sort(LF, LI, n)
    pos = 0
    m = 0  # links keyed again, on the heap
    fixed = 0
    while fixed < nmembers:
        if pos < n and (m == 0 or LF[pos, HKEY] < LF[0, RKEY]
                        or (LF[pos, HKEY] == LF[0, RKEY] and LI[pos, HLINK] < LI[0, RLINK])):
            key = LF[pos, HKEY]
            link = LI[pos, HLINK]
            pos += 1
        elif m > 0:
            key = LF[0, RKEY]
            link = LI[0, RLINK]
            m = _pop(LF, LI, m)
        else:
            break
        count = LI[link, CNT]
        if count == 0:
            continue  # its flows were all fixed on other links
        share = LF[link, SPARE] / count
        if share > key:
            m = _push(LF, LI, m, share, link)  # grown since it was keyed
            continue
        e = LI[link, HEAD]
        while e >= 0:
            s = E[e, OWNER]
            e = E[e, NEXT]
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


@njit(**KERNEL)
def _rate_of(s, tag, now, F, I):
    """Its new rate if re-solved, its held one if still sending, else -1."""
    if I[s, IN] == tag:
        return F[s, NEWRATE]
    if not F[s, TEND] <= now:
        return F[s, RATE]
    return -1.0


@njit(**KERNEL)
def _measure(link, mt, tag, now, F, I, E, LI, LF, K):
    total = 0.0
    most = 0.0
    e = LI[link, HEAD]
    while e >= 0:
        r = _rate_of(E[e, OWNER], tag, now, F, I)
        e = E[e, NEXT]
        if r < 0.0:
            continue
        total += r
        if r > most:
            most = r
    LF[link, LOAD] = total
    LF[link, TOP] = most
    LI[link, LMEAS] = mt


@njit(**KERNEL)
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
            s = E[e, OWNER]
            e = E[e, NEXT]
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


@njit(**KERNEL)
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
                s = E[e, OWNER]
                e = E[e, NEXT]
                if I[s, IN] == tag:
                    count += 1
                elif not F[s, TEND] <= now:
                    left -= F[s, RATE]
            LF[link, SPARE] = left if left > 0.0 else 0.0
            LI[link, CNT] = count
        C[NEAR_WORK] += n
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
                    o = E[e, OWNER]
                    e = E[e, NEXT]
                    if I[o, IN] != tag and not F[o, TEND] <= now:
                        I[o, IN] = tag
                        SI[n, SOLVE] = o
                        n += 1
        if n > limit or n == before:
            return -1


# -- the flow table's steps (simcore.flowtable holds the arrays) ---------------------------------


@njit(**KERNEL)
def attach(s, I, FL, E, LI, K):
    """The flow in slot ``s`` joins the tail of each of its links' lists."""
    for j in range(I[s, NLINKS]):
        link = FL[s, j]
        e = s * K + j
        tail = LI[link, TAIL]
        E[e, NEXT] = -1
        E[e, PREV] = tail
        E[e, OWNER] = s
        if tail >= 0:
            E[tail, NEXT] = e
        else:
            LI[link, HEAD] = e
        LI[link, TAIL] = e
        LI[link, COUNT] += 1
    I[s, ATTACHED] = 1


@njit(**KERNEL)
def unlink(s, F, I, FL, E, LI, LF, K, note_idle):
    """The flow in slot ``s`` leaves its links (if still on them); with ``note_idle``, each link's bucket
    refills from when its last byte left, if later than the link's last."""
    if I[s, ATTACHED] == 0:
        return
    tend = F[s, TEND]
    for j in range(I[s, NLINKS]):
        link = FL[s, j]
        e = s * K + j
        nxt = E[e, NEXT]
        prv = E[e, PREV]
        if prv >= 0:
            E[prv, NEXT] = nxt
        else:
            LI[link, HEAD] = nxt
        if nxt >= 0:
            E[nxt, PREV] = prv
        else:
            LI[link, TAIL] = prv
        LI[link, COUNT] -= 1
        if note_idle and tend > LF[link, IDLE]:
            LF[link, IDLE] = tend
    I[s, ATTACHED] = 0


# The pending last bytes: a heap of (time, sequence) keys with (slot, version), sifted by moving a hole.
@njit(**KERNEL)
def _heap_move(Hf, Hi, to, frm):
    Hf[to] = Hf[frm]
    Hi[to, 0] = Hi[frm, 0]
    Hi[to, 1] = Hi[frm, 1]
    Hi[to, 2] = Hi[frm, 2]


@njit(**KERNEL)
def _heap_put(Hf, Hi, i, when, seq, s, version):
    Hf[i] = when
    Hi[i, 0] = seq
    Hi[i, 1] = s
    Hi[i, 2] = version


@njit(**KERNEL)
def heap_push(Hf, Hi, C, when, s, version):
    i = C[HSIZE]
    C[HSIZE] = i + 1
    seq = C[HSEQ]
    C[HSEQ] += 1
    while i > 0:
        p = (i - 1) // 2
        if when < Hf[p] or (when == Hf[p] and seq < Hi[p, 0]):
            _heap_move(Hf, Hi, i, p)
            i = p
        else:
            break
    _heap_put(Hf, Hi, i, when, seq, s, version)


@njit(**KERNEL)
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
            _heap_move(Hf, Hi, i, c)
            i = c
        else:
            break
    _heap_put(Hf, Hi, i, when, seq, s, version)


@njit(**KERNEL)
def _clean_top(Hf, Hi, I, C):
    while C[HSIZE] > 0 and Hi[0, 2] != I[Hi[0, 1], VERSION]:
        _heap_pop(Hf, Hi, C)


@njit(**KERNEL)
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


@njit(**KERNEL)
def link_quiet(link, t0, F, E, LI, K):
    """No flow on ``link`` still has bytes to send at ``t0``."""
    e = LI[link, HEAD]
    while e >= 0:
        if not F[E[e, OWNER], TEND] <= t0:
            return False
        e = E[e, NEXT]
    return True


@njit(**KERNEL)
def solve(touched, ntouched, now, F, I, FL, E, LI, LF, K, Hf, Hi, C, SI, SF, note_idle, incremental_min,
          seed_share, limit_share):
    """Re-solve the rates of the flows connected to the links ``touched[:ntouched]`` (see simcore.network);
    returns how many flows need a lone delivery event (their slots in SI[:, LONE], durations in column
    DUR)."""
    C[SOLVES] += 1
    # Near re-solves are tried while the flows they went through, failed ones too, at NEAR_COST each,
    # stay within the flows the successful ones spared filling (plus a start), and on one solve in
    # NEAR_PROBE to see whether the traffic has changed: on dense traffic, where a change moves most
    # rates, they stop (measured: a flow costs a near re-solve 4 times or more what it costs a
    # filling); on sparse traffic they pay many times over.
    near = NEAR_COST * C[NEAR_WORK] <= C[NEAR_SAVED] + NEAR_START_FLOWS or C[SOLVES] % NEAR_PROBE == 0
    if near:
        tried = _near_first(touched, ntouched, now, F, I, FL, E, LI, LF, K, Hf, Hi, C, SI, SF,
                            incremental_min, seed_share, limit_share)
        if tried == 1:
            _clean_top(Hf, Hi, I, C)
            return 0
        near = tried == 0  # not tried: the walk below may; tried and failed: fill whole
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
        if (near and nc >= incremental_min
                and _resolve_near(nc, nl, mark, now, F, I, FL, E, LI, LF, K, Hf, Hi, C, SI, SF, touched,
                                  ntouched, seed_share, limit_share)):
            continue
        C[RATES] += nc
        for i in range(nl):
            link = LI[i, STACK]
            LF[link, SPARE] = LF[link, CAP]
            LI[link, CNT] = LI[link, COUNT]
        nfixed = fill(STACK, nl, MARK, mark, nc, I, FL, E, LI, LF, K, C, SI, SF)
        for i in range(nfixed):
            set_rate(SI[i, FIXED], SF[i, 0], 0, now, F, I, Hf, Hi, C)
    _clean_top(Hf, Hi, I, C)
    return nlone


@njit(**KERNEL)
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
            nxt = E[e, NEXT]
            s = E[e, OWNER]
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
    for i in range(walked):
        LI[LI[i, STACK], CSIZE] = nc
    return nc, walked


@njit(**KERNEL)
def _set_near_rates(nfixed, now, F, I, Hf, Hi, C, SI, SF):
    """The rates a near re-solve fixed (SI[:nfixed, FIXED], SF[:nfixed, 0]), set from ``now``."""
    for i in range(nfixed):
        s = SI[i, FIXED]
        rate = SF[i, 0]
        old = F[s, RATE]
        # A rate that moved by rounding only (the same share, summed in another order) keeps its entry.
        if old != rate and abs(rate - old) <= SLACK * rate:
            rate = old
        set_rate(s, rate, 0, now, F, I, Hf, Hi, C)


@njit(**KERNEL)
def _near_first(touched, ntouched, now, F, I, FL, E, LI, LF, K, Hf, Hi, C, SI, SF, incremental_min, seed_share,
                limit_share):
    """Re-solve from the flows on the touched links out, before walking their connected sets, which on a
    large set costs more than the re-solve (16,384 hosts: 6 rates a solve, 2,000 flows walked).  The set's
    size is the one its links had when a solve last walked them.  Returns 1 where done, 0 where not tried
    (a set not known to be large, a flow alone on its path: its lone delivery is the walk's to set), -1
    where tried and given up."""
    C[STAMP] += 1
    tag = C[STAMP]
    nseed = 0
    size = 0
    for ti in range(ntouched):
        link = touched[ti]
        if LI[link, CSIZE] > size:
            size = LI[link, CSIZE]
        e = LI[link, HEAD]
        while e >= 0:
            s = E[e, OWNER]
            e = E[e, NEXT]
            if I[s, IN] != tag and not F[s, TEND] <= now:
                I[s, IN] = tag
                SI[nseed, SOLVE] = s
                nseed += 1
    if nseed == 0 or size < incremental_min or nseed * seed_share > size:
        return 0
    for i in range(nseed):
        s = SI[i, SOLVE]
        shared = False
        for j in range(I[s, NLINKS]):
            e = LI[FL[s, j], HEAD]
            while e >= 0:
                o = E[e, OWNER]
                e = E[e, NEXT]
                if o != s and not F[o, TEND] <= now:
                    shared = True
                    break
            if shared:
                break
        if not shared:
            return 0
    nfixed = resolve(nseed, tag, now, size // limit_share, F, I, FL, E, LI, LF, K, C, SI, SF)
    if nfixed < 0:
        C[NEAR_FAILED] += 1
        return -1
    C[NEAR_SOLVED] += 1
    C[NEAR_SAVED] += size
    C[RATES] += nfixed
    _set_near_rates(nfixed, now, F, I, Hf, Hi, C, SI, SF)
    return 1


@njit(**KERNEL)
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
            s = E[e, OWNER]
            if I[s, MARK] == mark and I[s, IN] != tag:
                I[s, IN] = tag
                SI[nseed, SOLVE] = s
                nseed += 1
            e = E[e, NEXT]
    if nseed * seed_share > nc:
        return False
    nfixed = resolve(nseed, tag, now, nc // limit_share, F, I, FL, E, LI, LF, K, C, SI, SF)
    if nfixed < 0:
        C[NEAR_FAILED] += 1
        return False
    C[NEAR_SOLVED] += 1
    C[NEAR_SAVED] += nc
    C[RATES] += nfixed
    _set_near_rates(nfixed, now, F, I, Hf, Hi, C, SI, SF)
    return True


@njit(**KERNEL)
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
