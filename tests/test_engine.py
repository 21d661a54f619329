"""The SimPy engine checked against closed forms and hand-computed traces.

Everything here is deterministic and asserts exact simulated times (or
``pytest.approx`` with rel=1e-9): collective algorithms against Thakur,
Rabenseifner and Gropp (2005) on a contention-free topology, max-min fair
sharing against hand-solved progressive filling, energy against a sum by hand,
the data-parallel step against its compute/communication critical path.

Timing model the closed forms rest on (from ``simcore.engine`` and
``simcore.network``): a send is eager, its flow starts at once and completes
when the last byte arrives, alpha + n*beta later on an uncontended path; a
lowered step ends when all its sends are delivered and all its receives have
arrived; a message that arrives before its receive is posted is buffered.
"""
from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pandas as pd
import pytest

from simcore.engine import DeadlockError, SimulationError, Simulator, simulate
from simcore.result import RunResult
from topologies import LinkSpec, NodeSpec, Topology, fully_connected, switch
from workloads.collectives import ALGORITHMS
from workloads.ops import Collective, Compute, Recv, Send, Wait
from workloads.stragglers import StragglerSpec
from workloads.training import DataParallelStep

ALPHA = 1e-6  # s
BANDWIDTH = 1e9  # B/s
BETA = 1.0 / BANDWIDTH
# Divisible by every p below and by every power of two <= 16, so all blocks
# (of p, of p' = largest power of two <= p) are equal.
N = 1680 * 1000
RANKS = (2, 3, 4, 5, 7, 8, 12, 16)
REL = 1e-9


def hockney(nbytes: float, alpha: float = ALPHA, beta: float = BETA) -> float:
    return alpha + nbytes * beta


def floor_lg(p: int) -> int:
    return p.bit_length() - 1


def ceil_lg(p: int) -> int:
    return (p - 1).bit_length()


def is_pow2(p: int) -> bool:
    return p & (p - 1) == 0


def contention_free(p: int) -> Topology:
    return fully_connected(p, link=LinkSpec(BANDWIDTH, latency_s=ALPHA))


def run_collective(p: int, op: str, algorithm: str, nbytes: int = N, root: int = 0, topology=None) -> RunResult:
    topo = topology or contention_free(p)
    coll = Collective(op, nbytes, algorithm=algorithm, root=root)
    return simulate(topo, [[coll] for _ in range(p)])


def collective_ends(result: RunResult) -> list[float]:
    recs = result.records
    assert list(recs["rank"]) == list(range(len(recs)))  # one record per rank
    assert (recs["start_s"] == 0.0).all()
    return list(recs["end_s"])


# ---------------------------------------------------------------------------
# Independent models of the trees and hypercubes the algorithms use.  These
# restate MPICH's schedules (Thakur et al. 2005, sec. 4) in max-plus form; they
# do not call library code.


def _lowbit(x: int) -> int:
    return x & -x


def tree_children(rel: int, p: int) -> list[int]:
    """Children of relative rank ``rel`` in MPICH's binomial tree, farthest first."""
    limit = _lowbit(rel) if rel else 1 << ceil_lg(p)
    out, m = [], limit >> 1
    while m:
        if rel + m < p:
            out.append(rel + m)
        m >>= 1
    return out


def subtree_blocks(rel: int, p: int) -> int:
    """Blocks a binomial subtree rooted at ``rel`` spans (scatter / gather)."""
    return (min(rel + _lowbit(rel), p) if rel else p) - rel


def fan_out(p: int, cost) -> list[float]:
    """End time of each relative rank in a binomial broadcast/scatter.

    A rank receives from its parent, then sends to its children one step each,
    farthest first; ``cost(child)`` is the time of the message to ``child``.
    """
    recv = [0.0] * p
    end = [0.0] * p
    stack = [0]
    while stack:
        rel = stack.pop()
        t = recv[rel]
        for c in tree_children(rel, p):
            t += cost(c)
            recv[c] = t
            stack.append(c)
        end[rel] = t
    return end


def fan_in(p: int, cost) -> list[float]:
    """End time of each relative rank in a binomial reduce/gather with eager sends.

    A rank finishes its receives at max over children of (child done + cost),
    because messages that arrive early are buffered; then it sends to its
    parent, ending when that message is delivered.
    """
    done = [0.0] * p
    for rel in reversed(range(p)):  # children have larger relative ranks
        done[rel] = max([0.0] + [done[c] + cost(c) for c in tree_children(rel, p)])
    return [done[0]] + [done[rel] + cost(rel) for rel in range(1, p)]


def hypercube(start: list[float], dists, send_bytes) -> list[float]:
    """Pairwise exchanges among survivors: at distance d, n swaps with n ^ d.

    A step ends when n's own send is delivered and its partner's has arrived.
    """
    t = list(start)
    for d in dists:
        t = [
            max(t[n] + hockney(send_bytes(n, d)), t[n ^ d] + hockney(send_bytes(n ^ d, d)))
            for n in range(len(t))
        ]
    return t


def folded(p: int):
    """MPICH's non-power-of-two fold: p' and rem = p - p'."""
    pof2 = 1 << floor_lg(p)
    return pof2, p - pof2


def survivor_ends_to_ranks(p: int, survivor_end: list[float], fold_out_cost: float) -> list[float]:
    """Survivor n < rem is old rank 2n+1 and hands a result to old rank 2n at the end."""
    pof2, rem = folded(p)
    ends = [0.0] * p
    for n, t in enumerate(survivor_end):
        if n < rem:
            ends[2 * n] = ends[2 * n + 1] = t + fold_out_cost
        else:
            ends[n + rem] = t
    return ends


# ---------------------------------------------------------------------------
# Expected end time of every rank, per algorithm.


def expected_allreduce(alg: str, p: int, n: int = N) -> list[float]:
    pof2, rem = folded(p)
    if alg == "ring":
        return [2 * (p - 1) * ALPHA + 2 * ((p - 1) / p) * n * BETA] * p
    if alg == "recursive_doubling":
        if is_pow2(p):
            return [math.log2(p) * hockney(n)] * p
        # Folded pairs: pre-step + lg p' exchanges + post-step, (lg p' + 2)(a + n b);
        # survivors above the fold skip the post-step.
        return [
            (floor_lg(p) + (2 if r < 2 * rem else 1)) * hockney(n) for r in range(p)
        ]
    if alg == "rabenseifner":
        half = floor_lg(p) * ALPHA + ((pof2 - 1) / pof2) * n * BETA  # halving == doubling
        if is_pow2(p):
            assert 2 * half == pytest.approx(2 * math.log2(p) * ALPHA + 2 * ((p - 1) / p) * n * BETA)
            return [2 * half] * p
        # Whole-vector pre-step, Rabenseifner on p', whole-vector post-step.
        return [(2 if r < 2 * rem else 1) * hockney(n) + 2 * half for r in range(p)]
    if alg == "binomial":
        reduce_root = floor_lg(p) * hockney(n)
        return [reduce_root + t for t in fan_out(p, lambda c: hockney(n))]
    raise AssertionError(alg)


def expected_broadcast(alg: str, p: int, n: int = N) -> list[float]:
    if alg == "binomial":
        return fan_out(p, lambda c: hockney(n))
    if alg == "ring":
        return [(rel + 1) * hockney(n) if rel < p - 1 else (p - 1) * hockney(n) for rel in range(p)]
    if alg == "scatter_allgather":
        block = n // p
        scatter = fan_out(p, lambda c: hockney(subtree_blocks(c, p) * block))
        if is_pow2(p):
            assert max(scatter) == pytest.approx(math.log2(p) * ALPHA + ((p - 1) / p) * n * BETA)
        # Each ring allgather step waits for the left neighbour, so after p-1
        # steps every rank has waited for the slowest scatter.
        return [max(scatter) + (p - 1) * hockney(block)] * p
    raise AssertionError(alg)


