"""Collective lowerings, run for real on numpy buffers by a reference interpreter.

The interpreter executes the steps of all ranks with rendezvous semantics (a
send completes only once the peer has posted the matching receive), matching
sends to receives first-in first-out per ordered pair of ranks, so a lowering
that passes here cannot deadlock or mismatch in a real MPI run.  Buffers are
int64 arrays with one element per "byte", each rank's input distinct.  A
latency-only clock (a transfer takes one unit once both sides have posted it)
counts the rounds on the critical path.
"""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest

from workloads.collectives import (
    ALGORITHMS,
    SEMANTICS,
    alltoall_output_layout,
    block_layout,
    check,
    lower,
    scatter_layout,
)
from workloads.ops import COLLECTIVES, Collective, Step, Transfer

RANKS = (1, 2, 3, 4, 5, 6, 7, 8, 12, 16)
SIZES = (0, 1, 7, 37, 64)
ALLREDUCE_FLAT = tuple(a for a in ALGORITHMS["allreduce"] if a != "hierarchical")


# ---------------------------------------------------------------------------
# Reference interpreter


class Run:
    def __init__(self, inputs, final, rounds, steps, sent_nbytes):
        self.inputs = inputs
        self.final = final
        self.rounds = rounds
        self.steps = steps
        self.sent_nbytes = sent_nbytes


def _overlaps(a, b):
    return a[0] < b[1] and b[0] < a[1]


def _check_step_shape(step, rank, p, in_place):
    assert isinstance(step, Step)
    assert step.sends or step.recvs, f"rank {rank}: empty step"
    for t in step.sends + step.recvs:
        assert isinstance(t, Transfer)
        assert 0 <= t.peer < p and t.peer != rank, f"rank {rank}: bad peer {t.peer}"
        assert t.nbytes >= 0 and t.offset >= 0
    recv_spans = [(t.offset, t.offset + t.nbytes) for t in step.recvs]
    for i, a in enumerate(recv_spans):
        for b in recv_spans[i + 1 :]:
            assert not _overlaps(a, b), f"rank {rank}: overlapping receives in {step}"
    if in_place:
        # An overwriting receive must not land on bytes the same step sends.
        for t in step.recvs:
            if t.reduce:
                continue
            for s in step.sends:
                assert not _overlaps(
                    (t.offset, t.offset + t.nbytes), (s.offset, s.offset + s.nbytes)
                ), f"rank {rank}: receive overwrites a send of the same step {step}"


def alltoallv_ops(counts, algorithm="pairwise"):
    """Each rank's alltoallv: ``counts[i][j]`` bytes go from rank i to rank j."""
    p = len(counts)
    return [Collective("alltoallv", algorithm=algorithm, send_nbytes=tuple(counts[i]),
                       recv_nbytes=tuple(counts[j][i] for j in range(p))) for i in range(p)]


def uneven_counts(n, p):
    """Distinct, uneven alltoallv counts (all 0 when n is 0; a rank's own count too)."""
    return [[0 if n == 0 else n + 3 * i + 2 * j + (i * j) % 5 for j in range(p)] for i in range(p)]


def collective(op_name, n, algorithm, p, root=0):
    """Every rank's op: the same one, except alltoallv, whose counts are per rank."""
    if op_name == "alltoallv":
        return alltoallv_ops(uneven_counts(n, p), algorithm)
    return [Collective(op_name, n, algorithm, root=root)] * p


