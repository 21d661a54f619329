"""Bad input is one clear, bounded error: the reader's limits, string keys, counts and memory,
short quotes, non-finite results, and --out checked first.  Each test asserts the message."""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import pytest

from executors import get_executor
from experiments import common, run, scaling, whatif
from experiments.scaling import _straggler_spec, _validate, build_parser, configurations
from simcore.engine import NonFiniteResultError, SimulationError
from experiments.output import json_text as dumps_json, write_result
from topologies import BUILDERS, TopologyError, load_topology, topology_from_dict
from topologies.builders import BUILDER_SIZES
from topologies.io import read_data_file, topology_memory_bytes
from executors.real import worker
from executors.real.launch import scenario_for_workers
from experiments.common import make_executor, max_memory_from_environment, max_memory_or_report
from topologies.limits import DEFAULT_MAX_MEMORY_BYTES, MAX_ALIASES, MAX_MEMORY_ENV, resolve_max_memory_bytes
from topologies.text import format_bytes, parse_bytes, short
from workloads.base import BASE_BYTES
from workloads.collectives import ALGORITHMS, SEMANTICS, lower, lower_in_group, lowered_size
from workloads.ops import Collective
from workloads.scenario import ScenarioError, load_scenario, scenario_from_dict

SCENARIOS = Path(__file__).resolve().parents[1] / "experiments" / "scenarios"
RING = "topology: {builder: ring, n: 4}\n"
ALLREDUCE = "workload: {kind: collective, op: allreduce, nbytes: 1000}\n"


@pytest.fixture(autouse=True)
def default_limit(monkeypatch):
    # The tests assert the default limit; an environment that sets one must not change them,
    # and what a test sets is undone (setenv first, so that teardown restores the original).
    monkeypatch.setenv(MAX_MEMORY_ENV, "")
    monkeypatch.delenv(MAX_MEMORY_ENV)


def write(tmp_path, text, name="s.yaml"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def load_error(path, **kwargs) -> str:
    with pytest.raises(ScenarioError) as info:
        load_scenario(path, **kwargs)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert "Traceback" not in message and len(message) < 1000, message
    return message


# -- the reader ------------------------------------------------------------------------


def test_a_file_that_is_not_utf8_names_the_byte_and_line(tmp_path):
    path = write(tmp_path, (RING + ALLREDUCE).encode() + b"name: caf\xe9\n")
    assert "not UTF-8 text: byte 0xe9 at line 3" in load_error(path)


@pytest.mark.parametrize("text", [
    "description: " + "[" * 1000 + "]" * 1000 + "\n",
    "description:\n" + "".join("  " * (i + 1) + "a:\n" for i in range(1000)) + "  " * 1001 + "1\n",
    "description: " + "[" * 65 + "]" * 65 + "\n",
], ids=["flow", "block", "65"])
def test_yaml_nested_deeper_than_64_levels_is_refused(tmp_path, text):
    assert "nested deeper than 64 levels" in load_error(write(tmp_path, RING + ALLREDUCE + text))


@pytest.mark.parametrize("depth", [65, 1000, 100_000])
def test_json_nested_deeper_than_64_levels_is_refused(tmp_path, depth):
    path = write(tmp_path, '{"description": ' + "[" * depth + "]" * depth + "}", "s.json")
    assert "nested deeper than 64 levels" in load_error(path)


def test_64_levels_are_fine_for_the_reader(tmp_path):
    data = read_data_file(write(tmp_path, "description: " + "[" * 63 + "]" * 63 + "\n", "t.yaml"))
    depth, value = 1, data
    while isinstance(value, (dict, list)) and value:
        value = next(iter(value.values())) if isinstance(value, dict) else value[0]
        depth += 1
    assert depth == 64


@pytest.mark.parametrize("text", ["a: &a [*a]\n", "a: &a {b: *a}\n", "a: &a [1, [2, *a]]\n"])
def test_a_recursive_alias_is_refused(tmp_path, text):
    assert "recursive alias" in load_error(write(tmp_path, RING + ALLREDUCE + text))


def test_billion_laughs_is_refused_at_once(tmp_path):
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)]
    path = write(tmp_path, "\n".join(lines) + "\n" + RING + ALLREDUCE + "name: *l9\n")
    start = time.perf_counter()
    message = load_error(path)
    assert time.perf_counter() - start < 2
    assert "aliases repeat more than 100,000 values (an alias bomb?)" in message and "line 6" in message


