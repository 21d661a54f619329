"""Collective algorithms lowered to the point-to-point steps each rank runs.

The algorithms and their names follow Thakur, Rabenseifner and Gropp (2005),
"Optimization of Collective Communication Operations in MPICH", and MPICH's
own implementations of them.  ``lower(op, rank, nranks)`` yields the
``Step`` s of one rank, in order; every executor runs exactly these steps (the
simulator as flows, a real backend as ``Isend``/``Irecv`` then ``Waitall``).

One concern per module:

- ``steps``: ``Step`` and ``Transfer``, and the buffer and matching contract every lowering keeps;
- ``semantics``: the table of what each collective means (``SEMANTICS``) and the results it leaves;
- ``layouts``: where each block of a buffer lies;
- ``checks``: whether an op can run on a communicator;
- ``sizes``: how large a lowering is, in closed form, without lowering;
- ``registry``: the algorithms, keyed by (op, name), and the decorator that registers one;
- one module per algorithm family: ``ring``, ``binomial``, ``recursive`` (doubling, halving,
  Rabenseifner), ``pairwise``, ``linear``, ``dissemination``, ``hierarchical``;
- ``lowering``: ``lower`` and ``lower_in_group``, the entry points.
"""
from workloads.collectives.checks import check
from workloads.collectives.layouts import (alltoall_output_layout, block_layout, exchange_layouts, output_nbytes,
                                           scatter_layout)
from workloads.collectives.lowering import group_server_groups, lower, lower_in_group
from workloads.collectives.semantics import (ALGORITHMS, COLLECTIVES, DEFAULT_ALGORITHM, SEMANTICS, Expectation,
                                             Semantics, root_peer)
from workloads.collectives.sizes import lowered_size
from workloads.collectives.steps import Step, Transfer

__all__ = [
    "ALGORITHMS",
    "COLLECTIVES",
    "DEFAULT_ALGORITHM",
    "SEMANTICS",
    "Expectation",
    "Semantics",
    "Step",
    "Transfer",
    "alltoall_output_layout",
    "block_layout",
    "check",
    "exchange_layouts",
    "group_server_groups",
    "lower",
    "lower_in_group",
    "lowered_size",
    "output_nbytes",
    "root_peer",
    "scatter_layout",
]
