"""Fuzz: bad scenario and topology files are clear, bounded errors, never tracebacks.

Cases are mutated versions of every shipped scenario (experiments/scenarios/)
and topology file (experiments/scenarios/topologies/): deleted keys, values
of the wrong type, huge, negative, NaN, infinite and integral-float numbers,
non-string keys, deep nesting, strings where numbers go, random bytes,
truncation; plus hand-written hostile files (alias bombs, recursive aliases,
1000-deep nesting, non-UTF-8, huge counts for every builder and workload,
values that overflow a simulation, files that are not regular or too large).
The generator is a numpy Generator with a fixed seed: case i is the same on
every run.

Cases run in forked worker processes (two at a time): before each case the
worker sets RLIMIT_AS to its current address space + 1 GiB and restarts its
peak-RSS count (/proc/self/clear_refs), then loads the file and, if it loads,
simulates it, timing the whole.  A worker that hangs past CASE_KILL_S is
killed, one that dies is reported, and after any case that was not clear a
fresh worker takes over.  The bar, over all cases:

- 0 tracebacks: the only exceptions allowed are the clear ones, CLEAR_ERRORS
  (ScenarioError and TopologyError, the ValueError family of the loaders,
  whose message must name the file and stay under LOAD_MESSAGE_CHARS; and
  the engine's SimulationError family: DeadlockError, NonFiniteResultError,
  a message mismatch).  Anything else (TypeError, KeyError, RecursionError,
  MemoryError, OverflowError, a bare ValueError, a crash) counts as one;
- 0 cases over CASE_TIME_S of wall time (load + simulate);
- 0 cases over CASE_MEMORY_BYTES of memory (the case's peak RSS over the
  worker's RSS before it; RLIMIT_AS turns more into a MemoryError, i.e. a
  traceback).

Mutated cases load with ``max_memory_bytes = FUZZ_MAX_MEMORY_BYTES`` (16 MiB
beyond the 80 MiB every run is estimated to load): the limit bounds memory,
not time, and a valid scenario near the 2 GiB default can simulate for many
minutes (~30 us per lowered step, 3 B each in the estimate); at this limit
everything admitted finishes in seconds, and the refusal is the same code at
any limit.  The hostile files with huge counts load at the default
limit, which must refuse them too.

    python -m pytest -q tests/test_fuzz_scenarios.py            # ~1,000 cases
    python -m pytest -q -m slow tests/test_fuzz_scenarios.py    # 10,000 cases (opt-in, minutes)
"""
from __future__ import annotations

import copy
import json
import math
import os
import resource
import select
import shutil
import signal
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from executors import get_executor
from simcore.engine import SimulationError
from experiments.output import json_text as dumps_json
from workloads.base import BASE_BYTES
from topologies import TopologyError, load_topology
from topologies.limits import DEFAULT_MAX_MEMORY_BYTES
from workloads.scenario import ScenarioError, load_scenario

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "experiments" / "scenarios"
SCENARIOS = sorted(SCENARIO_DIR.glob("*.yaml"))
TOPOLOGY_FILES = sorted((SCENARIO_DIR / "topologies").glob("*.yaml"))

SEED = 20240611
CASES = 1_000
SLOW_CASES = 10_000
CASE_TIME_S = 10.0
CASE_MEMORY_BYTES = 2**30
# A child still running after this is killed and counted over time.
CASE_KILL_S = 60.0
FUZZ_MAX_MEMORY_BYTES = BASE_BYTES + 16 * 2**20
LOAD_MESSAGE_CHARS = 2_000
SIMULATION_MESSAGE_CHARS = 20_000
JOBS = max(1, min(2, os.cpu_count() or 1))

# The exceptions that count as a clear error (see the module docstring).
CLEAR_ERRORS = (ScenarioError, TopologyError, SimulationError)


@dataclass(frozen=True)
class Case:
    name: str  # what was done, to reproduce it
    kind: str  # "scenario" or "topology"
    suffix: str  # ".yaml", ".json", ...
    content: bytes = b""
    special: str = ""  # "", "fifo" or "dir": what stands at the case's path instead of a file
    max_memory_bytes: int = FUZZ_MAX_MEMORY_BYTES


# -- mutations --------------------------------------------------------------------


DEEP = "__DEEP_NESTING__"


def _huge_ints():
    return [2**31, 2**63 - 1, 2**63, 2**64, 10**30, -(2**63), 10**300]