def test_too_many_aliases_are_refused(tmp_path):
    text = RING + ALLREDUCE + "x: &x 1\ndescription: [" + ", ".join(["*x"] * (MAX_ALIASES + 1)) + "]\n"
    assert f"more than {MAX_ALIASES} aliases" in load_error(write(tmp_path, text))


def test_ordinary_aliases_and_merge_keys_still_work(tmp_path):
    path = write(tmp_path, "base: &link {bandwidth_bytes_per_s: 1.0e+9, latency_s: 1.0e-6}\n"
                 "topology:\n  builder: ring\n  n: 2\n  <<: *link\n"
                 "workload: {kind: programs, ranks: {0: &p [{kind: compute, flops: 1.0e+9}], 1: *p}}\n", "t.yaml")
    data = read_data_file(path, int_keys_under=("workload.ranks",))
    assert data["topology"]["latency_s"] == 1e-6 and data["workload"]["ranks"][1] == data["workload"]["ranks"][0]


def test_a_file_over_16_mib_is_refused_before_reading(tmp_path):
    path = tmp_path / "big.yaml"
    with path.open("wb") as f:
        f.truncate(17 * 2**20)  # sparse: nothing is read
    assert "the file is 17 MiB, over the limit of 16 MiB" in load_error(path)


def test_a_path_with_a_nul_byte_is_not_a_file_name(tmp_path):
    path = write(tmp_path, 'topology: "a\\0b.yaml"\n' + ALLREDUCE)
    assert "a\\x00b.yaml: not a file name: embedded null byte" in load_error(path)


def test_a_fifo_is_not_read(tmp_path):
    path = tmp_path / "pipe.yaml"
    os.mkfifo(path)
    assert "not a regular file" in load_error(path)


@pytest.mark.parametrize("text, name, expected", [
    ("seed: " + "9" * 5000 + "\n", "s.yaml", "invalid YAML: Exceeds the limit (4300 digits)"),
    ('{"seed": ' + "9" * 5000 + "}", "s.json", "invalid JSON: Exceeds the limit (4300 digits)"),
    ("seed: 2001-13-45\n", "s.yaml", "invalid YAML: month must be in 1..12"),
])
def test_scalars_a_type_cannot_hold_are_invalid_files(tmp_path, text, name, expected):
    assert expected in load_error(write(tmp_path, text, name))


# -- keys ------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    (RING + ALLREDUCE + "1: x\nfoo: 2\n", "s.yaml: key 1 must be a string"),
    (RING + ALLREDUCE + "null: 3\n", "s.yaml: key None must be a string"),
    ("topology: {builder: ring, n: 4, 1.5: 2}\n" + ALLREDUCE, "topology: key 1.5 must be a string"),
    (RING + "workload: {kind: collective, true: 1}\n", "workload: key True must be a string"),
    (RING + "workload: {kind: programs, ranks: {null: [], 1: []}}\n",
     "workload.ranks: key None must be a string or an integer"),
    (RING + "workload: {kind: programs, ranks: [[{kind: compute, 1: 2}], [], [], []]}\n",
     "workload.ranks[0][0]: key 1 must be a string"),
    (RING + ALLREDUCE + "? [a]\n: b\n", "invalid YAML at line 3, column 3: found unhashable key"),
])
def test_mapping_keys_must_be_strings(tmp_path, text, expected):
    assert expected in load_error(write(tmp_path, text))


def test_rank_keys_may_still_be_integers(tmp_path):
    path = write(tmp_path, "topology: {builder: ring, n: 2}\n"
                           "workload: {kind: programs, ranks: {0: [{kind: send, peer: 1, nbytes: 8}], "
                           "1: [{kind: recv, peer: 0, nbytes: 8}]}}\n")
    assert [len(p) for p in load_scenario(path).programs()] == [1, 1]


