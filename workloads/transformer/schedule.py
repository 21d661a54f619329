"""Pipeline schedules: the order of each stage's forwards and backwards, and what they keep in flight.

``gpipe`` (Huang et al. 2019), ``1f1b`` (PipeDream-Flush, Narayanan et al.
2021) and Megatron-LM's ``interleaved`` 1F1B (Narayanan et al. 2021,
sec. 2.2).  The lowering runs ``schedule_order``; the memory model counts the
activations a stage holds at its peak from ``in_flight_chunks`` and its
first/last-chunk variants; the step report sets the measured bubble against
``ideal_bubble_fraction``.  Symbols: ``p`` stages, ``m`` micro-batches,
``v`` virtual stages (model chunks per stage).
"""
from __future__ import annotations


# ---------------------------------------------------------------------------
# Each stage's order of (forward?, micro-batch, chunk)


def schedule_order(schedule: str, p: int, stage: int, m: int, v: int = 1) -> list[tuple[bool, int, int]]:
    """The order in which ``stage`` of ``p`` runs the forwards (True) and backwards of ``m`` micro-batches.

    ``gpipe`` (Huang et al. 2019): every forward, then every backward in
    reverse, as autograd unwinds them.  ``1f1b`` (PipeDream-Flush,
    Narayanan et al. 2021): p - stage - 1 warm-up forwards, then one forward
    and one backward alternately, then the remaining backwards.
    ``interleaved`` (Narayanan et al. 2021, sec. 2.2; Megatron-LM's
    ``forward_backward_pipelining_with_interleaving``): ``v`` model chunks per
    stage, micro-batches in groups of p through each chunk in turn, with
    2 (p - stage - 1) + (v - 1) p warm-up forwards (all of them when m = p).
    """
    if schedule == "gpipe":
        return [(True, i, 0) for i in range(m)] + [(False, i, 0) for i in reversed(range(m))]
    if schedule == "1f1b":
        warmup = min(p - stage - 1, m)
        order = [(True, i, 0) for i in range(warmup)]
        for i in range(m - warmup):
            order += [(True, warmup + i, 0), (False, i, 0)]
        return order + [(False, i, 0) for i in range(m - warmup, m)]
    total = m * v

    def chunk_and_microbatch(k: int, forward: bool) -> tuple[int, int]:
        in_group = k % (p * v)
        chunk = in_group // p
        return (chunk if forward else v - 1 - chunk), (k // (p * v)) * p + k % p

    warmup = total if m == p else min((p - stage - 1) * 2 + (v - 1) * p, total)
    order = []
    for k in range(warmup):
        c, i = chunk_and_microbatch(k, True)
        order.append((True, i, c))
    for k in range(total - warmup):
        c, i = chunk_and_microbatch(warmup + k, True)
        order.append((True, i, c))
        c, i = chunk_and_microbatch(k, False)
        order.append((False, i, c))
    for k in range(total - warmup, total):
        c, i = chunk_and_microbatch(k, False)
        order.append((False, i, c))
    return order


def ideal_bubble_fraction(schedule: str, p: int, m: int, v: int = 1) -> float:
    """The idle share of a step with uniform stages and free communication.

    (p - 1) / (m + p - 1) for GPipe and 1F1B; (p - 1) / (v m + p - 1) with
    v interleaved chunks, whose bubble is v times shorter (Narayanan et al.).
    """
    v = v if schedule == "interleaved" else 1
    return (p - 1) / (v * m + p - 1)


# ---------------------------------------------------------------------------
# Micro-batches in flight


def in_flight_chunks(schedule: str, *, stages: int, microbatches: int, stage: int, virtual_stages: int = 1) -> int:
    """How many (micro-batch, model chunk) forwards pipeline ``stage`` holds at its peak.

    A model chunk is L/(p v) layers (v = 1 but for ``interleaved``); the
    stage holds that many chunks' activations at once.

    - ``gpipe``: every forward before any backward: m (also for p = 1: the
      schedule as named; 1F1B with p = 1 is plain gradient accumulation, 1).
    - ``1f1b`` (Narayanan et al. 2021; Megatron-LM's
      ``forward_backward_pipelining_without_interleaving``): stage i runs
      min(p - i - 1, m) warm-up forwards, then one forward before each
      backward: min(p - i, m); the first stage holds p.
    - ``interleaved`` (Megatron-LM's ``..._with_interleaving``): warm-up
      W_i = min(2 (p - i - 1) + (v - 1) p, m v) forwards, then one more in
      the steady state: min(W_i + 1, m v) chunks; when m = p Megatron-LM runs
      every forward first (m v).  For the first stage that is p v + p - 1
      chunks of L/(p v) layers: L (1 + (p - 1)/(p v)) layers' activations,
      Korthikanti's sec. 4.2.3 factor.  Megatron-LM's chunk order needs m to
      be a multiple of p.
    """
    p, m, v, i = stages, microbatches, virtual_stages, stage
    if not 0 <= i < p:
        raise ValueError(f"stage {i} is not one of the {p} pipeline stages")
    if schedule == "gpipe":
        return m
    if schedule == "1f1b":
        return min(p - i, m)
    if schedule != "interleaved":
        raise ValueError(f"unknown schedule {schedule!r}")
    if m == p:
        return m * v
    warmup = min(2 * (p - i - 1) + (v - 1) * p, m * v)
    return min(warmup + 1, m * v)


def in_flight_first_chunk(schedule: str, *, stages: int, microbatches: int, virtual_stages: int = 1) -> int:
    """At most how many micro-batches' first model chunk (the embedding's) the first stage holds at once.

    GPipe m; 1F1B min(p, m); interleaved: the first stage's forwards go
    through its chunks in groups of p micro-batches and its backwards begin
    with the last chunk, so chunk 0 of two groups is held before the first
    of them goes back: min(m, 2p) (and no more than the chunks in flight).
    """
    p, m, v = stages, microbatches, virtual_stages
    total = in_flight_chunks(schedule, stages=p, microbatches=m, stage=0, virtual_stages=v)
    if schedule != "interleaved":
        return total
    return min(m, 2 * p, total)


def in_flight_last_chunk(schedule: str, *, stages: int, microbatches: int, virtual_stages: int = 1) -> int:
    """At most how many micro-batches' last model chunk (the output layer's) the last stage holds at once.

    GPipe m; 1F1B 1 (the last stage runs each backward right after its
    forward); interleaved 1, but m when m = p (every forward first).
    """
    p, m = stages, microbatches
    if schedule == "gpipe" or (schedule == "interleaved" and m == p):
        return m
    return min(1, m)