def execute(op, p, groups=None, fill=None):
    """Run every rank's lowering of ``op`` (one op, or a list of one per rank).

    Rank r's input is distinct per element, or ``fill(r)`` everywhere if given.
    """
    ops = list(op) if isinstance(op, (list, tuple)) else [op] * p
    op = ops[0]
    n = op.nbytes
    if op.op == "alltoallv":
        inputs = [np.full(o.nbytes, fill(r), dtype=np.int64) if fill else
                  (r + 1) * 1_000_000 + np.arange(o.nbytes, dtype=np.int64) for r, o in enumerate(ops)]
    else:
        inputs = [np.full(n, fill(r), dtype=np.int64) if fill else
                  (r + 1) * 1_000_000 + np.arange(n, dtype=np.int64) for r in range(p)]
    bufs = [x.copy() for x in inputs]
    edges = [o for o, _ in block_layout(n, p)] + [n]
    if op.op == "allgather":
        for r in range(p):
            bufs[r][:] = -1
            bufs[r][edges[r] : edges[r + 1]] = inputs[r][edges[r] : edges[r + 1]]
    elif op.op in ("broadcast", "scatter"):
        for r in range(p):
            if r != op.root:
                bufs[r][:] = -1
    elif op.op == "gather":
        # Rank r contributes only its block, where scatter_layout puts it.
        layout = scatter_layout(n, p, op.root)
        for r in range(p):
            offset, size = layout[r]
            bufs[r][:] = -1
            bufs[r][offset : offset + size] = inputs[r][offset : offset + size]
    alltoall = op.op in ("alltoall", "alltoallv")
    if op.op == "alltoall":
        outs = []
        for r in range(p):
            layout = alltoall_output_layout(n, r, p)
            out = np.full(sum(size for _, size in layout), -1, dtype=np.int64)
            own_offset, own_size = layout[r]
            out[own_offset : own_offset + own_size] = inputs[r][edges[r] : edges[r + 1]]
            outs.append(out)
    elif op.op == "alltoallv":
        # The own block is a local copy: send prefix sums to receive prefix sums.
        outs = []
        for r, o in enumerate(ops):
            out = np.full(sum(o.recv_nbytes), -1, dtype=np.int64)
            src, dst = sum(o.send_nbytes[:r]), sum(o.recv_nbytes[:r])
            out[dst : dst + o.recv_nbytes[r]] = inputs[r][src : src + o.send_nbytes[r]]
            outs.append(out)
    read = inputs if alltoall else bufs
    write = outs if alltoall else bufs

    sends = defaultdict(list)  # (src, dst) -> [(nbytes, data, start)]
    recvs = defaultdict(list)  # (src, dst) -> [(nbytes, start)]
    gens = [lower(ops[r], r, p, groups) for r in range(p)]
    current = [None] * p
    clock = [0] * p
    steps = [0] * p
    sent_nbytes = [0] * p
    done = [False] * p

    def post(r):
        step = next(gens[r], None)
        if step is None:
            done[r] = True
            current[r] = None
            return
        _check_step_shape(step, r, p, not alltoall)
        steps[r] += 1
        start = clock[r]
        posted_sends, posted_recvs = [], []
        for t in step.sends:
            assert t.offset + t.nbytes <= len(read[r])
            pair = (r, t.peer)
            posted_sends.append((pair, len(sends[pair])))
            sends[pair].append((t.nbytes, read[r][t.offset : t.offset + t.nbytes].copy(), start))
            sent_nbytes[r] += t.nbytes
        for t in step.recvs:
            assert t.offset + t.nbytes <= len(write[r])
            pair = (t.peer, r)
            posted_recvs.append((pair, len(recvs[pair]), t))
            recvs[pair].append((t.nbytes, start))
        current[r] = (start, posted_sends, posted_recvs)

    def try_complete(r):
        start, posted_sends, posted_recvs = current[r]
        end = start
        for pair, k in posted_sends:
            if len(recvs[pair]) <= k:
                return False
            end = max(end, max(start, recvs[pair][k][1]) + 1)
        for pair, k, _ in posted_recvs:
            if len(sends[pair]) <= k:
                return False
            end = max(end, max(start, sends[pair][k][2]) + 1)
        for pair, k, t in posted_recvs:
            nbytes, data, _ = sends[pair][k]
            assert nbytes == t.nbytes, f"size mismatch on {pair} message {k}: sent {nbytes}, received {t.nbytes}"
            if t.reduce:
                write[r][t.offset : t.offset + t.nbytes] += data
            else:
                write[r][t.offset : t.offset + t.nbytes] = data
        clock[r] = end
        return True

    for r in range(p):
        post(r)
    while not all(done):
        progress = False
        for r in range(p):
            if not done[r] and try_complete(r):
                post(r)
                progress = True
        if not progress:
            blocked = {r: current[r] for r in range(p) if not done[r]}
            raise AssertionError(f"{op}: deadlock on {p} ranks; blocked: {blocked}")
    for pair in set(sends) | set(recvs):
        assert len(sends[pair]) == len(recvs[pair]), f"unmatched messages on {pair}"
    return Run(inputs, write, max(clock), steps, sent_nbytes)