def expected_reduce(alg: str, p: int, n: int = N, root: int = 0) -> tuple[float, float]:
    """(root's end, makespan)."""
    pof2, rem = folded(p)
    if alg == "binomial":
        # Eager sends: a node waits for max over children, so the root waits
        # for the longest chain, max popcount(rel) = floor(lg p) hops -- one
        # step less than Thakur's ceil(lg p)(a + n b) when p is no power of two.
        ends = fan_in(p, lambda c: hockney(n))
        assert ends[0] == pytest.approx(floor_lg(p) * hockney(n))
        return ends[0], max(ends)
    if alg == "ring":
        return (p - 1) * hockney(n), (p - 1) * hockney(n)
    if alg == "rabenseifner":
        half = floor_lg(p) * ALPHA + ((pof2 - 1) / pof2) * n * BETA  # halving == binomial gather chain
        if is_pow2(p):
            t = 2 * half
        else:
            root_dropped = root < 2 * rem and root % 2 == 0
            t = hockney(n) + 2 * half + (hockney(n) if root_dropped else 0.0)
        return t, t
    raise AssertionError(alg)


def expected_allgather(alg: str, p: int, n: int = N) -> list[float]:
    block = n // p
    pof2, rem = folded(p)
    if alg == "ring":
        return [(p - 1) * ALPHA + ((p - 1) / p) * n * BETA] * p
    if alg == "recursive_doubling":
        if is_pow2(p):
            return [math.log2(p) * ALPHA + ((p - 1) / p) * n * BETA] * p
        # Survivor n < rem stands for two ranks (two blocks); the dropped rank
        # gets the whole vector from its partner at the end.
        weight = [2 if m < rem else 1 for m in range(pof2)]

        def run(m, d):
            lo = m & ~(d - 1)
            return sum(weight[lo:lo + d]) * block

        start = [hockney(block) if m < rem else 0.0 for m in range(pof2)]
        dists = [1 << k for k in range(floor_lg(p))]
        return survivor_ends_to_ranks(p, hypercube(start, dists, run), hockney(n))
    if alg == "binomial":
        gather = fan_in(p, lambda c: hockney(subtree_blocks(c, p) * block))[0]
        if is_pow2(p):
            assert gather == pytest.approx(math.log2(p) * ALPHA + ((p - 1) / p) * n * BETA)
        return [gather + t for t in fan_out(p, lambda c: hockney(n))]
    raise AssertionError(alg)


def expected_reduce_scatter(alg: str, p: int, n: int = N) -> list[float]:
    block = n // p
    pof2, rem = folded(p)
    if alg == "ring":
        return [(p - 1) * ALPHA + ((p - 1) / p) * n * BETA] * p
    if alg == "recursive_halving":
        if is_pow2(p):
            return [math.log2(p) * ALPHA + ((p - 1) / p) * n * BETA] * p
        # Whole-vector pre-step; survivors halve over the blocks of the ranks
        # they stand for; each folded survivor hands its partner one block.
        weight = [2 if m < rem else 1 for m in range(pof2)]

        def other_half(m, d):
            lo = (m ^ d) & ~(d - 1)
            return sum(weight[lo:lo + d]) * block

        start = [hockney(n) if m < rem else 0.0 for m in range(pof2)]
        dists = [pof2 >> (k + 1) for k in range(floor_lg(p))]
        return survivor_ends_to_ranks(p, hypercube(start, dists, other_half), hockney(block))
    raise AssertionError(alg)


def expected_alltoall(alg: str, p: int, n: int = N) -> list[float]:
    return [(p - 1) * hockney(n / p)] * p


def expected_barrier(alg: str, p: int, n: int = N) -> list[float]:
    return [ceil_lg(p) * ALPHA] * p


def expected_scatter(alg: str, p: int, n: int = N) -> list[float]:
    """End time of each relative rank (the root is 0)."""
    block = n // p
    if alg == "binomial":
        # The root hands each child its subtree's run of blocks, farthest first.
        ends = fan_out(p, lambda c: hockney(subtree_blocks(c, p) * block))
        if is_pow2(p):
            assert max(ends) == pytest.approx(math.log2(p) * ALPHA + ((p - 1) / p) * n * BETA)
        return ends
    if alg == "linear":
        # The root's p - 1 sends start at once; on a fully connected topology
        # each has its own link, so nothing is shared: one block's time each.
        return [hockney(block)] * p
    raise AssertionError(alg)


def expected_gather(alg: str, p: int, n: int = N) -> list[float]:
    """End time of each relative rank (the root is 0)."""
    block = n // p
    if alg == "binomial":
        # Eager sends: a subtree's run leaves once all its children's have arrived.
        ends = fan_in(p, lambda c: hockney(subtree_blocks(c, p) * block))
        if is_pow2(p):
            assert ends[0] == pytest.approx(math.log2(p) * ALPHA + ((p - 1) / p) * n * BETA)
        return ends
    if alg == "linear":
        return [hockney(block)] * p  # p - 1 flows into the root, each on its own link
    raise AssertionError(alg)


def expected_alltoallv(counts) -> list[float]:
    """Pairwise exchange with counts[i][j] bytes from i to j, in max-plus form.

    Step k of rank r sends to r+k and receives from r-k; it ends when its send
    is delivered and the receive has arrived.  Every directed link i->j is used
    once (at step j-i mod p), so on a fully connected topology nothing is
    shared and the messages are Hockney's.
    """
    p = len(counts)
    t = [0.0] * p
    for k in range(1, p):
        t = [max(t[r] + hockney(counts[r][(r + k) % p]), t[(r - k) % p] + hockney(counts[(r - k) % p][r]))
             for r in range(p)]
    return t


def alltoallv_programs(counts, algorithm="pairwise"):
    p = len(counts)
    return [[Collective("alltoallv", algorithm=algorithm, send_nbytes=tuple(counts[i]),
                        recv_nbytes=tuple(counts[j][i] for j in range(p)))] for i in range(p)]


def uneven_counts(p: int) -> list[list[int]]:
    # Between 10 kB and 70 kB, no two neighbours alike; the own count is a local copy.
    return [[(1 + (3 * i + 5 * j) % 7) * 10_000 for j in range(p)] for i in range(p)]


def test_every_algorithm_has_a_closed_form_here():
    covered = {
        "allreduce": {"ring", "recursive_doubling", "rabenseifner", "binomial", "hierarchical"},
        "broadcast": {"binomial", "ring", "scatter_allgather"},
        "reduce": {"binomial", "ring", "rabenseifner"},
        "allgather": {"ring", "recursive_doubling", "binomial"},
        "reduce_scatter": {"ring", "recursive_halving"},
        "alltoall": {"pairwise", "ring"},
        "alltoallv": {"pairwise", "ring"},
        "scatter": {"binomial", "linear"},
        "gather": {"binomial", "linear"},
        "barrier": {"dissemination", "recursive_doubling"},
    }
    assert {op: set(algs) for op, algs in ALGORITHMS.items()} == covered


SYMMETRIC = {
    "allreduce": expected_allreduce,
    "allgather": expected_allgather,
    "reduce_scatter": expected_reduce_scatter,
    "alltoall": expected_alltoall,
    "barrier": expected_barrier,
}