def test_keys_of_a_dict_built_in_python_are_checked_too():
    data = {"topology": {"builder": "ring", "n": 2}, "workload": {"kind": "collective", None: 1}}
    with pytest.raises(ScenarioError, match=r"^where: workload: key None must be a string$"):
        scenario_from_dict(data, where="where")
    with pytest.raises(TopologyError, match=r"topology: key 1 must be a string"):
        topology_from_dict({"builder": "ring", 1: 2})


def test_a_deep_or_cyclic_python_structure_is_refused_not_a_recursion_error():
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(ScenarioError, match=r"description\[0\]\[0\].*nested deeper than 64 levels"):
        scenario_from_dict({"topology": {"builder": "ring", "n": 2}, "workload": {"kind": "collective"},
                            "description": cyclic}, where="w")


def test_a_topology_file_with_a_non_string_key(tmp_path):
    path = write(tmp_path, "nodes: [{1: 2}]\n", "t.yaml")
    with pytest.raises(TopologyError, match=r"t.yaml: nodes\[0\]: key 1 must be a string"):
        load_topology(path)


# -- counts and memory ------------------------------------------------------------------


@pytest.mark.parametrize("topology, expected", [
    ("{builder: ring, n: 1000000000}", "builder 'ring' makes 1,000,000,000 nodes and 1,000,000,000 links, "
                                       "which need an estimated 2.794 TiB of memory"),
    ("{builder: torus, dims: [1000, 1000, 1000]}", "builder 'torus' makes 1,000,000,000 nodes"),
    ("{builder: fat_tree, k: 10000}", "builder 'fat_tree' makes 250,125,000,000 nodes and 750,000,000,000 links"),
    ("{builder: fully_connected, n: 100000}", "100,000 nodes and 4,999,950,000 links"),
    ("{builder: tree, n: 10000000000}", "builder 'tree' makes 20,000,000,013 nodes"),
    ("{builder: hierarchical, levels: [1000, 1000, 1000]}", "builder 'hierarchical' makes 1,001,001,001 nodes"),
    ("{builder: edge_cloud, n_devices: 10000000000, n_edge: 1}", "builder 'edge_cloud' makes 10,000,000,004 nodes"),
    ("{builder: switch, n: 9223372036854775808}", "switch: n must be <= 2^63-1, got 9223372036854775808"),
    ("{builder: ring, n: 1e9}", "ring: n must be an int, got 1000000000.0"),
])
def test_huge_topologies_are_refused_before_they_are_built(tmp_path, topology, expected):
    start = time.perf_counter()
    message = load_error(write(tmp_path, f"topology: {topology}\n" + ALLREDUCE))
    assert time.perf_counter() - start < 1
    assert expected in message
    if "estimated" in message:
        assert "over the limit of 2 GiB (2147483648 B); raise the limit with --max-memory BYTES or " \
               "DISTSIM_MAX_MEMORY_BYTES=BYTES" in message


@pytest.mark.parametrize("workload, expected", [
    ("{kind: collective, op: allreduce, nbytes: 8, iterations: 1000000000}",
     "the programs, 4,000,000,000 operations and 24,000,000,000 collective steps over 4 ranks (1.266 TiB), "
     "need an estimated 1.266 TiB of memory, over the limit of 2 GiB"),
    ("{kind: collective, op: allreduce, nbytes: 8, iterations: 1e308}",
     "workload.iterations: expected an integer of at most 2^63-1 in size, got 1e+308"),
    ("{kind: data_parallel, steps: 1e308}", "workload.steps: expected an integer of at most 2^63-1 in size"),
    ("{kind: collective, op: allreduce, nbytes: 1000000000000000000000000000000}",
     "workload.nbytes: expected an integer of at most 2^63-1 in size"),
    ("{kind: data_parallel, parameters: 1000000000000000, bucket_bytes: 1}", "32,000,000,000,000,008 operations"),
    ("{kind: pipeline, microbatches: 1000000000000}", "24,000,000,000,004 operations"),
    ("{kind: federated, rounds: 1000000000000}", "operations and 0 collective steps"),
    ("{kind: offload, tasks: 1000000000000}", "20,000,000,000,004 operations"),
    ("{kind: parameter_server, iterations: 1000000000000}", "18,000,000,000,000 operations"),
    ("{kind: programs, ranks: [[{kind: send, peer: 1, nbytes: 1e300}], [], [], []]}",
     "send: nbytes must be an integer in 0..2^63-1, got 1e+300"),
])
def test_huge_workloads_are_refused_before_programs_are_built(tmp_path, workload, expected):
    start = time.perf_counter()
    message = load_error(write(tmp_path, RING + f"workload: {workload}\n"))
    assert time.perf_counter() - start < 1
    assert expected in message