def roots(p):
    return sorted({0, p // 2, p - 1, min(2, p - 1)})


def partitions(p):
    """Contiguous pairs, contiguous triples, singletons, one group, interleaved."""
    out = [
        tuple(tuple(range(i, min(i + 2, p))) for i in range(0, p, 2)),
        tuple(tuple(range(i, min(i + 3, p))) for i in range(0, p, 3)),
        tuple((r,) for r in range(p)),
        (tuple(range(p)),),
    ]
    if p >= 3:
        out.append(tuple(tuple(range(j, p, 3))[::-1] for j in (2, 0, 1)))
    return out


# ---------------------------------------------------------------------------
# Results


def _blocks(n, p):
    return [(o, o + s) for o, s in block_layout(n, p)]


@pytest.mark.parametrize("algorithm", ALLREDUCE_FLAT)
def test_allreduce_leaves_the_sum_everywhere(algorithm):
    for p in RANKS:
        for n in SIZES:
            run = execute(Collective("allreduce", n, algorithm), p)
            total = sum(run.inputs)
            for r in range(p):
                np.testing.assert_array_equal(run.final[r], total, err_msg=f"p={p} n={n} rank {r}")


@pytest.mark.parametrize("inter", ALLREDUCE_FLAT)
def test_hierarchical_allreduce_leaves_the_sum_everywhere(inter):
    for p in RANKS:
        for groups in partitions(p):
            for n in (0, 37):
                op = Collective("allreduce", n, "hierarchical", inter_algorithm=inter)
                run = execute(op, p, groups)
                total = sum(run.inputs)
                for r in range(p):
                    np.testing.assert_array_equal(run.final[r], total, err_msg=f"p={p} {groups} rank {r}")


def test_hierarchical_non_leaders_skip_the_leader_phase():
    groups = ((0, 1, 2, 3), (4, 5, 6, 7))
    op = Collective("allreduce", 64, "hierarchical", inter_algorithm="ring")
    for r in range(8):
        peers = {t.peer for s in lower(op, r, 8, groups) for t in s.sends + s.recvs}
        group = set(groups[r // 4]) - {r}
        if r in (0, 4):
            other_leader = 4 - r
            assert other_leader in peers and peers <= group | {other_leader}
        else:
            assert peers <= group


@pytest.mark.parametrize("algorithm", ALGORITHMS["broadcast"])
def test_broadcast_leaves_the_root_data_everywhere(algorithm):
    for p in RANKS:
        for root in roots(p):
            for n in SIZES:
                run = execute(Collective("broadcast", n, algorithm, root=root), p)
                for r in range(p):
                    np.testing.assert_array_equal(run.final[r], run.inputs[root], err_msg=f"p={p} root={root} n={n} rank {r}")


@pytest.mark.parametrize("algorithm", ALGORITHMS["reduce"])
def test_reduce_leaves_the_sum_at_the_root(algorithm):
    for p in RANKS:
        for root in roots(p):
            for n in SIZES:
                run = execute(Collective("reduce", n, algorithm, root=root), p)
                np.testing.assert_array_equal(run.final[root], sum(run.inputs), err_msg=f"p={p} root={root} n={n}")


@pytest.mark.parametrize("algorithm", ALGORITHMS["allgather"])
def test_allgather_concatenates_every_rank_block(algorithm):
    for p in RANKS:
        for n in SIZES:
            run = execute(Collective("allgather", n, algorithm), p)
            expected = np.concatenate([run.inputs[j][a:b] for j, (a, b) in enumerate(_blocks(n, p))])
            for r in range(p):
                np.testing.assert_array_equal(run.final[r], expected, err_msg=f"p={p} n={n} rank {r}")


@pytest.mark.parametrize("algorithm", ALGORITHMS["reduce_scatter"])
def test_reduce_scatter_leaves_block_r_reduced_at_rank_r(algorithm):
    for p in RANKS:
        for n in SIZES:
            run = execute(Collective("reduce_scatter", n, algorithm), p)
            total = sum(run.inputs)
            for r, (a, b) in enumerate(_blocks(n, p)):
                np.testing.assert_array_equal(run.final[r][a:b], total[a:b], err_msg=f"p={p} n={n} rank {r}")


@pytest.mark.parametrize("algorithm", ALGORITHMS["alltoall"])
def test_alltoall_transposes_blocks(algorithm):
    for p in RANKS:
        for n in SIZES + (8 * p,):
            run = execute(Collective("alltoall", n, algorithm), p)
            blocks = _blocks(n, p)
            for r in range(p):
                layout = alltoall_output_layout(n, r, p)
                a, b = blocks[r]
                for j, (offset, size) in enumerate(layout):
                    assert size == b - a
                    np.testing.assert_array_equal(run.final[r][offset : offset + size], run.inputs[j][a:b])
                if n % p == 0:
                    assert len(run.final[r]) == n


@pytest.mark.parametrize("algorithm", ALGORITHMS["scatter"])
def test_scatter_leaves_each_rank_its_block_from_the_root(algorithm):
    for p in RANKS:
        for root in range(p):
            for n in SIZES + (8 * p,):
                run = execute(Collective("scatter", n, algorithm, root=root), p)
                layout = scatter_layout(n, p, root)
                # Blocks lie root first, then root+1, ..., back to back.
                rotated = [layout[(root + k) % p] for k in range(p)]
                assert [o for o, _ in rotated] == list(np.cumsum([0] + [s for _, s in rotated])[:-1])
                for r, (offset, size) in enumerate(layout):
                    assert size == block_layout(n, p)[r][1]
                    np.testing.assert_array_equal(run.final[r][offset : offset + size],
                                                  run.inputs[root][offset : offset + size],
                                                  err_msg=f"p={p} root={root} n={n} rank {r}")
                assert sum(run.sent_nbytes) >= n - layout[root][1]


@pytest.mark.parametrize("algorithm", ALGORITHMS["gather"])
def test_gather_collects_every_block_at_the_root(algorithm):
    for p in RANKS:
        for root in range(p):
            for n in SIZES + (8 * p,):
                run = execute(Collective("gather", n, algorithm, root=root), p)
                for j, (offset, size) in enumerate(scatter_layout(n, p, root)):
                    np.testing.assert_array_equal(run.final[root][offset : offset + size],
                                                  run.inputs[j][offset : offset + size],
                                                  err_msg=f"p={p} root={root} n={n} block {j}")
                assert (run.final[root] >= 0).all()


def test_scatter_layout_rotates_the_blocks_root_first():
    # 10 bytes on 4 ranks: block sizes 3, 3, 2, 2 (rank order); root 2's
    # buffer holds rank 2's block first, then 3, 0, 1.
    assert scatter_layout(10, 4, 0) == block_layout(10, 4)
    assert scatter_layout(10, 4, 2) == ((4, 3), (7, 3), (0, 2), (2, 2))
    assert scatter_layout(0, 3, 1) == ((0, 0), (0, 0), (0, 0))


@pytest.mark.parametrize("algorithm", ALGORITHMS["scatter"] + ALGORITHMS["gather"])
def test_binomial_and_linear_scatter_gather_shapes(algorithm):
    for p in RANKS[1:]:
        n = 8 * p
        for root in roots(p):
            for op_name in ("scatter", "gather"):
                if algorithm not in ALGORITHMS[op_name]:
                    continue
                op = Collective(op_name, n, algorithm, root=root)
                run = execute(op, p)
                root_steps = list(lower(op, root, p))
                if algorithm == "binomial":
                    # Thakur et al.: ceil(lg p) rounds, (p-1)/p n through the root.
                    assert run.rounds == math.ceil(math.log2(p))
                    assert len(root_steps) == math.ceil(math.log2(p))
                else:
                    # One step: the root talks to all p - 1 others at once.
                    assert run.rounds == 1 and len(root_steps) == 1
                    step = root_steps[0]
                    assert len(step.sends + step.recvs) == p - 1
                moved = sum(t.nbytes for s in root_steps for t in s.sends + s.recvs)
                assert moved == (p - 1) * 8
                assert sum(run.sent_nbytes) >= (p - 1) * 8


@pytest.mark.parametrize("algorithm", ALGORITHMS["alltoallv"])
def test_alltoallv_transposes_uneven_counts(algorithm):
    for p in RANKS:
        for n in (0, 1, 5, 37):
            counts = uneven_counts(n, p)
            ops = alltoallv_ops(counts, algorithm)
            run = execute(ops, p)
            for r in range(p):
                out_edges = np.cumsum([0] + [counts[j][r] for j in range(p)])
                assert len(run.final[r]) == out_edges[-1]
                for j in range(p):
                    in_offset = sum(counts[j][:r])
                    np.testing.assert_array_equal(run.final[r][out_edges[j] : out_edges[j + 1]],
                                                  run.inputs[j][in_offset : in_offset + counts[j][r]],
                                                  err_msg=f"p={p} n={n} rank {r} block {j}")
                assert run.sent_nbytes[r] == sum(counts[r]) - counts[r][r]
            assert run.rounds == p - 1


def test_alltoallv_with_some_empty_counts_still_exchanges_with_every_peer():
    counts = [[0, 5, 0], [1, 0, 0], [0, 0, 9]]
    ops = alltoallv_ops(counts)
    run = execute(ops, 3)
    assert [list(o) for o in run.final] == [
        [run.inputs[1][0]], list(run.inputs[0][0:5]), list(run.inputs[2][0:9])]
    for r in range(3):
        assert [(s.sends[0].peer, s.recvs[0].peer) for s in lower(ops[r], r, 3)] == [
            ((r + 1) % 3, (r - 1) % 3), ((r + 2) % 3, (r - 2) % 3)]


@pytest.mark.parametrize("algorithm", ALGORITHMS["barrier"])
def test_barrier_completes_in_ceil_lg_p_rounds(algorithm):
    for p in RANKS:
        run = execute(Collective("barrier", 0, algorithm), p)
        assert run.rounds == math.ceil(math.log2(p))
        assert all(s == math.ceil(math.log2(p)) for s in run.steps)
        assert sum(run.sent_nbytes) == 0


# ---------------------------------------------------------------------------
# Shapes and costs (Thakur, Rabenseifner and Gropp 2005)


def _all_ops(p):
    for op_name, algorithms in ALGORITHMS.items():
        for algorithm in algorithms:
            if algorithm == "hierarchical":
                continue
            yield op_name, algorithm


def test_one_rank_yields_nothing():
    for op_name, algorithm in _all_ops(1):
        (op,) = collective(op_name, 64, algorithm, 1)
        assert list(lower(op, 0, 1)) == []
    op = Collective("allreduce", 64, "hierarchical")
    assert list(lower(op, 0, 1, ((0,),))) == []


def test_pattern_does_not_depend_on_nbytes():
    # Zero bytes still synchronize like the real collective: same steps, same peers.
    def shape(op, p, r):
        return [
            (tuple(t.peer for t in s.sends), tuple((t.peer, t.reduce) for t in s.recvs))
            for s in lower(op, r, p)
        ]

    for p in (2, 5, 8, 12):
        for op_name, algorithm in _all_ops(p):
            zeros = collective(op_name, 0, algorithm, p, root=p - 1)
            some = collective(op_name, 37, algorithm, p, root=p - 1)
            for r in range(p):
                zero = shape(zeros[r], p, r)
                assert zero, f"{op_name}/{algorithm}: rank {r} has no steps for 0 bytes"
                if op_name != "barrier":
                    assert zero == shape(some[r], p, r)


def test_every_lowering_runs_without_deadlock_and_moves_what_it_should():
    # The generic loop over the whole vocabulary: every algorithm on every p
    # completes under rendezvous matching (execute asserts sizes and FIFO).
    for p in RANKS:
        for op_name, algorithm in _all_ops(p):
            for root in roots(p) if SEMANTICS[op_name].rooted else (0,):
                execute(collective(op_name, 37, algorithm, p, root=root), p)


def test_every_semantics_expectation_holds_after_the_lowering():
    # SEMANTICS[op].expected is what a checked real run verifies: run each
    # lowering on buffers filled with rank + 1 and check it byte by byte.
    for p in (1, 2, 3, 5, 8):
        for op_name, algorithm in _all_ops(p):
            for root in roots(p) if SEMANTICS[op_name].rooted else (0,):
                ops = collective(op_name, 37, algorithm, p, root=root)
                run = execute(ops, p, fill=lambda r: r + 1)
                for r in range(p):
                    for e in SEMANTICS[op_name].expected(ops[r], r, p):
                        got = run.final[r][e.offset : e.offset + e.nbytes] % 256
                        assert (got == e.value).all(), (op_name, algorithm, p, root, r, e)


def test_ring_allreduce_steps_and_bytes():
    for p in RANKS[1:]:
        n = 1000 + p - 1  # not divisible by p
        sizes = [s for _, s in block_layout(n, p)]
        op = Collective("allreduce", n, "ring")
        for r in range(p):
            steps = list(lower(op, r, p))
            assert len(steps) == 2 * (p - 1)
            for k, step in enumerate(steps):
                (send,), (recv,) = step.sends, step.recvs
                assert send.peer == (r + 1) % p and recv.peer == (r - 1) % p
                assert send.nbytes in sizes and recv.nbytes in sizes
                assert recv.reduce == (k < p - 1)
        run = execute(Collective("allreduce", 8 * p, "ring"), p)
        assert run.rounds == 2 * (p - 1)
        assert all(s == 2 * (p - 1) * 8 for s in run.sent_nbytes)  # 2 (p-1)/p n


def test_ring_allreduce_on_1024_ranks_is_lazy_and_small():
    steps = lower(Collective("allreduce", 1 << 20, "ring"), 5, 1024)
    assert iter(steps) is steps
    count = sum(1 for _ in steps)
    assert count == 2046


def test_recursive_doubling_takes_lg_p_whole_vector_steps():
    for p in (2, 4, 8, 16):
        for algorithm, op_name in (("recursive_doubling", "allreduce"),):
            op = Collective(op_name, 100, algorithm)
            for r in range(p):
                steps = list(lower(op, r, p))
                assert len(steps) == int(math.log2(p))
                for step in steps:
                    assert [t.nbytes for t in step.sends + step.recvs] == [100, 100]
        run = execute(Collective("allgather", 4 * p, "recursive_doubling"), p)
        assert run.rounds == int(math.log2(p))
        assert all(s == 4 * (p - 1) for s in run.sent_nbytes)  # (p-1)/p n
    for p in (3, 5, 6, 7, 12):  # fold in, lg p' exchanges, fold out
        run = execute(Collective("allreduce", 10, "recursive_doubling"), p)
        assert run.rounds == int(math.log2(p)) + 2


def test_rabenseifner_rounds_and_bytes():
    for p in (2, 4, 8, 16):
        run = execute(Collective("allreduce", 16 * p, "rabenseifner"), p)
        assert run.rounds == 2 * int(math.log2(p))
        assert all(s == 2 * 16 * (p - 1) for s in run.sent_nbytes)  # 2 (p-1)/p n
        run = execute(Collective("reduce_scatter", 16 * p, "recursive_halving"), p)
        assert run.rounds == int(math.log2(p))
        assert all(s == 16 * (p - 1) for s in run.sent_nbytes)


def test_binomial_broadcast_root_takes_ceil_lg_p_rounds():
    for p in RANKS[1:]:
        for root in roots(p):
            op = Collective("broadcast", 64, "binomial", root=root)
            root_steps = list(lower(op, root, p))
            assert len(root_steps) == math.ceil(math.log2(p))
            assert all(not s.recvs and [t.nbytes for t in s.sends] == [64] for s in root_steps)
            assert execute(op, p).rounds == math.ceil(math.log2(p))


def test_alltoall_pairwise_partners():
    p, n = 5, 50
    steps = list(lower(Collective("alltoall", n, "pairwise"), 2, p))
    assert [(s.sends[0].peer, s.recvs[0].peer) for s in steps] == [(3, 1), (4, 0), (0, 4), (1, 3)]
    assert [s.sends[0].offset for s in steps] == [30, 40, 0, 10]
    assert steps == list(lower(Collective("alltoall", n, "ring"), 2, p))


def test_block_layout():
    assert block_layout(10, 4) == ((0, 3), (3, 3), (6, 2), (8, 2))
    assert block_layout(3, 5) == ((0, 1), (1, 1), (2, 1), (3, 0), (3, 0))
    assert block_layout(0, 2) == ((0, 0), (0, 0))
    with pytest.raises(ValueError, match="nparts"):
        block_layout(10, 0)
    with pytest.raises(ValueError, match="nbytes"):
        block_layout(-1, 2)


# ---------------------------------------------------------------------------
# Validation


def test_algorithms_cover_every_collective():
    assert set(ALGORITHMS) == set(COLLECTIVES)


@pytest.mark.parametrize(
    "op_name, algorithm",
    [("broadcast", "recursive_halving"), ("barrier", "ring"), ("alltoall", "binomial"), ("allreduce", "nccl")],
)
def test_check_rejects_unknown_algorithm(op_name, algorithm):
    with pytest.raises(ValueError, match=rf"{op_name}.*{algorithm}.*allowed: {ALGORITHMS[op_name][0]}"):
        check(Collective(op_name, 8, algorithm), 4)
    with pytest.raises(ValueError, match=algorithm):
        lower(Collective(op_name, 8, algorithm), 0, 4)


def test_check_rejects_bad_roots_ranks_and_groups():
    with pytest.raises(ValueError, match=r"broadcast: root 4 out of range"):
        check(Collective("broadcast", 8, "binomial", root=4), 4)
    with pytest.raises(ValueError, match=r"reduce: root (-1 out of range|must be a rank)"):
        check(Collective("reduce", 8, "rabenseifner", root=-1), 4)
    with pytest.raises(ValueError, match="nranks"):
        check(Collective("allreduce", 8), 0)
    with pytest.raises(ValueError, match="rank 4 out of range"):
        lower(Collective("allreduce", 8), 4, 4)
    hier = Collective("allreduce", 8, "hierarchical")
    with pytest.raises(ValueError, match="allreduce hierarchical: needs groups"):
        check(hier, 4)
    with pytest.raises(ValueError, match=r"ranks \[3\] are in no group"):
        check(hier, 4, ((0, 1), (2,)))
    with pytest.raises(ValueError, match="more than one group"):
        check(hier, 4, ((0, 1), (1, 2, 3)))
    with pytest.raises(ValueError, match="out of range"):
        check(hier, 4, ((0, 1), (2, 3, 4)))
    with pytest.raises(ValueError, match="inter_algorithm 'hierarchical'"):
        check(Collective("allreduce", 8, "hierarchical", inter_algorithm="hierarchical"), 4, ((0, 1), (2, 3)))
    with pytest.raises(ValueError, match="groups must be"):
        check(hier, 4, (0, 1, 2, 3))
    check(hier, 4, [[2, 3], [1, 0]])  # lists are fine, any order
    check(Collective("allreduce", 8, "ring", root=9), 4)  # root only matters to rooted ops
