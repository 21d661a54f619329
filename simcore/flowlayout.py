"""Column numbers of the flow table's arrays (simcore.flowtable), shared with the compiled solver
(simcore.maxmin); numba reads module constants as compile-time constants."""

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
# measured), a count of the flows being filled on it, and lists of link numbers the steps build.
HEAD, TAIL, COUNT, SEEN, LSEEN, LIN, LMEAS, CNT, STACK, LLIST, OUT = range(11)
NLI = 11
# Float columns of a link: capacity, when its bucket's refill starts, bandwidth left to a fill, and the
# load and top rate of the bottleneck check.
CAP, IDLE, SPARE, LOAD, TOP = range(5)
NLF = 5
# Scratch columns (SI, integers; SF, floats) of per-slot lists: a component, a fill's order (SF: rates),
# a re-solve's set, lone flows, and flows without a bottleneck.
COMP, FIXED, SOLVE, LONE, MISSING = range(5)
NSI = 5
# Counters.
SOLVES, RATES, NEAR_SOLVED, NEAR_FAILED, ARMED_N, STAMP, HSIZE, HSEQ = range(8)
NC = 8