def test_the_limit_can_be_raised_or_lowered(tmp_path, monkeypatch, capsys):
    path = SCENARIOS / "ring8_allreduce.yaml"
    assert "over the limit of 1000 B; raise" in load_error(path, max_memory_bytes=1000)
    assert load_scenario(path, max_memory_bytes=2**30).nranks == 8
    # Below the command line the environment is not read: the keyword, else the default.
    monkeypatch.setenv(MAX_MEMORY_ENV, "1000")
    assert load_scenario(path).nranks == 8
    assert resolve_max_memory_bytes() == DEFAULT_MAX_MEMORY_BYTES
    # The command line reads it, and --max-memory beats it.
    assert max_memory_or_report(argparse.Namespace(max_memory=None)) == 1000
    assert max_memory_or_report(argparse.Namespace(max_memory=2**30)) == 2**30
    monkeypatch.setenv(MAX_MEMORY_ENV, "4GiB")
    assert max_memory_from_environment() == 4 * 2**30
    monkeypatch.setenv(MAX_MEMORY_ENV, " ")
    assert max_memory_from_environment() is None
    monkeypatch.setenv(MAX_MEMORY_ENV, "lots")
    assert max_memory_or_report(argparse.Namespace(max_memory=None)) is None
    assert capsys.readouterr().err == ("error: environment variable DISTSIM_MAX_MEMORY_BYTES: expected a number of "
                                       "bytes such as 4294967296, 4e9 or 4GiB, got 'lots'\n")


@pytest.mark.parametrize("text, expected", [
    ("2147483648", 2**31), ("2e9", 2 * 10**9), ("2GiB", 2**31), ("512 MiB", 512 * 2**20), ("4G", 4 * 10**9),
    ("1k", 1000),
])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "0", "-5", "1e30", "2 furlongs", "nan"])
def test_parse_bytes_refuses(text):
    with pytest.raises(ValueError, match="bytes"):
        parse_bytes(text)


def test_builder_sizes_match_what_the_builders_make():
    cases = [
        ("ring", dict(n=2)), ("ring", dict(n=7)), ("switch", dict(n=5)), ("fully_connected", dict(n=6)),
        ("tree", dict(n=2)), ("tree", dict(n=17, arity=4)), ("tree", dict(n=100, arity=3)),
        ("torus", dict(dims=(4, 4))), ("torus", dict(dims=(2, 3, 4))), ("fat_tree", dict(k=4)),
        ("fat_tree", dict(k=6, n=20)), ("hierarchical", dict(levels=(4, 8))), ("hierarchical", dict(levels=(2, 3, 5))),
        ("hierarchical", dict(levels=(1, 1, 2))), ("edge_cloud", dict(n_devices=8, n_edge=2)),
        ("edge_cloud", dict(n_devices=3, n_edge=1, n_cloud=0)), ("gpu_cluster", dict(nodes=1)),
        ("gpu_cluster", dict(nodes=3, preset="dgx_h100", nics_per_leaf=2, spines=3)),
        ("gpu_cluster", dict(nodes=5, gpus_per_node=3, nics_per_leaf=4, fabric="fat_tree")),
    ]
    assert {name for name, _ in cases} == set(BUILDERS) == set(BUILDER_SIZES)
    for name, kwargs in cases:
        graph = BUILDERS[name](**kwargs).graph
        nodes, links = BUILDER_SIZES[name](**kwargs)
        assert nodes == graph.number_of_nodes() and graph.number_of_edges() <= links <= 2 * graph.number_of_edges()