@pytest.mark.parametrize("p", RANKS)
@pytest.mark.parametrize(
    "op,algorithm",
    [(op, alg) for op, expect in SYMMETRIC.items() for alg in ALGORITHMS[op] if alg != "hierarchical"],
)
def test_unrooted_collective_matches_closed_form(op, algorithm, p):
    result = run_collective(p, op, algorithm)
    expected = SYMMETRIC[op](algorithm, p)
    assert collective_ends(result) == pytest.approx(expected, rel=REL)
    assert result.makespan_s == pytest.approx(max(expected), rel=REL)
    assert list(result.records["kind"]) == [op] * p
    assert list(result.records["algorithm"]) == [algorithm] * p


@pytest.mark.parametrize("p", RANKS)
def test_textbook_forms_spelled_out(p):
    # The Thakur et al. formulas as written, for the cases where they are exact.
    a, b, n = ALPHA, BETA, N
    lg = math.log2(p)
    pof2, _ = folded(p)
    assert run_collective(p, "allreduce", "ring").makespan_s == pytest.approx(
        2 * (p - 1) * a + 2 * ((p - 1) / p) * n * b, rel=REL
    )
    rd = lg * (a + n * b) if is_pow2(p) else (math.log2(pof2) + 2) * (a + n * b)
    assert run_collective(p, "allreduce", "recursive_doubling").makespan_s == pytest.approx(rd, rel=REL)
    if is_pow2(p):
        rab = 2 * lg * a + 2 * ((p - 1) / p) * n * b
    else:
        rab = 2 * (a + n * b) + 2 * math.log2(pof2) * a + 2 * ((pof2 - 1) / pof2) * n * b
    assert run_collective(p, "allreduce", "rabenseifner").makespan_s == pytest.approx(rab, rel=REL)
    assert run_collective(p, "broadcast", "binomial").makespan_s == pytest.approx(
        math.ceil(lg) * (a + n * b), rel=REL
    )
    assert run_collective(p, "broadcast", "ring").makespan_s == pytest.approx((p - 1) * (a + n * b), rel=REL)
    assert run_collective(p, "reduce", "ring").makespan_s == pytest.approx((p - 1) * (a + n * b), rel=REL)
    assert run_collective(p, "allgather", "ring").makespan_s == pytest.approx(
        (p - 1) * a + ((p - 1) / p) * n * b, rel=REL
    )
    assert run_collective(p, "reduce_scatter", "ring").makespan_s == pytest.approx(
        (p - 1) * a + ((p - 1) / p) * n * b, rel=REL
    )
    assert run_collective(p, "alltoall", "pairwise").makespan_s == pytest.approx(
        (p - 1) * (a + (n / p) * b), rel=REL
    )
    assert run_collective(p, "barrier", "dissemination").makespan_s == pytest.approx(math.ceil(lg) * a, rel=REL)
    # Binomial reduce: floor(lg p) hops with eager sends (see expected_reduce).
    assert run_collective(p, "reduce", "binomial").makespan_s == pytest.approx(
        math.floor(lg) * (a + n * b), rel=REL
    )
    assert run_collective(p, "allreduce", "binomial").makespan_s == pytest.approx(
        (math.floor(lg) + math.ceil(lg)) * (a + n * b), rel=REL
    )
    if is_pow2(p):
        assert run_collective(p, "allgather", "recursive_doubling").makespan_s == pytest.approx(
            lg * a + ((p - 1) / p) * n * b, rel=REL
        )
        assert run_collective(p, "reduce_scatter", "recursive_halving").makespan_s == pytest.approx(
            lg * a + ((p - 1) / p) * n * b, rel=REL
        )
        assert run_collective(p, "broadcast", "scatter_allgather").makespan_s == pytest.approx(
            (lg + p - 1) * a + 2 * ((p - 1) / p) * n * b, rel=REL
        )
        assert run_collective(p, "reduce", "rabenseifner").makespan_s == pytest.approx(
            2 * lg * a + 2 * ((p - 1) / p) * n * b, rel=REL
        )
        assert run_collective(p, "allgather", "binomial").makespan_s == pytest.approx(
            lg * a + ((p - 1) / p) * n * b + lg * (a + n * b), rel=REL
        )


@pytest.mark.parametrize("p", RANKS)
@pytest.mark.parametrize("algorithm", ALGORITHMS["broadcast"])
@pytest.mark.parametrize("root", [0, 1])
def test_broadcast_matches_closed_form(algorithm, p, root):
    result = run_collective(p, "broadcast", algorithm, root=root)
    by_rel = expected_broadcast(algorithm, p)
    expected = [by_rel[(r - root) % p] for r in range(p)]
    assert collective_ends(result) == pytest.approx(expected, rel=REL)
    assert result.makespan_s == pytest.approx(max(expected), rel=REL)
    assert list(result.records["peer"]) == [root] * p


@pytest.mark.parametrize("p", RANKS)
@pytest.mark.parametrize("algorithm", ALGORITHMS["reduce"])
@pytest.mark.parametrize("root", [0, 1])
def test_reduce_matches_closed_form(algorithm, p, root):
    result = run_collective(p, "reduce", algorithm, root=root)
    root_end, makespan = expected_reduce(algorithm, p, root=root)
    ends = collective_ends(result)
    assert ends[root] == pytest.approx(root_end, rel=REL)
    assert result.makespan_s == pytest.approx(makespan, rel=REL)
    if algorithm == "ring":
        # Chain root+1 -> ... -> root: relative rank k >= 1 is done after k hops.
        expected = [(p - 1 if rel == 0 else rel) * hockney(N) for rel in ((r - root) % p for r in range(p))]
        assert ends == pytest.approx(expected, rel=REL)
    if algorithm == "binomial":
        by_rel = fan_in(p, lambda c: hockney(N))
        assert ends == pytest.approx([by_rel[(r - root) % p] for r in range(p)], rel=REL)


ROOTED = {"scatter": expected_scatter, "gather": expected_gather}


