"""Limits on what an input may cost.

Scenario, topology and profile files are untrusted input: a file may be
large, deeply nested, self-referencing, or ask for a billion ranks.  These
limits turn each of those into one clear error before anything large is
built:

- the reader (``topologies.io.read_data_file``) refuses files over
  ``MAX_FILE_BYTES``, nesting deeper than ``MAX_NESTING_DEPTH``, recursive
  YAML aliases and aliases that expand past ``MAX_ALIAS_NODES`` values;
- counts and sizes are integers up to ``MAX_INT`` (the result tables are
  int64);
- the estimated memory of a scenario (its topology here, its programs in
  ``workloads``) must stay under a limit: the ``max_memory_bytes`` keyword
  where a scenario or topology is loaded, else ``DEFAULT_MAX_MEMORY_BYTES``
  (the command line takes it from ``--max-memory`` or the environment
  variable ``DISTSIM_MAX_MEMORY_BYTES``; nothing below it reads the
  environment);
- a value quoted in an error message is cut (``topologies.text.short``).
"""
from __future__ import annotations

import numbers

from topologies.text import MAX_INT, format_bytes, short

MAX_FILE_BYTES = 16 * 2**20
MAX_NESTING_DEPTH = 64
# YAML aliases: a file may reuse a node (a shared op list, `<<: *defaults`),
# but not make a small file stand for a huge one ("billion laughs").
MAX_ALIASES = 1000
MAX_ALIAS_NODES = 100_000
# Values in one parsed file or dict, counting shared ones each time they are
# reached: more than a 16 MiB file can hold.
MAX_DATA_VALUES = 10_000_000

DEFAULT_MAX_MEMORY_BYTES = 2 * 2**30
# Named in messages only: experiments/ reads it, at the command line.
MAX_MEMORY_ENV = "DISTSIM_MAX_MEMORY_BYTES"
RAISE_HINT = f"raise the limit with --max-memory BYTES or {MAX_MEMORY_ENV}=BYTES"

# Measured peak memory of a built Topology (networkx graph with attribute
# dicts, link tables, routing adjacency): about 1.15 kB per node and per
# undirected link on CPython 3.11; a third more for headroom.
NODE_BYTES = 1536
LINK_BYTES = 1536

# -- the memory limit -----------------------------------------------------------

def resolve_max_memory_bytes(value=None) -> int:
    """The memory limit in bytes: ``value`` (checked) if given, else ``DEFAULT_MAX_MEMORY_BYTES``."""
    if value is None:
        return DEFAULT_MAX_MEMORY_BYTES
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 < value <= MAX_INT:
        raise ValueError(f"max_memory_bytes must be an integer in 1..2^63-1, got {short(value)}")
    return int(value)


def topology_bytes(nodes: int, links: int) -> int:
    """Estimated memory of a built topology of ``nodes`` nodes and ``links`` undirected links."""
    return nodes * NODE_BYTES + links * LINK_BYTES


def over_limit_message(what: str, estimate_bytes: int, limit_bytes: int) -> str:
    """The refusal of ``what`` (which says what was counted) needing ``estimate_bytes`` over ``limit_bytes``."""
    limit = format_bytes(limit_bytes)
    exact = "" if limit == f"{limit_bytes} B" else f" ({limit_bytes} B)"
    return (f"{what} an estimated {format_bytes(estimate_bytes)} of memory, over the limit of "
            f"{limit}{exact}; {RAISE_HINT}")
