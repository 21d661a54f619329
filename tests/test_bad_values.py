"""Values of the wrong kind in a scenario file: one clear error each, never a traceback or a silent guess."""
import pytest

from workloads.scenario import ScenarioError, load_scenario

BASE_TOPOLOGY = "topology: {builder: ring, n: 2}\n"
BASE_WORKLOAD = "workload: {kind: collective, op: allreduce, nbytes: 8}\n"

CASES = [
    (BASE_WORKLOAD + "stragglers: {kind: [a]}", r"stragglers\.kind must be a name"),
    (BASE_WORKLOAD + "stragglers: {kind: fixed, ranks: 3}", r"stragglers\.ranks must be a list"),
    (BASE_WORKLOAD + "stragglers: {kind: fixed, ranks: [1.7]}", r"stragglers\.ranks must be a list"),
    (BASE_WORKLOAD + "stragglers: {kind: lognormal, sigma: [1]}", r"stragglers\.sigma must be a finite number"),
    (BASE_WORKLOAD + "stragglers: {kind: lognormal, sigma: .inf}", r"stragglers\.sigma must be a finite number"),
    (BASE_WORKLOAD + "energy: {count_idle: 'false'}", r"energy: expected \{count_idle: true\|false\}"),
    (BASE_WORKLOAD + "name: [a, b]", r"name must be text"),
    ("workload: {kind: [a]}", r"workload\.kind: unknown"),
    ("workload: {kind: collective, op: allreduce, nbytes: 8, algorithm: [ring]}", r"workload\.algorithm must be text"),
    ("workload: {kind: collective, op: allreduce, nbytes: 8, compute_flops: .inf}",
     r"workload\.compute_flops must be a finite number"),
    ("workload: {kind: data_parallel, overlap: 'no'}", r"workload\.overlap must be true or false"),
    ("workload: {kind: programs, ranks: {0: 5, 1: []}}", r"workload\.ranks\[0\]: expected a list"),
    ("workload: {kind: programs, ranks: {a: [], 1: []}}", r"workload\.ranks: keys must be ranks"),
    ("workload: {kind: programs, ranks: {0: [{kind: compute, flops: .inf}], 1: []}}",
     r"ranks\[0\]\[0\]: compute: flops must be a finite number"),
    ("workload: {kind: programs, ranks: {0: [{kind: wait, handles: [[h]]}], 1: []}}",
     r"ranks\[0\]\[0\]: wait: handles must be a list of handle names"),
    ("workload: {kind: programs, ranks: {0: [{kind: allreduce, nbytes: 8, blocking: 'no', handle: h}], 1: []}}",
     r"allreduce: blocking must be true or false"),
    ("workload: {kind: programs, ranks: {0: [{kind: allreduce, nbytes: 8, handle: [h]}], 1: []}}",
     r"allreduce: handle must be a string"),
    ("workload: {kind: programs, ranks: {0: [{kind: send, peer: 1, nbytes: 8, tag: -3}], 1: []}}",
     r"send: tag must be an integer >= 0"),
]


@pytest.mark.parametrize("text, message", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_a_value_of_the_wrong_kind_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "s.yaml"
    path.write_text(BASE_TOPOLOGY + text + "\n")
    with pytest.raises(ScenarioError, match=message) as info:
        load_scenario(path)
    assert str(path) in str(info.value)


def test_rank_keys_may_be_digit_strings_as_json_writes_them(tmp_path):
    path = tmp_path / "s.json"
    path.write_text('{"topology": {"builder": "ring", "n": 2}, "workload": {"kind": "programs", "ranks": '
                    '{"0": [{"kind": "send", "peer": 1, "nbytes": 8}], "1": [{"kind": "recv", "peer": 0, "nbytes": 8}]}}}')
    assert [len(p) for p in load_scenario(path).programs()] == [1, 1]