@pytest.mark.parametrize("p", RANKS)
@pytest.mark.parametrize("op,algorithm", [(op, alg) for op in ROOTED for alg in ALGORITHMS[op]])
@pytest.mark.parametrize("root", [0, 1])
def test_scatter_and_gather_match_closed_form(op, algorithm, p, root):
    result = run_collective(p, op, algorithm, root=root)
    by_rel = ROOTED[op](algorithm, p)
    expected = [by_rel[(r - root) % p] for r in range(p)]
    assert collective_ends(result) == pytest.approx(expected, rel=REL)
    assert result.makespan_s == pytest.approx(max(expected), rel=REL)
    assert list(result.records["peer"]) == [root] * p
    assert list(result.records["algorithm"]) == [algorithm] * p
    if algorithm == "linear":
        # Only the root's direct links carry bytes, one block each.
        link_bytes = dict(zip(result.per_link["link"], result.per_link["bytes"]))
        root_side = [f"n{root}->n{r}" if op == "scatter" else f"n{r}->n{root}" for r in range(p) if r != root]
        assert sorted(link_bytes) == sorted(root_side)
        assert [link_bytes[name] for name in root_side] == [N // p] * (p - 1)


@pytest.mark.parametrize("p", (2, 3, 4, 8))
@pytest.mark.parametrize("op", ["scatter", "gather"])
def test_linear_scatter_and_gather_share_the_roots_link_on_a_switch(op, p):
    # On a star the root's one link carries all p - 1 blocks at once, at B/(p-1)
    # each: every equal block finishes together, (p-1)/p n beta after the
    # start, and arrives two hops' latency later.  The binomial tree serializes
    # less on that link but pays ceil(lg p) latencies.
    topo = switch(p, link=LinkSpec(BANDWIDTH, latency_s=ALPHA))
    result = run_collective(p, op, "linear", root=1 % p, topology=topo)
    expected = 2 * ALPHA + ((p - 1) / p) * N * BETA
    assert collective_ends(result) == pytest.approx([expected] * p, rel=REL)
    link_bytes = dict(zip(result.per_link["link"], result.per_link["bytes"]))
    root_link = f"n{1 % p}->s0" if op == "scatter" else f"s0->n{1 % p}"
    assert link_bytes[root_link] == (p - 1) * (N // p)


@pytest.mark.parametrize("p", RANKS)
@pytest.mark.parametrize("algorithm", ALGORITHMS["alltoallv"])
def test_alltoallv_with_uneven_counts_matches_closed_form(algorithm, p):
    counts = uneven_counts(p)
    result = simulate(contention_free(p), alltoallv_programs(counts, algorithm))
    expected = expected_alltoallv(counts)
    assert collective_ends(result) == pytest.approx(expected, rel=REL)
    assert list(result.records["nbytes"]) == [sum(row) for row in counts]
    link_bytes = dict(zip(result.per_link["link"], result.per_link["bytes"]))
    assert link_bytes == {f"n{i}->n{j}": counts[i][j] for i in range(p) for j in range(p) if i != j}


def test_alltoallv_closed_form_by_hand():
    # 3 ranks; step k of rank r sends to r+k and receives from r-k.  Bytes:
    # 0->1 1 MB, 0->2 3 MB, 1->2 2 MB, 2->0 1 MB, 1->0 and 2->1 nothing.
    # Step 1: rank 0 sends 1 MB, gets 1 MB from 2: 1 ms + a; rank 1 sends 2 MB: 2 ms + a;
    #   rank 2 gets those 2 MB from 1: 2 ms + a.
    # Step 2: rank 0 sends 3 MB from 1 ms + a: 4 ms + 2a (rank 1's 0 B came at 2 ms + 2a);
    #   rank 1 sends and gets 0 B, both leaving at 2 ms + a: 2 ms + 2a;
    #   rank 2 gets rank 0's 3 MB: 4 ms + 2a.
    counts = [[0, MB, 3 * MB], [0, 0, 2 * MB], [MB, 0, 0]]
    result = simulate(contention_free(3), alltoallv_programs(counts))
    a, ms = ALPHA, 1e-3
    assert collective_ends(result) == pytest.approx([4 * ms + 2 * a, 2 * ms + 2 * a, 4 * ms + 2 * a], rel=REL)
    assert collective_ends(result) == pytest.approx(expected_alltoallv(counts), rel=REL)


def grouped_topology(groups: int, per_group: int, *, intra_bw, intra_lat, inter_bw, inter_lat) -> Topology:
    """Fully connected ranks; links inside a group differ from links between groups."""
    g = nx.Graph()
    names = []
    for k in range(groups):
        for i in range(per_group):
            name = f"g{k}r{i}"
            names.append(name)
            g.add_node(name, role="compute", flops_per_s=1e12, group=f"g{k}")
    for i, u in enumerate(names):
        for v in names[i + 1:]:
            same = g.nodes[u]["group"] == g.nodes[v]["group"]
            g.add_edge(
                u,
                v,
                bandwidth_bytes_per_s=intra_bw if same else inter_bw,
                latency_s=intra_lat if same else inter_lat,
            )
    return Topology(g, name="grouped")


@pytest.mark.parametrize("groups,per_group", [(2, 2), (2, 4), (3, 3), (4, 2), (3, 4), (5, 3)])
@pytest.mark.parametrize("inter", ["ring", "recursive_doubling", "rabenseifner", "binomial"])
def test_hierarchical_allreduce_closed_form(groups, per_group, inter):
    a1, bw1, a2, bw2 = 0.5e-6, 4e9, 3e-6, 1e9
    n = 1680 * 1000
    topo = grouped_topology(groups, per_group, intra_bw=bw1, intra_lat=a1, inter_bw=bw2, inter_lat=a2)
    assert topo.groups() == tuple(tuple(range(k * per_group, (k + 1) * per_group)) for k in range(groups))
    op = Collective("allreduce", n, algorithm="hierarchical", inter_algorithm=inter)
    result = simulate(topo, [[op]] * topo.nranks)

    def t_intra(nbytes):
        return a1 + nbytes / bw1

    # Binomial reduce inside the group (floor(lg q) hops, eager sends), the
    # leaders' all-reduce, binomial broadcast inside the group.
    reduce_s = floor_lg(per_group) * t_intra(n)
    g = groups
    b2 = 1 / bw2
    g_pof2 = 1 << floor_lg(g)
    inter_s = {
        "ring": 2 * (g - 1) * a2 + 2 * ((g - 1) / g) * n * b2,
        "recursive_doubling": (floor_lg(g) + (0 if is_pow2(g) else 2)) * (a2 + n * b2),
        "rabenseifner": (0 if is_pow2(g) else 2) * (a2 + n * b2)
        + 2 * floor_lg(g) * a2 + 2 * ((g_pof2 - 1) / g_pof2) * n * b2,
        "binomial": (floor_lg(g) + ceil_lg(g)) * (a2 + n * b2),
    }[inter]
    bcast = fan_out(per_group, lambda c: t_intra(n))
    # When each leader's part of the inter-leader all-reduce ends.
    inter_end = [reduce_s + inter_s] * g
    if inter in ("recursive_doubling", "rabenseifner") and not is_pow2(g):
        # Leaders above the fold skip the post-step of the whole vector.
        _, rem = folded(g)
        for k in range(2 * rem, g):
            inter_end[k] -= a2 + n * b2
    if inter == "binomial":
        lead_bcast = fan_out(g, lambda c: a2 + n * b2)
        inter_end = [reduce_s + floor_lg(g) * (a2 + n * b2) + lead_bcast[k] for k in range(g)]
    expected = [inter_end[r // per_group] + bcast[r % per_group] for r in range(topo.nranks)]
    assert collective_ends(result) == pytest.approx(expected, rel=REL)
    assert result.makespan_s == pytest.approx(reduce_s + inter_s + max(bcast), rel=REL)


def test_collective_of_nothing_still_costs_latency():
    # 0 bytes still travel, so a ring allreduce of nothing costs 2(p-1) alpha.
    result = run_collective(4, "allreduce", "ring", nbytes=0)
    assert result.makespan_s == pytest.approx(6 * ALPHA, rel=REL)


def test_single_rank_collective_is_free():
    g = nx.Graph()
    g.add_node("solo", role="compute", flops_per_s=1e9)
    topo = Topology(g)
    result = simulate(topo, [[Collective("allreduce", N), Compute(1e9)]])
    assert result.makespan_s == pytest.approx(1.0, rel=REL)
    assert list(result.records["end_s"]) == [0.0, pytest.approx(1.0, rel=REL)]


# ---------------------------------------------------------------------------
# Max-min fair sharing

MB = 1_000_000
FAST = 100e9


def dumbbell(pairs: int, *, bottleneck_bw=1e9, access_lat=(), core_lat=5e-6) -> Topology:
    """Senders s0.. -> switch A -> (bottleneck) -> switch B -> receivers d0..

    Ranks 0..pairs-1 are the senders, pairs..2*pairs-1 the receivers.  Sender
    i's access link has latency ``access_lat[i]`` (default 1 us).
    """
    g = nx.Graph()
    for i in range(pairs):
        g.add_node(f"s{i}", role="compute", flops_per_s=1e9)
    for i in range(pairs):
        g.add_node(f"d{i}", role="compute", flops_per_s=1e9)
    g.add_node("A", role="switch")
    g.add_node("B", role="switch")
    for i in range(pairs):
        lat = access_lat[i] if access_lat else 1e-6
        g.add_edge(f"s{i}", "A", bandwidth_bytes_per_s=FAST, latency_s=lat)
        g.add_edge("B", f"d{i}", bandwidth_bytes_per_s=FAST, latency_s=1e-6)
    g.add_edge("A", "B", bandwidth_bytes_per_s=bottleneck_bw, latency_s=core_lat)
    return Topology(g, name="dumbbell")


def recv_ends(result: RunResult, ranks) -> list[float]:
    recs = result.records
    out = []
    for r in ranks:
        row = recs[(recs["rank"] == r) & (recs["kind"] == "recv")]
        assert len(row) == 1
        out.append(float(row["end_s"].iloc[0]))
    return out


def test_four_flows_share_a_bottleneck_max_min_fairly():
    lat = (1e-6, 2e-6, 3e-6, 4e-6)
    topo = dumbbell(4, access_lat=lat)
    sizes = (1 * MB, 2 * MB, 4 * MB, 8 * MB)
    programs = [[Send(peer=4 + i, nbytes=s)] for i, s in enumerate(sizes)]
    programs += [[Recv(peer=i, nbytes=s)] for i, s in enumerate(sizes)]
    result = simulate(topo, programs)
    # 4 flows at 250 MB/s: 1 MB done at 4 ms; 3 at 333 MB/s: 2 MB done at 7 ms;
    # 2 at 500 MB/s: 4 MB done at 11 ms; the 8 MB flow alone: 15 ms.
    route_lat = [lat[i] + 5e-6 + 1e-6 for i in range(4)]
    expected = [t + route_lat[i] for i, t in enumerate((4e-3, 7e-3, 11e-3, 15e-3))]
    assert recv_ends(result, range(4, 8)) == pytest.approx(expected, rel=REL)
    sends = result.records[result.records["kind"] == "send"]
    assert list(sends["end_s"]) == pytest.approx(expected, rel=REL)  # a send completes on delivery
    assert (result.records["start_s"] == 0.0).all()
    assert result.makespan_s == pytest.approx(expected[-1], rel=REL)
    link_bytes = dict(zip(result.per_link["link"], result.per_link["bytes"]))
    assert link_bytes["A->B"] == sum(sizes)
    assert "B->A" not in link_bytes


def chain_topology() -> Topology:
    """X -L1(1 GB/s)- Y -L2(3 GB/s)- Z, ranks hanging off each switch on fast links."""
    g = nx.Graph()
    for name in ("a", "c", "e", "b", "d", "f"):
        g.add_node(name, role="compute", flops_per_s=1e9)
    for name in ("X", "Y", "Z"):
        g.add_node(name, role="switch")
    g.add_edge("X", "Y", bandwidth_bytes_per_s=1e9, latency_s=2e-6)
    g.add_edge("Y", "Z", bandwidth_bytes_per_s=3e9, latency_s=3e-6)
    for rank_node, sw in (("a", "X"), ("c", "X"), ("e", "Y"), ("b", "Y"), ("d", "Z"), ("f", "Z")):
        g.add_edge(rank_node, sw, bandwidth_bytes_per_s=FAST, latency_s=1e-6)
    return Topology(g, name="chain")


def test_max_min_with_unequal_shares():
    # f1: a -> b over L1; f2: c -> d over L1 and L2; f3: e -> f over L2.
    # Progressive filling: L1 is the bottleneck (1 GB/s over 2 flows), so
    # f1 = f2 = 0.5 GB/s and f3 gets the rest of L2, 2.5 GB/s.
    # f1 (1 MB) leaves at 2 ms; f3 has 5 of 10 MB left.  Then f2 alone on L1
    # gets 1 GB/s, f3 2 GB/s: f2's last 1 MB leaves at 3 ms, f3 has 3 MB
    # left, alone at 3 GB/s: done at 4 ms.
    topo = chain_topology()
    a, c, e, b, d, f = range(6)
    programs = [[] for _ in range(6)]
    for src, dst, size in ((a, b, 1 * MB), (c, d, 2 * MB), (e, f, 10 * MB)):
        programs[src].append(Send(peer=dst, nbytes=size))
        programs[dst].append(Recv(peer=src, nbytes=size))
    result = simulate(topo, programs)
    lat_f1 = 1e-6 + 2e-6 + 1e-6
    lat_f2 = 1e-6 + 2e-6 + 3e-6 + 1e-6
    lat_f3 = 1e-6 + 3e-6 + 1e-6
    expected = [2e-3 + lat_f1, 3e-3 + lat_f2, 4e-3 + lat_f3]
    assert recv_ends(result, (b, d, f)) == pytest.approx(expected, rel=REL)


def test_a_later_flow_slows_an_ongoing_one():
    # Flow 0 (4 MB) runs alone at 1 GB/s for 1 ms, then flow 1 (1 MB) joins:
    # both at 0.5 GB/s; flow 1 leaves at 3 ms, flow 0 has 2 MB left, alone
    # again: done at 5 ms.
    topo = dumbbell(2)
    programs = [
        [Send(peer=2, nbytes=4 * MB)],
        [Compute(1e6), Send(peer=3, nbytes=1 * MB)],  # 1 Mflop at 1 Gflop/s = 1 ms
        [Recv(peer=0, nbytes=4 * MB)],
        [Recv(peer=1, nbytes=1 * MB)],
    ]
    result = simulate(topo, programs)
    route = 1e-6 + 5e-6 + 1e-6
    assert recv_ends(result, (2, 3)) == pytest.approx([5e-3 + route, 3e-3 + route], rel=REL)
    send1 = result.records[(result.records["rank"] == 1) & (result.records["kind"] == "send")]
    assert float(send1["start_s"].iloc[0]) == pytest.approx(1e-3, rel=REL)


def test_flows_in_opposite_directions_do_not_share():
    # Links are full duplex: A->B and B->A are separate directed links.
    topo = dumbbell(2)
    programs = [
        [Send(peer=2, nbytes=MB)],
        [Recv(peer=3, nbytes=MB)],
        [Recv(peer=0, nbytes=MB)],
        [Send(peer=1, nbytes=MB)],
    ]
    result = simulate(topo, programs)
    route = 1e-6 + 5e-6 + 1e-6
    assert recv_ends(result, (2, 1)) == pytest.approx([1e-3 + route] * 2, rel=REL)


def test_messages_between_a_pair_are_fifo_and_matched_in_order():
    topo = dumbbell(1)
    programs = [
        [Send(peer=1, nbytes=MB), Send(peer=1, nbytes=2 * MB)],
        [Recv(peer=0, nbytes=MB), Recv(peer=0, nbytes=2 * MB)],
    ]
    result = simulate(topo, programs)
    route = 1e-6 + 5e-6 + 1e-6
    # Blocking sends: the second starts when the first is delivered.
    recvs = result.records[result.records["rank"] == 1]
    assert list(recvs["end_s"]) == pytest.approx([1e-3 + route, 1e-3 + route + 2e-3 + route], rel=REL)


# ---------------------------------------------------------------------------
# Determinism and stragglers

DP = DataParallelStep(
    parameters=1_000_000,
    bytes_per_parameter=4,
    flops_per_sample=1e9,
    batch_per_rank=4,
    bucket_bytes=1_500_000,
    steps=2,
)


def dp_run(seed: int, stragglers: StragglerSpec | None, p: int = 4) -> RunResult:
    topo = fully_connected(p, link=LinkSpec(BANDWIDTH, latency_s=ALPHA), node=NodeSpec(flops_per_s=1e12))
    return Simulator(topo, DP.programs(p), seed=seed, stragglers=stragglers).run()


LOGNORMAL = StragglerSpec(kind="lognormal", params={"sigma": 0.3})


def test_same_seed_same_records_bit_for_bit():
    first, second = dp_run(7, LOGNORMAL), dp_run(7, LOGNORMAL)
    pd.testing.assert_frame_equal(first.records, second.records, check_exact=True)
    pd.testing.assert_frame_equal(first.per_rank, second.per_rank, check_exact=True)
    assert first.makespan_s == second.makespan_s


def test_different_seed_differs_with_stragglers():
    first, second = dp_run(7, LOGNORMAL), dp_run(8, LOGNORMAL)
    assert not first.records["end_s"].equals(second.records["end_s"])
    assert first.makespan_s != second.makespan_s


def test_seed_is_irrelevant_without_stragglers():
    pd.testing.assert_frame_equal(dp_run(7, None).records, dp_run(8, None).records, check_exact=True)
    none = StragglerSpec(kind="none")
    pd.testing.assert_frame_equal(dp_run(1, none).records, dp_run(2, None).records, check_exact=True)


def compute_durations(result: RunResult, rank: int) -> np.ndarray:
    recs = result.records
    mine = recs[(recs["rank"] == rank) & (recs["kind"] == "compute")]
    return (mine["end_s"] - mine["start_s"]).to_numpy()


def nominal_durations(rank: int, p: int = 4) -> np.ndarray:
    return compute_durations(dp_run(0, None, p), rank)


def test_node_scope_draws_one_factor_per_rank():
    spec = StragglerSpec(kind="lognormal", params={"sigma": 0.3}, scope="node")
    result = dp_run(3, spec)
    factors = result.per_rank["slowdown"].to_numpy()
    assert len(set(factors)) == 4 and (factors > 0).all()
    for rank in range(4):
        ratio = compute_durations(result, rank) / nominal_durations(rank)
        assert ratio == pytest.approx([factors[rank]] * len(ratio), rel=REL)


def test_operation_scope_draws_per_compute():
    result = dp_run(3, LOGNORMAL)
    ratio = compute_durations(result, 0) / nominal_durations(0)
    assert len(set(np.round(ratio, 12))) == len(ratio)  # every op its own draw
    assert result.per_rank["slowdown"].isna().all()


def test_stragglers_limited_to_listed_ranks():
    spec = StragglerSpec(kind="lognormal", params={"sigma": 0.3}, ranks=(3,))
    result = dp_run(5, spec)
    for rank in range(3):
        assert compute_durations(result, rank).tolist() == pytest.approx(nominal_durations(rank).tolist(), rel=REL)
    assert not np.array_equal(compute_durations(result, 3), nominal_durations(3))


def test_fixed_factor_doubles_compute_time_exactly():
    spec = StragglerSpec(kind="fixed", params={"factor": 2}, ranks=(3,))
    result = dp_run(0, spec)
    nominal = dp_run(0, None)
    assert compute_durations(result, 3).tolist() == pytest.approx((2 * nominal_durations(3)).tolist(), rel=REL)
    # Doubling is exact in binary floating point, and so is the sum of the doubled durations.
    assert result.per_rank["compute_s"][3] == 2 * nominal.per_rank["compute_s"][3]
    assert result.per_rank["compute_s"][0] == nominal.per_rank["compute_s"][0]
    # The synchronous step waits for the slow rank: everyone ends later.
    assert result.makespan_s > nominal.makespan_s


def test_rank_streams_do_not_depend_on_rank_count():
    # A rank's draws come from its own stream: rank 1's slowdowns with 2 ranks
    # equal those with 4 ranks.
    topo2 = fully_connected(2, link=LinkSpec(BANDWIDTH, latency_s=ALPHA), node=NodeSpec(flops_per_s=1e12))
    topo4 = fully_connected(4, link=LinkSpec(BANDWIDTH, latency_s=ALPHA), node=NodeSpec(flops_per_s=1e12))
    prog = [Compute(1e9), Compute(1e9), Compute(1e9)]
    r2 = simulate(topo2, [prog] * 2, seed=11, stragglers=LOGNORMAL)
    r4 = simulate(topo4, [prog] * 4, seed=11, stragglers=LOGNORMAL)
    np.testing.assert_array_equal(compute_durations(r2, 1), compute_durations(r4, 1))


# ---------------------------------------------------------------------------
# Energy by hand


def energy_topology() -> Topology:
    g = nx.Graph()
    g.add_node("n0", role="compute", flops_per_s=1e9, idle_power_w=10.0, busy_power_w=50.0)
    g.add_node("n1", role="compute", flops_per_s=1e9, idle_power_w=20.0, busy_power_w=70.0)
    g.add_node("sw", role="switch", idle_power_w=30.0, busy_power_w=99.0)
    g.add_edge("n0", "sw", bandwidth_bytes_per_s=1e9, latency_s=1e-6, energy_per_byte_j=1e-9)
    g.add_edge("sw", "n1", bandwidth_bytes_per_s=1e9, latency_s=1e-6, energy_per_byte_j=2e-9)
    return Topology(g, name="energy")


ENERGY_PROGRAMS = [[Compute(2e6), Send(peer=1, nbytes=MB)], [Recv(peer=0, nbytes=MB)]]


@pytest.mark.parametrize("count_idle", [True, False])
def test_energy_by_hand(count_idle):
    result = simulate(energy_topology(), ENERGY_PROGRAMS, count_idle_energy=count_idle)
    makespan = 2e-3 + 1e-3 + 2e-6  # compute, 1 MB at 1 GB/s, two 1 us hops
    assert result.makespan_s == pytest.approx(makespan, rel=REL)
    idle = 1.0 if count_idle else 0.0
    rank0 = 50.0 * 2e-3 + idle * 10.0 * (makespan - 2e-3)
    rank1 = idle * 20.0 * makespan
    switch = idle * 30.0 * makespan  # a switch draws idle power only
    links = MB * 1e-9 + MB * 2e-9
    assert list(result.per_rank["energy_j"]) == pytest.approx([rank0, rank1], rel=REL)
    per_link = dict(zip(result.per_link["link"], result.per_link["energy_j"]))
    assert per_link == pytest.approx({"n0->sw": MB * 1e-9, "sw->n1": MB * 2e-9}, rel=REL)
    assert list(result.per_link["bytes"]) == [MB, MB]
    per_node = dict(zip(result.per_node["node"], result.per_node["energy_j"]))
    assert per_node == pytest.approx({"n0": rank0, "n1": rank1, "sw": switch}, rel=REL)
    s = result.summary
    assert s["node_energy_j"] == pytest.approx(rank0 + rank1, rel=REL)
    assert s["other_node_energy_j"] == pytest.approx(switch, rel=REL)
    assert s["link_energy_j"] == pytest.approx(links, rel=REL)
    assert s["total_energy_j"] == pytest.approx(rank0 + rank1 + switch + links, rel=REL)
    assert result.per_rank["compute_s"].tolist() == pytest.approx([2e-3, 0.0], rel=REL)


def test_energy_of_records():
    result = simulate(energy_topology(), ENERGY_PROGRAMS)
    recs = result.records
    compute, send, recv = recs["energy_j"].tolist()
    assert compute == pytest.approx(50.0 * 2e-3, rel=REL)
    # A send is charged idle power while it lasts plus the bytes it moved.
    assert send == pytest.approx(10.0 * (1e-3 + 2e-6) + MB * 3e-9, rel=REL)
    assert recv == pytest.approx(20.0 * (2e-3 + 1e-3 + 2e-6), rel=REL)


# ---------------------------------------------------------------------------
# Data-parallel step (DDP-like bucket overlap)

F = 1e12  # flop/s


def dp_topology(p: int = 2) -> Topology:
    return fully_connected(p, link=LinkSpec(BANDWIDTH, latency_s=ALPHA), node=NodeSpec(flops_per_s=F))


def ring_allreduce_s(nbytes: int, p: int = 2) -> float:
    return 2 * (p - 1) * ALPHA + 2 * ((p - 1) / p) * nbytes * BETA


def dp_case(**kwargs) -> tuple[DataParallelStep, float, float]:
    base = dict(parameters=1_000_000, bytes_per_parameter=4, flops_per_sample=1.5e10, batch_per_rank=4)
    base.update(kwargs)
    w = DataParallelStep(**base)
    micro = w.flops_per_sample * w.batch_per_rank
    fwd = micro * w.forward_fraction / F
    bwd = micro * (1 - w.forward_fraction) / F
    return w, fwd, bwd


def check_time_accounting(result: RunResult) -> None:
    pr = result.per_rank
    total = pr["compute_s"] + pr["comm_s"] + pr["wait_s"]
    assert total.tolist() == pytest.approx([result.makespan_s] * len(pr), rel=REL)


def test_dp_one_bucket_overlap():
    w, fwd, bwd = dp_case(bucket_bytes=4_000_000)
    assert w.bucket_sizes() == [4_000_000]
    result = simulate(dp_topology(), w.programs(2))
    assert result.makespan_s == pytest.approx(fwd + bwd + ring_allreduce_s(4_000_000), rel=REL)
    check_time_accounting(result)
    assert result.per_rank["comm_s"].tolist() == [0.0, 0.0]  # all of it is waiting on the stream
    assert result.per_rank["wait_s"].tolist() == pytest.approx([ring_allreduce_s(4_000_000)] * 2, rel=REL)


def test_dp_several_buckets_hide_all_but_the_last():
    w, fwd, bwd = dp_case(bucket_bytes=1_500_000)
    sizes = w.bucket_sizes()
    assert sizes == [1_500_000, 1_500_000, 1_000_000]
    # Each bucket's all-reduce (~1.5 ms) is shorter than the next bucket's
    # backward (~15 ms), so only the last one shows.
    assert ring_allreduce_s(1_500_000) < bwd * 1_000_000 / 4_000_000
    result = simulate(dp_topology(), w.programs(2))
    assert result.makespan_s == pytest.approx(fwd + bwd + ring_allreduce_s(sizes[-1]), rel=REL)
    check_time_accounting(result)
    recs = result.records
    ars = recs[(recs["rank"] == 0) & (recs["kind"] == "allreduce")]
    # Each bucket's all-reduce starts when its backward slice ends.
    bwd_ends = fwd + bwd * np.cumsum(sizes) / sum(sizes)
    assert ars["start_s"].tolist() == pytest.approx(bwd_ends.tolist(), rel=REL)
    assert (ars["end_s"] - ars["start_s"]).tolist() == pytest.approx(
        [ring_allreduce_s(s) for s in sizes], rel=REL
    )


def test_dp_comm_bound_buckets_queue_on_one_stream():
    # Slow network: all-reduces (each > backward slice) run back to back on the
    # stream, starting after the first slice.
    w, fwd, bwd = dp_case(bucket_bytes=1_000_000, flops_per_sample=1.5e8)
    topo = fully_connected(2, link=LinkSpec(1e8, latency_s=ALPHA), node=NodeSpec(flops_per_s=F))
    result = simulate(topo, w.programs(2))
    ar = 2 * ALPHA + 1_000_000 / 1e8  # p = 2: 2(a + (n/2) b)
    assert ar > bwd / 4
    assert result.makespan_s == pytest.approx(fwd + bwd / 4 + 4 * ar, rel=REL)
    check_time_accounting(result)


def test_dp_without_overlap_sums_the_allreduces():
    w, fwd, bwd = dp_case(bucket_bytes=1_500_000, overlap=False)
    result = simulate(dp_topology(), w.programs(2))
    comm = sum(ring_allreduce_s(s) for s in w.bucket_sizes())
    assert result.makespan_s == pytest.approx(fwd + bwd + comm, rel=REL)
    check_time_accounting(result)
    assert result.per_rank["comm_s"].tolist() == pytest.approx([comm] * 2, rel=REL)
    assert result.per_rank["compute_s"].tolist() == pytest.approx([fwd + bwd] * 2, rel=REL)


@pytest.mark.parametrize("overlap", [True, False])
def test_dp_gradient_accumulation_multiplies_compute(overlap):
    w, fwd, bwd = dp_case(bucket_bytes=4_000_000, accumulation_steps=3, overlap=overlap)
    result = simulate(dp_topology(), w.programs(2))
    assert result.per_rank["compute_s"].tolist() == pytest.approx([3 * (fwd + bwd)] * 2, rel=REL)
    assert result.makespan_s == pytest.approx(3 * (fwd + bwd) + ring_allreduce_s(4_000_000), rel=REL)
    # Only the last micro-batch all-reduces (no_sync on the others).
    assert (result.records["kind"] == "allreduce").sum() == 2
    check_time_accounting(result)


def test_dp_steps_repeat():
    w, fwd, bwd = dp_case(bucket_bytes=1_500_000, steps=3, optimizer_flops_per_parameter=10.0)
    result = simulate(dp_topology(), w.programs(2))
    step = fwd + bwd + ring_allreduce_s(1_000_000) + 10.0 * 1_000_000 / F
    assert result.makespan_s == pytest.approx(3 * step, rel=REL)
    check_time_accounting(result)


def test_time_accounting_with_uneven_ranks():
    # Rank 1 ends early and idles until the makespan: that counts as waiting.
    topo = dp_topology(2)
    result = simulate(topo, [[Compute(1e9), Send(peer=1, nbytes=0)], [Recv(peer=0, nbytes=0)]] + [])
    check_time_accounting(result)
    result = simulate(topo, [[Compute(3e9)], [Compute(1e9)]])
    assert result.per_rank["wait_s"].tolist() == pytest.approx([0.0, 2e-3], rel=REL)
    check_time_accounting(result)


# ---------------------------------------------------------------------------
# Deadlocks and mismatches


def test_deadlock_names_ranks_and_what_they_wait_for():
    topo = fully_connected(3, link=LinkSpec(BANDWIDTH, latency_s=ALPHA), node=NodeSpec(flops_per_s=1e9))
    programs = [
        [Compute(1e6), Recv(peer=1, nbytes=100), Send(peer=1, nbytes=100)],
        [Compute(2e6), Recv(peer=0, nbytes=200, tag=5), Send(peer=0, nbytes=200, tag=5)],
        [Compute(1e6)],
    ]
    with pytest.raises(DeadlockError) as info:
        simulate(topo, programs)
    exc = info.value
    msg = str(exc)
    assert isinstance(exc, SimulationError)
    assert "2 rank(s)" in msg
    assert "rank 0 waits in op 1 (recv) for a message of 100 B from rank 1" in msg
    assert "rank 1 waits in op 1 (recv) for a message of 200 B from rank 0 (tag 5)" in msg
    assert "rank 2" not in msg
    partial = exc.partial
    assert isinstance(partial, RunResult)
    assert partial.records[["rank", "op_index", "kind"]].values.tolist() == [
        [0, 0, "compute"],
        [1, 0, "compute"],
        [2, 0, "compute"],
    ]
    assert partial.records["end_s"].tolist() == pytest.approx([1e-3, 2e-3, 1e-3], rel=REL)
    assert partial.makespan_s == pytest.approx(2e-3, rel=REL)


def test_deadlock_inside_a_collective():
    # Rank 1 waits for a message rank 0 never sends, so it never joins the all-reduce.
    topo = contention_free(2)
    with pytest.raises(DeadlockError) as info:
        simulate(topo, [[Collective("allreduce", 1000)], [Recv(peer=0, nbytes=10), Collective("allreduce", 1000)]])
    assert "rank 0 waits in op 0 (allreduce)" in str(info.value)
    assert "collective #1" in str(info.value)


def test_a_rank_missing_from_a_collective_is_refused_before_the_run():
    topo = contention_free(2)
    with pytest.raises(ValueError, match=r"the world: rank 1 issues 0 collective\(s\) on it but rank 0 issues 1"):
        simulate(topo, [[Collective("allreduce", 1000)], [Compute(1e3)]])


@pytest.mark.parametrize("recv_first", [True, False])
def test_size_mismatch_names_the_ranks(recv_first):
    topo = fully_connected(2, link=LinkSpec(BANDWIDTH, latency_s=ALPHA), node=NodeSpec(flops_per_s=1e9))
    delay = [Compute(1e6)]
    send = [Send(peer=1, nbytes=100)]
    recv = [Recv(peer=0, nbytes=200)]
    programs = [(delay if recv_first else []) + send, ([] if recv_first else delay) + recv]
    with pytest.raises(SimulationError, match=r"rank 1 .* 200 B from rank 0 .* 100 B"):
        simulate(topo, programs)


# ---------------------------------------------------------------------------
# Validation before the run


@pytest.mark.parametrize(
    "programs,pattern",
    [
        ([[Send(peer=5, nbytes=1)], []], r"rank 0 op 0 \(send\): peer 5 is not a rank \(there are 2\)"),
        ([[], [Compute(1), Recv(peer=2, nbytes=1)]], r"rank 1 op 1 \(recv\): peer 2 is not a rank"),
        ([[Send(peer=0, nbytes=1)], []], r"rank 0 op 0 \(send\): a rank cannot send to itself"),
        ([[Wait("h")], []], r"rank 0 op 0 \(wait\): waits for unknown handle\(s\) h"),
        (
            [[Collective("allreduce", 8, algorithm="bogus")]] * 2,
            r"rank 0 op 0 \(allreduce\): allreduce: unknown algorithm 'bogus'",
        ),
        (
            [[Collective("broadcast", 8, algorithm="rabenseifner")]] * 2,
            r"rank 0 op 0 \(broadcast\): broadcast: unknown algorithm 'rabenseifner'",
        ),
        (
            [[Collective("allreduce", 8, algorithm="hierarchical")]] * 2,
            r"rank 0 op 0 \(allreduce\): allreduce hierarchical: needs groups",
        ),
        ([[Collective("reduce", 8, root=2)]] * 2, r"reduce: root 2 out of range for 2 ranks"),
        (
            [[Collective("allreduce", 8, blocking=False, handle="h"), Collective("allreduce", 8, blocking=False, handle="h")]] * 2,
            r"rank 0 op 1 \(allreduce\): handle 'h' is already in use",
        ),
        ([[]], r"1 rank programs but the topology has 2 ranks"),
    ],
)
def test_invalid_programs_are_rejected_before_running(programs, pattern):
    with pytest.raises(ValueError, match=pattern):
        Simulator(contention_free(2), programs)


def test_hierarchical_needs_groups_on_every_rank_partition():
    topo = grouped_topology(2, 2, intra_bw=1e9, intra_lat=1e-6, inter_bw=1e9, inter_lat=1e-6)
    op = Collective("allreduce", 8, algorithm="hierarchical", inter_algorithm="bogus")
    with pytest.raises(ValueError, match="unknown inter_algorithm 'bogus'"):
        Simulator(topo, [[op]] * 4)


def limited_access_topology() -> Topology:
    """a -(0.5 GB/s)- S -(1 GB/s)- T - x;  b -(fast)- S;  T - y (fast); no latency."""
    g = nx.Graph()
    for name in ("a", "b", "x", "y"):
        g.add_node(name, role="compute", flops_per_s=1e9)
    g.add_node("S", role="switch")
    g.add_node("T", role="switch")
    g.add_edge("a", "S", bandwidth_bytes_per_s=0.5e9)
    g.add_edge("b", "S", bandwidth_bytes_per_s=FAST)
    g.add_edge("S", "T", bandwidth_bytes_per_s=1e9)
    g.add_edge("T", "x", bandwidth_bytes_per_s=FAST)
    g.add_edge("T", "y", bandwidth_bytes_per_s=FAST)
    return Topology(g, name="limited_access")


def test_bandwidth_is_returned_when_a_flow_that_kept_its_rate_ends():
    # Flow A (a -> x, 1 MB) is limited to 0.5 GB/s by its access link.  At
    # 1 ms flow B (b -> y, 2 MB) joins on S->T: max-min gives A 0.5 and B
    # 0.5 GB/s, so A's rate does not change.  A's last byte leaves at 2 ms
    # (B has 1.5 MB left); B should then get all of S->T, 1 GB/s, and end at
    # 3.5 ms.
    programs = [
        [Send(peer=2, nbytes=MB)],
        [Compute(1e6), Send(peer=3, nbytes=2 * MB)],
        [Recv(peer=0, nbytes=MB)],
        [Recv(peer=1, nbytes=2 * MB)],
    ]
    result = simulate(limited_access_topology(), programs)
    assert recv_ends(result, (2, 3)) == pytest.approx([2e-3, 3.5e-3], rel=REL)


def test_bandwidth_is_returned_when_a_rate_limited_flow_changes_rate():
    # The same shape, but A's access link (1.5 GB/s) does not limit it: A runs
    # at 1 GB/s alone, drops to 0.5 GB/s when B joins at 1 ms, and B gets A's
    # share back when A ends.
    g = nx.Graph()
    for name in ("a", "b", "x", "y"):
        g.add_node(name, role="compute", flops_per_s=1e9)
    g.add_node("S", role="switch")
    g.add_node("T", role="switch")
    g.add_edge("a", "S", bandwidth_bytes_per_s=1.5e9)
    g.add_edge("b", "S", bandwidth_bytes_per_s=FAST)
    g.add_edge("S", "T", bandwidth_bytes_per_s=1e9)
    g.add_edge("T", "x", bandwidth_bytes_per_s=FAST)
    g.add_edge("T", "y", bandwidth_bytes_per_s=FAST)
    programs = [
        [Send(peer=2, nbytes=2 * MB)],
        [Compute(1e6), Send(peer=3, nbytes=2 * MB)],
        [Recv(peer=0, nbytes=2 * MB)],
        [Recv(peer=1, nbytes=2 * MB)],
    ]
    # A: 1 MB by 1 ms at 1 GB/s, then 0.5 GB/s: last 1 MB by 3 ms.  B: 1 MB
    # by 3 ms, then alone at 1 GB/s: 4 ms.
    result = simulate(Topology(g), programs)
    assert recv_ends(result, (2, 3)) == pytest.approx([3e-3, 4e-3], rel=REL)


def test_negative_user_tags_are_rejected():
    # Negative tags are the collectives'; a user message with one could be
    # taken by rank 1's first all-reduce as its ring step.
    topo = contention_free(2)
    with pytest.raises(ValueError, match="tag"):
        programs = [
            [Send(peer=1, nbytes=8, tag=-1), Collective("allreduce", 16)],
            [Collective("allreduce", 16), Recv(peer=0, nbytes=8, tag=-1)],
        ]
        Simulator(topo, programs)