def test_lowered_size_bounds_every_algorithm():
    for op, algorithms in ALGORITHMS.items():
        for algorithm in algorithms:
            for p in list(range(1, 34)) + [64, 100]:
                groups = None
                if algorithm == "hierarchical":
                    groups = tuple(tuple(range(i, min(i + 5, p))) for i in range(0, p, 5))
                root = p - 1 if SEMANTICS[op].rooted else 0
                if op == "alltoallv":
                    # Rank r sends r + j bytes to rank j; the pattern does not depend on counts.
                    ops = [Collective(op, algorithm=algorithm, send_nbytes=tuple(range(r, r + p)),
                                      recv_nbytes=tuple(range(r, r + p))) for r in range(p)]
                else:
                    ops = [Collective(op, 1000, algorithm=algorithm, root=root)] * p
                steps = peers = 0
                for rank in range(p):
                    lowered = list(lower(ops[rank], rank, p, groups))
                    steps += len(lowered)
                    peers += len({t.peer for s in lowered for t in s.sends + s.recvs})
                bound_steps, bound_peers = lowered_size(op, algorithm, p, groups)
                assert steps <= bound_steps <= 4 * steps + 8, (op, algorithm, p)
                assert peers <= bound_peers, (op, algorithm, p)


def test_workload_sizes_bound_the_programs_of_every_shipped_scenario():
    for path in sorted(SCENARIOS.glob("*.yaml")):
        scenario = load_scenario(path)
        size = scenario.workload.size(scenario.nranks, scenario.topology.groups())
        programs = scenario.programs()
        pg, servers = scenario.groups, scenario.topology.groups()
        # Each collective lowered where the engine runs it: on its rank's group.
        steps = sum(len(list(lower_in_group(op, pg.members(op.group, r), pg.index(op.group, r), servers)))
                    for r, program in enumerate(programs) for op in program if isinstance(op, Collective))
        assert sum(map(len, programs)) <= size.operations <= 10 * sum(map(len, programs)) + 10, path.name
        assert steps <= size.steps, path.name


def test_shipped_scenarios_and_the_scaling_study_stay_well_inside_the_default_limit():
    for path in sorted(SCENARIOS.glob("*.yaml")):
        s = load_scenario(path)
        estimate = topology_memory_bytes(s.topology) + s.workload.size(s.nranks, s.topology.groups()).memory_bytes(s.nranks)
        # Beyond what every run loads (BASE_BYTES).
        assert estimate - BASE_BYTES < DEFAULT_MAX_MEMORY_BYTES / 100, (path.name, format_bytes(estimate))
    parser = build_parser()
    args = parser.parse_args([])
    _validate(args, parser)
    for config in configurations(args, _straggler_spec(args, parser)):
        s = scenario_from_dict(config["scenario"])
        estimate = topology_memory_bytes(s.topology) + s.workload.size(s.nranks, s.topology.groups()).memory_bytes(s.nranks)
        # The largest points (1024 ranks) are estimated at ~130 MiB; their measured peak RSS is ~140 MiB,
        # 25 MiB over the imports.
        assert estimate < DEFAULT_MAX_MEMORY_BYTES / 3, (config["scenario"]["name"], format_bytes(estimate))


def test_experiments_take_max_memory(tmp_path, capsys):
    path = str(SCENARIOS / "ring8_allreduce.yaml")
    assert run.main([path, "--out", str(tmp_path / "r"), "--max-memory", "1000"]) == 2
    assert "over the limit of 1000 B" in capsys.readouterr().err
    assert whatif.main([path, "--vary", "seed=1,2", "--out", str(tmp_path / "w"), "--max-memory", "1k"]) == 2
    assert "over the limit of 1000 B" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        scaling.main(["--sizes", "2", "1024", "--topologies", "ring", "--out", str(tmp_path / "s"),
                      "--max-memory", "100MiB", "--no-plots"])
    assert info.value.code == 2
    assert "ring N=1024: the topology" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run.main([path, "--max-memory", "lots"])
    assert "argument --max-memory: expected a number of bytes" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in "rws")