def _bad_value(rng: np.random.Generator, value):
    """A replacement for ``value``: of the wrong type, out of range or non-finite."""
    common = [None, True, False, "", "text", "1e9", "-1", [], {}, [1, 2], {"a": 1}, float("nan"),
              float("inf"), float("-inf"), -1, 0, 1, 1e308, -1e308, 5e-324, "x" * 10_000, DEEP,
              "a\x00b.yaml", "topologies/custom_two_racks.yaml", "topologies.yaml"]
    if isinstance(value, bool):
        specific = ["true", 1, 0, "no", None]
    elif isinstance(value, int):
        specific = _huge_ints() + [float(value), -value, value + 0.5, value * 10, 1e9, 1e18, 1e308,
                                   str(value), [value], {"v": value}, value - 1, value + 1]
    elif isinstance(value, float):
        specific = [0.0, -0.0, -value, value * 1e300, value * 1e-300, 1e-320, str(value), "1e-6 s",
                    int(value) if math.isfinite(value) and abs(value) < 1e18 else 0, [value]]
    elif isinstance(value, str):
        specific = ["", " ", "nonexistent", "ring\x00", "../../../etc/passwd", "topologies/missing.yaml",
                    value * 1000, value.upper(), 123, 1.5, [value], {value: value}]
    elif isinstance(value, list):
        specific = [[], [None], [[1]], value * 1000 if len(value) < 50 else value, value[:1], "a", 1,
                    {"0": value}, [value] * 3]
    elif isinstance(value, dict):
        specific = [{}, [], None, "text", {"bogus": 1}, [value], {k: None for k in value}]
    else:
        specific = []
    pool = specific + common
    return copy.deepcopy(pool[int(rng.integers(len(pool)))])


def _sites(data) -> list[tuple]:
    """(container, key) of every value in ``data``, iteratively."""
    sites, stack = [], [data]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                sites.append((node, k))
                stack.append(v)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                sites.append((node, i))
                stack.append(v)
    return sites


def _mutate(rng: np.random.Generator, data) -> str:
    """Change ``data`` in place by one random mutation; returns what was done."""
    sites = _sites(data)
    if not sites:
        return "nothing to mutate"
    container, key = sites[int(rng.integers(len(sites)))]
    op = int(rng.integers(10))
    if op == 0:
        del container[key]
        return f"deleted [{key!r}]"
    if op in (1, 2, 3):
        container[key] = _bad_value(rng, container[key])
        return f"[{key!r}] = {str(container[key])[:60]}"
    if op == 4:
        mappings = [n for n, _ in sites if isinstance(n, dict)] + [data]
        target = mappings[int(rng.integers(len(mappings)))]
        new_key = [1, None, 1.5, True, -7, 10**30, "bogus_key", "0"][int(rng.integers(8))]
        target[new_key] = 1
        return f"added key {new_key!r}"
    if op == 5:
        container[key] = DEEP
        return f"[{key!r}] = deep nesting"
    if op == 6:
        container[key] = [container[key]] if rng.random() < 0.5 else {"value": container[key]}
        return f"[{key!r}] wrapped"
    value = container[key]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # Mostly still valid: extreme but legal values reach the simulator.
        factor = [-1, 0.5, 2, 3, 0.1, 1e-6, 1e6, 1e-300, 1e300][int(rng.integers(9))]
        scaled = value * factor
        container[key] = type(value)(scaled) if isinstance(value, int) and abs(scaled) < 1e18 else scaled
        return f"[{key!r}] scaled to {container[key]!r}"
    container[key] = _bad_value(rng, value)
    return f"[{key!r}] = {str(container[key])[:60]}"


def _dump(rng: np.random.Generator, data) -> tuple[str, bytes]:
    suffix = ".json" if rng.random() < 0.3 else ".yaml"
    text = None
    if suffix == ".json":
        try:
            text = json.dumps(data)
        except (TypeError, ValueError):
            suffix = ".yaml"
    if text is None:
        text = yaml.safe_dump(data, sort_keys=False, default_flow_style=bool(rng.random() < 0.3), width=1000)
    depth = [65, 200, 1000, 5000][int(rng.integers(4))]
    deep = "[" * depth + "]" * depth
    text = text.replace(f'"{DEEP}"', deep).replace(DEEP, deep)
    return suffix, text.encode("utf-8")


def _mangle_bytes(rng: np.random.Generator, raw: bytes) -> tuple[str, bytes]:
    if not raw:
        return "empty", raw
    op = int(rng.integers(6))
    at = int(rng.integers(len(raw) + 1))
    if op == 0:
        return f"truncated at {at}", raw[:at]
    if op == 1:
        junk = rng.integers(0, 256, size=int(rng.integers(1, 17)), dtype=np.uint8).tobytes()
        return f"{len(junk)} random bytes at {at}", raw[:at] + junk + raw[at:]
    if op == 2:
        flipped = bytearray(raw)
        i = min(at, len(raw) - 1)
        flipped[i] ^= 1 << int(rng.integers(8))
        return f"bit flipped at {i}", bytes(flipped)
    lines = raw.split(b"\n")
    i = int(rng.integers(len(lines)))
    if op == 3:
        del lines[i]
        return f"line {i} deleted", b"\n".join(lines)
    if op == 4:
        lines.insert(i, lines[i])
        return f"line {i} doubled", b"\n".join(lines)
    token = [b"&a ", b"*a", b"{", b"[", b": ", b"- ", b"\t", b"\xff", b"!!binary ", b"? "][int(rng.integers(10))]
    return f"{token!r} inserted at {at}", raw[:at] + token + raw[at:]