# -- short quotes -------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    "x" * 1_000_000, list(range(1_000_000)), {f"k{i}": i for i in range(100_000)}, 10**3000,
    b"y" * 100_000, [[[[[[[[[[1]]]]]]]]]], float("nan"),
])
def test_short_quotes_any_value_in_at_most_80_characters(value):
    text = short(value)
    assert 0 < len(text) <= 80


def test_short_of_a_recursive_list():
    cyclic: list = []
    cyclic.append(cyclic)
    assert len(short(cyclic)) <= 80


def test_short_quotes_small_values_as_repr_does():
    for value in ("ring", 1.5, [1, 2], {"a": 1, "b": [2]}, None, True, (1,)):
        assert short(value) == repr(value)


@pytest.mark.parametrize("text", [
    "name: [" + "y" * 1_000_000 + "]\n",
    "".join(f"k{i}: {i}\n" for i in range(20_000)),
    "k" * 100_000 + ": 1\n",
    "stragglers: {kind: fixed, " + "p" * 100_000 + ": 1}\n",
])
def test_messages_quoting_huge_values_stay_short(tmp_path, text):
    message = load_error(write(tmp_path, RING + ALLREDUCE + text))
    assert len(message) < 500


def test_a_huge_value_in_a_python_dict_is_quoted_short():
    data = {"topology": {"builder": "ring", "n": list(range(10**6))}, "workload": {"kind": "collective"}}
    with pytest.raises(ScenarioError) as info:
        scenario_from_dict(data, where="w")
    assert "ring: n must be an int, got (0, 1, 2, 3, 4, 5, 6, 7, ...)" in str(info.value)
    assert len(str(info.value)) < 200


# -- results that are not finite ----------------------------------------------------------


def test_an_infinite_makespan_is_an_error_naming_the_link(tmp_path):
    scenario = load_scenario(write(tmp_path, "topology: {builder: ring, n: 4, latency_s: 1e308}\n" + ALLREDUCE))
    with pytest.raises(NonFiniteResultError) as info:
        get_executor("sim").run(scenario)
    message = str(info.value)
    assert message.startswith("the result is not finite: makespan_s=inf")
    assert "first operation with a non-finite end or energy: rank 0 op 0 (allreduce)" in message
    assert "likely cause: link n0->n1 latency_s=1e+308 (and 7 more links)" in message
    assert isinstance(info.value, SimulationError) and info.value.partial is not None
    written = write_result(info.value.partial, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text(), parse_constant=pytest.fail)
    assert summary["makespan_s"] is None and tmp_path / "out" / "summary.json" in written


@pytest.mark.parametrize("text, expected", [
    ("topology: {builder: ring, n: 4, flops_per_s: 1e-320}\n"
     "workload: {kind: collective, op: allreduce, nbytes: 8, compute_flops: 1e300}\n",
     "rank 0 op 0 (compute) would take inf s: 1e+300 flops at 9.99989e-321 flop/s (node n0) with slowdown 1"),
    ("topology: {builder: ring, n: 4, bandwidth_bytes_per_s: 1e-320}\n" + ALLREDUCE,
     "likely cause: link n0->n1 bandwidth_bytes_per_s=9.99989e-321"),
    ("topology: {builder: ring, n: 4, busy_power_w: 1e308}\n"
     "workload: {kind: collective, op: allreduce, nbytes: 8, compute_flops: 1e300}\n",
     "likely cause: rank 0 (node n0) busy_power_w=1e+308 (and 3 more ranks)"),
    ("topology: {builder: ring, n: 4, energy_per_byte_j: 1e308}\n" + ALLREDUCE,
     "likely cause: link n0->n1 energy_per_byte_j=1e+308"),
    (RING + "workload: {kind: collective, op: allreduce, nbytes: 8, compute_flops: 1e12}\n"
            "stragglers: {kind: pareto, alpha: 1e-300}\n", "with slowdown inf"),
])
def test_non_finite_results_name_their_cause(tmp_path, text, expected):
    scenario = load_scenario(write(tmp_path, text))
    with pytest.raises(NonFiniteResultError, match=None) as info:
        get_executor("sim").run(scenario)
    assert expected in str(info.value)


def test_run_exits_1_on_a_non_finite_result_and_writes_standard_json(tmp_path, capsys):
    path = write(tmp_path, "topology: {builder: ring, n: 4, latency_s: 1e308}\n" + ALLREDUCE)
    assert run.main([str(path), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "the result is not finite: makespan_s=inf" in err and "latency_s=1e+308" in err
    text = (tmp_path / "out" / "summary.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    json.loads((tmp_path / "out" / "trace.json").read_text(), parse_constant=pytest.fail)


def test_dumps_json_writes_null_for_nan_and_infinity():
    assert json.loads(dumps_json({"a": math.inf, "b": [math.nan, 1.0]})) == {"a": None, "b": [None, 1.0]}


# -- --out is checked before any work -----------------------------------------------------


def _mains(out):
    path = str(SCENARIOS / "ring8_allreduce.yaml")
    return [
        lambda: run.main([path, "--out", out]),
        lambda: whatif.main([path, "--vary", "seed=1,2", "--out", out, "--no-plots"]),
        lambda: scaling.main(["--sizes", "2", "--topologies", "ring", "--out", out, "--no-plots"]),
    ]


@pytest.mark.parametrize("which", [0, 1, 2], ids=["run", "whatif", "scaling"])
def test_an_out_that_is_a_file_fails_at_once(tmp_path, capsys, which):
    (tmp_path / "taken").write_text("")
    start = time.perf_counter()
    assert _mains(str(tmp_path / "taken"))[which]() == 2
    assert time.perf_counter() - start < 5
    err = capsys.readouterr().err
    assert err.strip() == f"error: --out {tmp_path / 'taken'}: exists and is not a folder"


@pytest.mark.parametrize("which", [0, 1, 2], ids=["run", "whatif", "scaling"])
def test_an_out_below_a_file_fails_at_once(tmp_path, capsys, which):
    (tmp_path / "taken").write_text("")
    assert _mains(str(tmp_path / "taken" / "sub"))[which]() == 2
    assert capsys.readouterr().err.strip() == f"error: --out {tmp_path / 'taken' / 'sub'}: {tmp_path / 'taken'} is not a folder"


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs /proc (a place no one can write)")
@pytest.mark.parametrize("which", [0, 1, 2], ids=["run", "whatif", "scaling"])
def test_an_out_where_nothing_can_be_written_fails_at_once(capsys, which):
    assert _mains("/proc/distsim-results")[which]() == 2
    assert capsys.readouterr().err.startswith("error: --out /proc/distsim-results: cannot write there")


def test_out_dir_problem_accepts_new_and_existing_folders(tmp_path):
    assert common.out_dir_problem(tmp_path) is None
    assert common.out_dir_problem(tmp_path / "a" / "b") is None
    assert not (tmp_path / "a").exists()
    assert os.listdir(tmp_path) == []  # the probe leaves nothing behind


def test_a_real_runs_ranks_load_the_scenario_under_the_launchers_limit(tmp_path):
    # No environment variable carries the limit to the ranks: the run's options do.
    scenario = load_scenario(SCENARIOS / "ring8_allreduce.yaml")
    args = argparse.Namespace(mode="native", warmup=1, repeats=3, timing="auto", timeout=120.0, check=False,
                              no_pin=False, network="host", hostfile=None)
    executor = make_executor("torch", args, max_memory_bytes=1000)
    assert executor.options.max_memory_bytes == 1000
    (tmp_path / "scenario.json").write_text(json.dumps(scenario_for_workers(scenario)))
    (tmp_path / "options.json").write_text(json.dumps({**executor.options.to_dict(), "backend": "torch"}))
    with pytest.raises(ScenarioError, match="over the limit of 1000 B"):
        worker.main([str(tmp_path)])