def mutated_cases(rng: np.random.Generator, n: int) -> list[Case]:
    bases = [("scenario", p) for p in SCENARIOS] + [("topology", p) for p in TOPOLOGY_FILES]
    originals = {p: yaml.safe_load(p.read_text()) for _, p in bases}
    cases = []
    for i in range(n):
        kind, path = bases[i % len(bases)]
        data = copy.deepcopy(originals[path])
        done = [_mutate(rng, data) for _ in range(1 + int(rng.random() > 0.6) + int(rng.random() > 0.9))]
        suffix, raw = _dump(rng, data)
        if rng.random() < 0.25:
            what, raw = _mangle_bytes(rng, raw)
            done.append(what)
        cases.append(Case(f"{path.name} #{i}: " + "; ".join(done), kind, suffix, raw))
    return cases


# -- hand-written hostile files ------------------------------------------------------

RING = "topology: {builder: ring, n: 4}\n"
ALLREDUCE = "workload: {kind: collective, op: allreduce, nbytes: 1000}\n"


def _billion_laughs(where: str) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, 10):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n" + where + "\n"


def hostile_cases() -> list[Case]:
    y = []  # (name, text) of YAML scenario files
    y.append(("billion laughs in name", _billion_laughs(RING + ALLREDUCE + "name: *l9")))
    y.append(("billion laughs in workload", _billion_laughs(RING + "workload: {kind: programs, ranks: *l9}")))
    y.append(("billion laughs through merge keys",
              "a: &a {x: 1, y: 2, z: 3}\n" + "".join(
                  f"b{i}: &b{i} {{<<: [*{'a' if i == 0 else f'b{i - 1}'}, *a], k{i}: 1}}\n" for i in range(60))
              + RING + ALLREDUCE))
    y.append(("one big anchor aliased 2000 times",
              "big: &big " + "x" * 100_000 + "\n" + RING + ALLREDUCE + "description: [" + ", ".join(["*big"] * 2000) + "]\n"))
    y.append(("recursive alias, list", "a: &a [*a]\n" + RING + ALLREDUCE))
    y.append(("recursive alias, mapping", "a: &a {b: *a}\n" + RING + ALLREDUCE))
    y.append(("recursive alias in workload", RING + "workload: &w {kind: programs, ranks: [*w, []]}\n"))
    y.append(("undefined alias", RING + ALLREDUCE + "name: *nowhere\n"))
    for depth in (64, 65, 1000, 100_000):
        y.append((f"{depth}-deep flow list", RING + ALLREDUCE + "description: " + "[" * depth + "]" * depth + "\n"))
    y.append(("1000-deep block mapping",
              RING + ALLREDUCE + "description:\n" + "".join("  " * (i + 1) + "a:\n" for i in range(1000))
              + "  " * 1001 + "1\n"))
    y.append(("1000-deep block sequence", RING + ALLREDUCE + "description:\n" + "".join(
        "  " * i + "-\n" for i in range(1, 1000)) + "  " * 1000 + "- 1\n"))
    y.append(("deep nesting in topology", "topology: " + "{a: " * 2000 + "1" + "}" * 2000 + "\n" + ALLREDUCE))
    # Keys that are not strings, at every level.
    y.append(("int key at top", RING + ALLREDUCE + "1: x\nfoo: 2\n"))
    y.append(("null key at top", RING + ALLREDUCE + "null: 3\n"))
    y.append(("complex key at top", RING + ALLREDUCE + "? [a, b]\n: c\n"))
    y.append(("float key in topology", "topology: {builder: ring, n: 4, 1.5: 2}\n" + ALLREDUCE))
    y.append(("bool key in workload", RING + "workload: {kind: collective, true: 1}\n"))
    y.append(("date key in energy", RING + ALLREDUCE + "energy: {2001-01-01: true}\n"))
    y.append(("null key in stragglers", RING + ALLREDUCE + "stragglers: {kind: fixed, null: 2}\n"))
    y.append(("null rank key", RING + "workload: {kind: programs, ranks: {null: [], 1: []}}\n"))
    y.append(("huge rank key", RING + "workload: {kind: programs, ranks: {1000000000000000000000000000000: []}}\n"))
    y.append(("100-digit rank key", RING + "workload: {kind: programs, ranks: {'" + "9" * 100 + "': []}}\n"))
    y.append(("int key inside an op", RING + "workload: {kind: programs, ranks: [[{kind: compute, 1: 2}], [], [], []]}\n"))
    y.append(("5,000 unknown keys", RING + ALLREDUCE + "".join(f"k{i}: {i}\n" for i in range(5_000))))
    y.append(("a 1 MB unknown key", RING + ALLREDUCE + "k" * 1_000_000 + ": 1\n"))
    y.append(("a 1 MB name in a list", RING + ALLREDUCE + "name: [" + "y" * 1_000_000 + "]\n"))
    # Tags and scalars a safe loader must not take, or cannot hold.
    y.append(("python object tag", RING + ALLREDUCE + "name: !!python/object/apply:os.system ['true']\n"))
    y.append(("binary tag", RING + ALLREDUCE + "name: !!binary aGVsbG8=\n"))
    y.append(("bad binary", RING + ALLREDUCE + "name: !!binary '%%%'\n"))
    y.append(("set tag", RING + ALLREDUCE + "stragglers: !!set {a, b}\n"))
    y.append(("bad timestamp", RING + ALLREDUCE + "seed: 2001-13-45\n"))
    y.append(("5000-digit int", RING + ALLREDUCE + "seed: " + "9" * 5000 + "\n"))
    y.append(("4000-digit int count", "topology: {builder: ring, n: " + "9" * 4000 + "}\n" + ALLREDUCE))
    y.append(("bad float tag", RING + ALLREDUCE + "seed: !!float abc\n"))
    # Huge counts for every builder (must be refused at the default limit).
    builders = [
        "{builder: ring, n: 1000000000}", "{builder: ring, n: 1e9}", "{builder: ring, n: 9223372036854775808}",
        "{builder: ring, n: 1000000000000000000000000000000}", "{builder: switch, n: 1000000000}",
        "{builder: fully_connected, n: 100000}", "{builder: tree, n: 10000000000}",
        "{builder: tree, n: 10, arity: 1000000000000000000}", "{builder: torus, dims: [1000, 1000, 1000]}",
        "{builder: torus, dims: [4611686018427387904, 4611686018427387904]}", "{builder: fat_tree, k: 10000}",
        "{builder: fat_tree, k: 1099511627776}", "{builder: hierarchical, levels: [1000, 1000, 1000]}",
        "{builder: hierarchical, levels: [" + ", ".join(["2"] * 64) + "]}",
        "{builder: hierarchical, levels: [" + ", ".join(["1"] * 20_000) + ", 2]}",
        "{builder: edge_cloud, n_devices: 10000000000, n_edge: 1}",
        "{builder: edge_cloud, n_devices: 1, n_edge: 10000000000, n_cloud: 10000000000}",
    ]
    huge = [(f"huge builder {b[:60]}", f"topology: {b}\n" + ALLREDUCE) for b in builders]
    workloads = [
        "{kind: collective, op: allreduce, nbytes: 8, iterations: 1000000000}",
        "{kind: collective, op: allreduce, nbytes: 8, iterations: 1e308}",
        "{kind: collective, op: allreduce, nbytes: 8, iterations: 9223372036854775807}",
        "{kind: collective, op: alltoall, nbytes: 1000000000000000000000000000000}",
        "{kind: collective, op: allreduce, nbytes: 9223372036854775807}",
        "{kind: data_parallel, parameters: 1000000000000000, bucket_bytes: 1}",
        "{kind: data_parallel, steps: 1e308}",
        "{kind: data_parallel, accumulation_steps: 1000000000000}",
        "{kind: pipeline, microbatches: 1000000000000}",
        "{kind: pipeline, steps: 1000000000, microbatches: 8}",
        "{kind: federated, rounds: 1000000000000}",
        "{kind: offload, tasks: 1000000000000}",
        "{kind: parameter_server, iterations: 1000000000000}",
        "{kind: parameter_server, servers: 1000000000000}",
        "{kind: programs, ranks: {0: [], 1: [], 2: [], 1000000: []}}",
    ]
    huge += [(f"huge workload {w[:70]}", RING + f"workload: {w}\n") for w in workloads]
    # Values that overflow a simulation: a clear NonFiniteResultError, not Infinity in JSON.
    overflow = [
        "topology: {builder: ring, n: 4, latency_s: 1e308}\n" + ALLREDUCE,
        "topology: {builder: ring, n: 4, latency_s: 1.7e308}\n" + ALLREDUCE,
        "topology: {builder: ring, n: 4, bandwidth_bytes_per_s: 1e-320}\n" + ALLREDUCE,
        "topology: {builder: ring, n: 4, flops_per_s: 1e-320}\n"
        "workload: {kind: collective, op: allreduce, nbytes: 8, compute_flops: 1e300}\n",
        "topology: {builder: ring, n: 4, busy_power_w: 1e308}\n"
        "workload: {kind: collective, op: allreduce, nbytes: 8, compute_flops: 1e300}\n",
        "topology: {builder: ring, n: 4, idle_power_w: 1e308}\n" + ALLREDUCE,
        "topology: {builder: ring, n: 4, energy_per_byte_j: 1e308}\n" + ALLREDUCE,
        "topology: {builder: switch, n: 4, switch_idle_power_w: 1e308}\n" + ALLREDUCE,
        RING + "workload: {kind: collective, op: allreduce, nbytes: 8, compute_flops: 1e308, iterations: 1000}\n",
        RING + "workload: {kind: collective, op: allreduce, nbytes: 8, compute_flops: 1e12}\n"
        "stragglers: {kind: pareto, alpha: 1e-300}\n",
        RING + "workload: {kind: collective, op: allreduce, nbytes: 8, compute_flops: 1e12}\n"
        "stragglers: {kind: fixed, factor: 1e308}\n",
        RING + "workload: {kind: collective, op: allreduce, nbytes: 8, compute_flops: 1e12}\n"
        "stragglers: {kind: lognormal, sigma: 1000}\n",
        RING + "workload: {kind: collective, op: allreduce, nbytes: 9223372036854775807}\n"
        "topology: {builder: ring, n: 4, bandwidth_bytes_per_s: 1e-300}\n",
    ]
    cases = [Case(name, "scenario", ".yaml", text.encode()) for name, text in y]
    cases += [Case(name, "scenario", ".yaml", text.encode(), max_memory_bytes=DEFAULT_MAX_MEMORY_BYTES)
              for name, text in huge]
    cases += [Case(f"overflow #{i}: {text.splitlines()[0][:60]}", "scenario", ".yaml", text.encode())
              for i, text in enumerate(overflow)]
    # Bytes that are not UTF-8 text.
    for name, raw in [
        ("0xff in a value", (RING + ALLREDUCE + "name: caf\xe9\n").encode("latin-1")),
        ("latin-1 file", "name: Förster\n".encode("latin-1") + (RING + ALLREDUCE).encode()),
        ("UTF-16 file", (RING + ALLREDUCE).encode("utf-16")),
        ("encoded surrogate", (RING + ALLREDUCE).encode() + b"name: \xed\xa0\x80\n"),
        ("NUL bytes", (RING + ALLREDUCE).encode() + b"name: a\x00b\n"),
        ("random bytes", np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()),
    ]:
        cases.append(Case(f"not UTF-8: {name}", "scenario", ".yaml", raw))
    # JSON.
    for name, text in [
        ("100,000-deep JSON", '{"topology": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        ("65-deep JSON", '{"description": ' + "[" * 65 + "]" * 65 + "}"),
        ("5000-digit JSON int", '{"seed": ' + "9" * 5000 + "}"),
        ("NaN in JSON", '{"topology": {"builder": "ring", "n": 4, "latency_s": NaN}, "workload": {"kind": "collective"}}'),
        ("Infinity in JSON", '{"topology": {"builder": "ring", "n": Infinity}, "workload": {"kind": "collective"}}'),
        ("BOM", "\ufeff" + '{"topology": {"builder": "ring", "n": 4}}'),
        ("truncated JSON", '{"topology": {"builder": "ring", "n": 4}, "workload": {"kind": "coll'),
        ("explicit topology of 20,000 nodes",
         json.dumps({"topology": {"nodes": [{"id": f"n{i}", "role": "compute", "flops_per_s": 1e12}
                                            for i in range(20_000)], "links": []},
                     "workload": {"kind": "collective"}})),
    ]:
        cases.append(Case(f"JSON: {name}", "scenario", ".json", text.encode()))
    # What stands at the path.
    cases += [
        Case("empty file", "scenario", ".yaml", b""),
        Case("null document", "scenario", ".yaml", b"null\n"),
        Case("top-level list", "scenario", ".yaml", b"- a\n- b\n"),
        Case("top-level int", "scenario", ".json", b"42"),
        Case("two documents", "scenario", ".yaml", (RING + ALLREDUCE + "---\n" + RING).encode()),
        Case("17 MiB file", "scenario", ".yaml", (RING + ALLREDUCE).encode() + b"#" * (17 * 2**20)),
        Case("a FIFO", "scenario", ".yaml", special="fifo"),
        Case("a directory", "scenario", ".yaml", special="dir"),
        Case("a .txt file", "scenario", ".txt", (RING + ALLREDUCE).encode()),
        Case("topology path to /dev/zero", "scenario", ".yaml", ("topology: /dev/zero\n" + ALLREDUCE).encode()),
        Case("topology path to a directory", "scenario", ".yaml", ("topology: topologies.yaml\n" + ALLREDUCE).encode()),
        Case("topology path to itself", "scenario", ".yaml", ("topology: CASE\n" + ALLREDUCE).encode()),
        Case("topology path with a NUL byte", "scenario", ".yaml", ('topology: "a\\0b.yaml"\n' + ALLREDUCE).encode()),
        Case("profile path with a NUL byte", "scenario", ".yaml", (RING + ALLREDUCE + 'profile: "a\\0b.yaml"\n').encode()),
        Case("profile path to /dev/zero.yaml", "scenario", ".yaml", (RING + ALLREDUCE + "profile: /dev/zero.yaml\n").encode()),
        Case("profile that is a list", "scenario", ".yaml", (RING + ALLREDUCE + "profile: [1, 2]\n").encode()),
    ]
    # Topology files (load_topology) with the same kinds of trouble.
    cases += [
        Case("topology: billion laughs", "topology", ".yaml", _billion_laughs("nodes: *l9").encode()),
        Case("topology: 1000-deep", "topology", ".yaml", ("name: " + "[" * 1000 + "]" * 1000).encode()),
        Case("topology: int node key", "topology", ".yaml", b"nodes: [{1: 2}]\n"),
        Case("topology: huge fat tree", "topology", ".yaml", b"builder: fat_tree\nk: 10000\n",
             max_memory_bytes=DEFAULT_MAX_MEMORY_BYTES),
        Case("topology: not UTF-8", "topology", ".yaml", b"name: \xff\n"),
        Case("topology: 1e308 latency link", "topology", ".yaml",
             b"nodes: [{id: a, role: compute, flops_per_s: 1}, {id: b, role: compute, flops_per_s: 1}]\n"
             b"links: [{src: a, dst: b, bandwidth_bytes_per_s: 1, latency_s: 1e308}]\n"),
    ]
    return cases


def all_cases(n: int) -> list[Case]:
    hostile = hostile_cases()
    return hostile + mutated_cases(np.random.default_rng(SEED), max(0, n - len(hostile)))


# -- running one case in a forked child ----------------------------------------------


def _status_bytes(key: str) -> int:
    """A ``/proc/self/status`` size (VmSize, VmRSS, VmHWM) in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def _reset_peak_rss() -> bool:
    # Linux >= 4.0: the peak RSS (VmHWM) restarts from the current RSS, so
    # that each case's own peak is measured in a worker that runs many.
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _standard_json(summary) -> None:
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    json.loads(dumps_json(summary), parse_constant=refuse)


def _run_case(case: Case, path: Path) -> dict:
    """Load ``path`` and, if it loads, simulate it; what happened, as plain data."""
    outcome: dict = {"outcome": "", "error": "", "message": "", "traceback": ""}
    try:
        if case.kind == "topology":
            load_topology(path, max_memory_bytes=case.max_memory_bytes)
            outcome["outcome"] = "loaded"
        else:
            scenario = load_scenario(path, max_memory_bytes=case.max_memory_bytes)
            result = get_executor("sim").run(scenario)
            _standard_json(result.summary)
            outcome["outcome"] = "simulated"
    except CLEAR_ERRORS as exc:
        message = str(exc)
        outcome.update(outcome="clear", error=type(exc).__name__, message=message[:300])
        problems = []
        if not message.strip():
            problems.append("empty message")
        if isinstance(exc, SimulationError):
            if len(message) > SIMULATION_MESSAGE_CHARS:
                problems.append(f"message of {len(message)} characters")
            if exc.partial is not None:
                try:
                    _standard_json(exc.partial.summary)
                except Exception as json_exc:  # noqa: BLE001 - reported, not raised
                    problems.append(f"partial result: {json_exc}")
        else:
            if len(message) > LOAD_MESSAGE_CHARS:
                problems.append(f"message of {len(message)} characters")
            if str(path) not in message:
                problems.append("message does not name the file")
        if problems:
            outcome.update(outcome="unclear", traceback="; ".join(problems))
    except BaseException as exc:  # noqa: BLE001 - every other exception is what the fuzz looks for
        outcome.update(outcome="traceback", error=type(exc).__name__, message=str(exc)[:300],
                       traceback="".join(traceback.format_exception(exc))[-3000:])
    return outcome


def _measured(case: Case, path: Path) -> dict:
    """Run one case under RLIMIT_AS = current address space + 1 GiB; its outcome, time and peak memory."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (_status_bytes("VmSize") + CASE_MEMORY_BYTES, hard))
    try:
        if case.special == "fifo":
            os.mkfifo(path)
        elif case.special == "dir":
            path.mkdir()
        else:
            path.write_bytes(case.content.replace(b"topology: CASE", f"topology: {path.name}".encode()))
        exact = _reset_peak_rss()
        rss0 = _status_bytes("VmRSS") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        t0 = time.perf_counter()
        outcome = _run_case(case, path)
        outcome["time_s"] = time.perf_counter() - t0
        peak = _status_bytes("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        outcome["memory_bytes"] = max(0, peak - rss0)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        _remove(path)
    return outcome


def _worker(cases: list[Case], work_dir: Path, read_fd: int, write_fd: int) -> None:
    """A forked child: runs the cases whose index the parent sends, one line back per case.

    It leaves after any case that was not clear (its state may be damaged),
    and the parent forks a fresh one.
    """
    code = 0
    try:
        with os.fdopen(read_fd, "r") as requests, os.fdopen(write_fd, "w") as replies:
            for line in requests:
                index = int(line)
                try:
                    outcome = _measured(cases[index], work_dir / f"case{index}{cases[index].suffix}")
                except BaseException as exc:  # noqa: BLE001 - e.g. a MemoryError writing the case file
                    outcome = {"outcome": "traceback", "error": type(exc).__name__, "message": str(exc)[:300],
                               "traceback": traceback.format_exc()[-3000:], "time_s": 0.0, "memory_bytes": 0}
                replies.write(json.dumps(outcome) + "\n")
                replies.flush()
                if outcome["outcome"] not in ("clear", "loaded", "simulated"):
                    break
    except BaseException:  # noqa: BLE001 - the parent reports the case as a crash
        code = 1
    finally:
        os._exit(code)


class _Worker:
    parent_fds: set[int] = set()  # the parent's ends of every worker's pipes

    def __init__(self, cases: list[Case], work_dir: Path):
        to_child, self.requests = os.pipe()
        self.replies, from_child = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            for fd in _Worker.parent_fds | {self.requests, self.replies}:
                os.close(fd)
            _worker(cases, work_dir, to_child, from_child)
        os.close(to_child)
        os.close(from_child)
        _Worker.parent_fds |= {self.requests, self.replies}
        self.buffer = b""
        self.index: int | None = None
        self.started = 0.0

    def send(self, index: int) -> None:
        self.index, self.started = index, time.monotonic()
        os.write(self.requests, f"{index}\n".encode())

    def stop(self, kill: bool = False) -> None:
        if kill:
            os.kill(self.pid, signal.SIGKILL)
        for fd in (self.requests, self.replies):
            os.close(fd)
            _Worker.parent_fds.discard(fd)
        os.waitpid(self.pid, 0)  # a worker leaves on EOF of its requests, or was killed


def run_cases(cases: list[Case], work_dir: Path) -> list[dict]:
    """Every case in a forked worker (``JOBS`` of them); one outcome per case, in order."""
    shutil.copytree(SCENARIO_DIR / "topologies", work_dir / "topologies")
    (work_dir / "topologies.yaml").mkdir()  # a directory with a data file's name
    outcomes: list[dict | None] = [None] * len(cases)
    pending = list(range(len(cases)))[::-1]
    workers = [_Worker(cases, work_dir) for _ in range(min(JOBS, len(cases)))]
    try:
        for worker in workers:
            if pending:
                worker.send(pending.pop())
        while any(w.index is not None for w in workers):
            busy = {w.replies: w for w in workers if w.index is not None}
            ready, _, _ = select.select(list(busy), [], [], 1.0)
            for fd in ready:
                worker = busy[fd]
                chunk = os.read(fd, 1 << 16)
                worker.buffer += chunk
                if chunk and b"\n" not in worker.buffer:
                    continue
                if chunk:
                    line, _, worker.buffer = worker.buffer.partition(b"\n")
                    outcomes[worker.index] = json.loads(line)
                    healthy = outcomes[worker.index]["outcome"] in ("clear", "loaded", "simulated")
                else:  # the worker died in the middle of a case
                    outcomes[worker.index] = {"outcome": "traceback", "error": "crash",
                                              "message": "the worker died with no result", "traceback": "",
                                              "time_s": time.monotonic() - worker.started, "memory_bytes": 0}
                    healthy = False
                worker.index = None
                if not healthy:
                    worker.stop()
                    workers[workers.index(worker)] = worker = _Worker(cases, work_dir)
                if pending:
                    worker.send(pending.pop())
            now = time.monotonic()
            for i, worker in enumerate(workers):
                if worker.index is not None and now - worker.started > CASE_KILL_S:
                    outcomes[worker.index] = {"outcome": "killed", "error": "timeout",
                                              "message": f"killed after {CASE_KILL_S:.0f} s", "traceback": "",
                                              "time_s": now - worker.started, "memory_bytes": 0}
                    worker.stop(kill=True)
                    workers[i] = worker = _Worker(cases, work_dir)
                    if pending:
                        worker.send(pending.pop())
    finally:
        for worker in workers:
            worker.stop(kill=worker.index is not None)
    return outcomes


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


# -- the bar --------------------------------------------------------------------------


def check_fuzz(n: int, tmp_path: Path, capsys) -> None:
    cases = all_cases(n)
    t0 = time.monotonic()
    outcomes = run_cases(cases, tmp_path)
    wall_s = time.monotonic() - t0
    tracebacks = [(c, o) for c, o in zip(cases, outcomes) if o["outcome"] in ("traceback", "unclear", "killed")]
    slow = [(c, o) for c, o in zip(cases, outcomes) if o["time_s"] > CASE_TIME_S]
    large = [(c, o) for c, o in zip(cases, outcomes) if o["memory_bytes"] > CASE_MEMORY_BYTES]
    by_outcome: dict[str, int] = {}
    for o in outcomes:
        key = o["error"] if o["outcome"] == "clear" else o["outcome"]
        by_outcome[key] = by_outcome.get(key, 0) + 1
    slowest = max(range(len(cases)), key=lambda i: outcomes[i]["time_s"])
    largest = max(range(len(cases)), key=lambda i: outcomes[i]["memory_bytes"])
    report = (
        f"\nfuzz: {len(cases)} cases in {wall_s:.1f} s ({JOBS} at a time): {len(tracebacks)} tracebacks, "
        f"{len(slow)} over {CASE_TIME_S:.0f} s, {len(large)} over {CASE_MEMORY_BYTES / 2**30:.0f} GiB; "
        f"max time {outcomes[slowest]['time_s']:.2f} s ({cases[slowest].name[:70]}), "
        f"max memory {outcomes[largest]['memory_bytes'] / 2**20:.1f} MiB ({cases[largest].name[:70]})\n"
        f"fuzz outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(by_outcome.items()))
    )
    with capsys.disabled():
        print(report)
    problems = []
    for c, o in (tracebacks + slow + large)[:10]:
        problems.append(f"{c.name}\n  {o['outcome']} {o['error']}: {o['message'][:300]} "
                        f"({o['time_s']:.2f} s, {o['memory_bytes'] / 2**20:.0f} MiB)\n  {o['traceback']}\n"
                        f"  file starts: {c.content[:200]!r}")
    assert not (tracebacks or slow or large), report + "\n\n" + "\n\n".join(problems)


def test_fuzz_scenarios(tmp_path, capsys):
    check_fuzz(CASES, tmp_path, capsys)


@pytest.mark.slow
def test_fuzz_scenarios_slow(tmp_path, capsys):
    check_fuzz(SLOW_CASES, tmp_path, capsys)


def test_the_harness_counts_tracebacks_memory_hogs_and_hangs(tmp_path, monkeypatch):
    def run_case(case, path):
        if case.name == "type error":
            raise TypeError("a traceback")
        if case.name == "memory hog":
            bytearray(2 * CASE_MEMORY_BYTES)  # RLIMIT_AS: current address space + 1 GiB
        if case.name == "hang":
            time.sleep(60)
        return {"outcome": "clear", "error": "ScenarioError", "message": "fine", "traceback": ""}

    monkeypatch.setattr(__import__(__name__), "_run_case", run_case)
    monkeypatch.setattr(__import__(__name__), "CASE_KILL_S", 1.0)
    cases = [Case(name, "scenario", ".yaml", b"a: 1\n") for name in ("ok", "type error", "memory hog", "hang", "ok")]
    outcomes = run_cases(cases, tmp_path)
    assert [(o["outcome"], o["error"]) for o in outcomes] == [
        ("clear", "ScenarioError"), ("traceback", "TypeError"), ("traceback", "MemoryError"), ("killed", "timeout"),
        ("clear", "ScenarioError")]


def test_the_generator_is_deterministic():
    a = all_cases(200)
    b = all_cases(200)
    assert [(c.name, c.content) for c in a] == [(c.name, c.content) for c in b]
    assert len({c.name for c in a}) > 150


def test_every_shipped_scenario_is_a_fuzz_base_and_loads_under_the_fuzz_limit():
    assert len(SCENARIOS) >= 19 and len(TOPOLOGY_FILES) >= 3
    for path in SCENARIOS:
        load_scenario(path, max_memory_bytes=FUZZ_MAX_MEMORY_BYTES)
    for path in TOPOLOGY_FILES:
        load_topology(path, max_memory_bytes=FUZZ_MAX_MEMORY_BYTES)
