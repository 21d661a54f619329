"""The transformer workload: FLOP accounting against Narayanan et al., the
pipeline schedules' makespans in closed form, and lowerings that validate and
simulate without deadlock for every schedule, ZeRO stage, recompute mode,
sequence parallelism and expert parallelism."""
from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest

from executors import get_executor
from executors.simulated import SimulatedExecutor
from experiments import run as run_cli
from simcore.engine import Simulator
from topologies import LinkSpec, NodeSpec
from topologies.builders import fully_connected
from workloads import workload_from_dict
from workloads.groups import ProcessGroups
from workloads.ops import Collective, Compute, Irecv, Isend
from workloads.scenario import Scenario, ScenarioError, load_scenario, scenario_from_dict
from workloads.transformer import (
    TransformerTraining, attention_score_flops, format_training_report, ideal_bubble_fraction, layer_forward_flops, logits_forward_flops,
    model_flops_per_step, narayanan_flops_per_step, schedule_order, training_report,
)
from workloads.transformer.memory import check_fits, memory_per_stage
from workloads.transformer.spec import (ParallelSpec, TrainingSpec, active_parameters, load_model, stage_layers,
                                        total_parameters)
from workloads.validate import validate_programs

SCENARIO = "experiments/scenarios/gpt_tiny_3d.yaml"
TINY = {"name": "tiny", "layers": 4, "hidden": 256, "heads": 8, "seq_len": 64, "vocab": 512}
MOE = {"name": "tiny-moe", "layers": 4, "hidden": 256, "heads": 8, "kv_heads": 4, "seq_len": 64, "vocab": 512,
       "gated_mlp": True, "experts": 4, "top_k": 2, "capacity_factor": 1.25}
FLOPS_PER_S = 1e12


def nranks_of(w: TransformerTraining) -> int:
    return w.tp * w.pp * (w.dp or 1)


def simulate(w: TransformerTraining, bandwidth: float = 1e20, latency: float = 0.0):
    """Validate and simulate ``w`` on a fully connected topology (free communication by default)."""
    n = nranks_of(w)
    programs = w.programs(n)
    groups = ProcessGroups(n, w.process_groups(n))
    validate_programs(programs, n, None, groups)
    if n == 1:
        return programs, None  # no topology of one rank to simulate on
    topology = fully_connected(n, link=LinkSpec(bandwidth, latency_s=latency),
                               node=NodeSpec(flops_per_s=FLOPS_PER_S))
    return programs, Simulator(topology, programs, process_groups=groups).run()


def program_flops(programs) -> float:
    return sum(op.flops for program in programs for op in program if type(op) is Compute)


# -- FLOP accounting ------------------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt3_175b", TINY])
def test_model_flops_of_a_gpt_shape_are_narayanans(model):
    spec = load_model(model)
    training = TrainingSpec(global_batch=1536)
    assert model_flops_per_step(spec, training) == pytest.approx(narayanan_flops_per_step(spec, training), rel=1e-12)


def test_gpt3_step_flops_are_six_parameters_per_token_and_a_few_percent():
    # Attention (s / 6h = 2.8%) and the logits (V / 12hL = 0.4%) on top of 6 P T (12 L h^2 is 99.4% of P).
    spec = load_model("gpt3_175b")
    flops = model_flops_per_step(spec, TrainingSpec(global_batch=1536))
    six_pt = 6 * 175e9 * 1536 * 2048
    assert flops == pytest.approx(0.994 * 1.0314 * six_pt, rel=1e-3)


def test_llama3_405b_has_its_405_billion_parameters():
    # Per layer: Q and O h x h, K and V h x 1024 (8 heads of 128), three h x 53248 SwiGLU matrices; 126
    # layers and two 128256 x h embeddings: 405.8 billion (norms add 4 million).
    spec = load_model("llama3_405b")
    h = 16384
    per_layer = 2 * h * h + 2 * h * 1024 + 3 * h * 53248
    assert active_parameters(spec) == pytest.approx(126 * per_layer + 2 * 128256 * h, rel=1e-4)
    assert 405e9 < active_parameters(spec) < 406.5e9


@pytest.mark.parametrize("preset", ["gpt3_175b", "llama_70b", "mixtral_8x7b", "llama3_405b"])
def test_preset_flops_are_six_active_parameters_per_token_plus_attention(preset):
    # 6 x (the parameters a token multiplies by: all active ones but the input
    # embedding, a lookup) x tokens, plus attention's 12 L s^2 h per sequence;
    # biases and norms, which add no GEMM FLOPs, are well under 0.1%.
    spec = load_model(preset)
    training = TrainingSpec(global_batch=64)
    tokens = training.global_batch * spec.seq_len
    expected = (6 * (active_parameters(spec) - spec.vocab * spec.hidden) * tokens
                + 12 * training.global_batch * spec.layers * spec.seq_len**2 * spec.hidden)
    assert model_flops_per_step(spec, training) == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
@pytest.mark.parametrize("model,layout", [
    (TINY, {"tp": 2, "pp": 2, "dp": 2}),
    (TINY, {"tp": 2, "pp": 2, "dp": 1, "sequence_parallel": True, "schedule": "interleaved", "virtual_stages": 2}),
    (MOE, {"tp": 2, "pp": 1, "dp": 4, "ep": 2}),
])
def test_program_flops_are_the_accounting(model, layout, recompute):
    w = TransformerTraining(model=model, global_batch=8, recompute=recompute, steps=2, **layout)
    programs = w.programs(nranks_of(w))
    spec = w.model_spec
    extra = {"none": 0.0, "selective": attention_score_flops(spec),
             "full": layer_forward_flops(spec, capacity=True)}[recompute] * spec.layers * 8
    assert program_flops(programs) == pytest.approx(2 * w.hardware_flops_per_step(), rel=1e-12)
    if not spec.moe:
        assert w.hardware_flops_per_step() == pytest.approx(w.model_flops_per_step() + extra, rel=1e-12)
    else:
        # The experts' capacity padding is executed but is not the model's.
        padding = 3 * 8 * spec.layers * 3 * 2 * spec.seq_len * spec.top_k * 0.25 * spec.hidden * spec.ffn_hidden
        assert w.hardware_flops_per_step() == pytest.approx(w.model_flops_per_step() + extra + padding, rel=1e-12)


def test_gemm_shapes_per_tensor_parallel_rank():
    model = dict(TINY, kv_heads=2)
    w = TransformerTraining(model=model, global_batch=2, tp=2)
    by_label = {op.label: op for op in w.programs(2)[0] if type(op) is Compute}
    s, h, kv, t = 64, 256, 2 * 32, 2
    assert by_label["forward:qkv"].gemm == (s, (h + 2 * kv) // t, h)
    assert by_label["forward:scores"].gemm == (s, s, h // 8)
    assert by_label["forward:scores"].flops == 2 * s * s * h / t
    assert by_label["forward:proj"].gemm == (s, h, h // t)
    assert by_label["forward:mlp_up"].gemm == (s, 4 * h // t, h)
    assert by_label["forward:logits"].flops == pytest.approx(2 * s * h * 512 / t)
    assert by_label["backward:qkv"].flops == 2 * by_label["forward:qkv"].flops
    assert by_label["forward:softmax_dropout"].flops == 0 and by_label["forward:softmax_dropout"].nbytes > 0
    assert by_label["optimizer"].nbytes > 0 and all(op.precision == "bf16" for op in by_label.values())


# -- schedules in closed form -----------------------------------------------------------


@pytest.mark.parametrize("schedule,p,v,m", [
    ("gpipe", 4, 1, 8), ("1f1b", 4, 1, 8), ("1f1b", 4, 1, 2), ("gpipe", 2, 1, 5),
    ("interleaved", 4, 2, 8), ("interleaved", 2, 4, 4), ("interleaved", 2, 2, 2),
])
def test_pipeline_makespan_in_closed_form(schedule, p, v, m):
    # Free communication, tp = dp = 1: each stage's forward of a micro-batch
    # takes t_f (its layers), backward t_b = 2 t_f; the last stage adds the
    # logits (t_f' = t_f + logits, t_b' = t_b + 2 logits).  It is then the
    # slowest and never idles after its first forward, so a step takes
    # (p - 1)(t_f + t_b) / v + m (t_f' + t_b'): with uniform stages
    # (m + p - 1)(t_f + t_b) for GPipe and 1F1B, and Narayanan et al.'s
    # (m + (p - 1) / v)(t_f + t_b) interleaved.
    model = dict(TINY, layers=8, vocab=1000)
    w = TransformerTraining(model=model, global_batch=m, pp=p, schedule=schedule, virtual_stages=v)
    spec = w.model_spec
    t_f = layer_forward_flops(spec) * spec.layers / p / FLOPS_PER_S
    t_b = 2 * t_f
    logits_s = logits_forward_flops(spec) / FLOPS_PER_S
    _, result = simulate(w)
    expected = (p - 1) * (t_f + t_b) / v + m * (t_f + t_b + 3 * logits_s)
    assert result.makespan_s == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("schedule,v", [("1f1b", 1), ("gpipe", 1), ("interleaved", 2)])
def test_bubble_with_uniform_stages(schedule, v):
    # A vocabulary of 1 makes the logits ~1e-4 of a stage: the stages are
    # uniform, the measured bubble is the ideal one.
    p, m = 4, 8
    w = TransformerTraining(model=dict(TINY, layers=8, hidden=1024, vocab=1), global_batch=m, pp=p,
                            schedule=schedule, virtual_stages=v)
    programs, result = simulate(w)
    report = training_report(w, p, result.makespan_s, result.records, result.per_group, [FLOPS_PER_S] * p)
    ideal = ideal_bubble_fraction(schedule, p, m, v)
    assert ideal == pytest.approx((p - 1) / (v * m + p - 1))
    assert report["bubble_fraction"] == pytest.approx(ideal, abs=1e-3)
    assert report["bubble_fraction_ideal"] == ideal
    # Compute only: MFU is the busy share, the whole step's FLOPs at the ranks' peak.
    assert report["mfu"] == pytest.approx(1 - report["bubble_fraction"], abs=1e-3)
    assert report["tokens_per_s"] == pytest.approx(m * 64 / result.makespan_s)


def test_schedule_orders():
    assert schedule_order("1f1b", 4, 0, 6) == [(True, 0, 0), (True, 1, 0), (True, 2, 0), (True, 3, 0),
                                               (False, 0, 0), (True, 4, 0), (False, 1, 0), (True, 5, 0),
                                               (False, 2, 0), (False, 3, 0), (False, 4, 0), (False, 5, 0)]
    assert schedule_order("1f1b", 4, 3, 2) == [(True, 0, 0), (False, 0, 0), (True, 1, 0), (False, 1, 0)]
    for stage in range(4):
        order = schedule_order("interleaved", 4, stage, 8, 2)
        # Every (micro-batch, chunk) runs forward once and backward once, forward first.
        assert Counter(order) == Counter([(f, i, c) for f in (True, False) for i in range(8) for c in range(2)])
        assert all(order.index((True, i, c)) < order.index((False, i, c)) for i in range(8) for c in range(2))
        # Megatron-LM's warm-up: 2 (p - stage - 1) + (v - 1) p forwards.
        warmup = next(k for k, a in enumerate(order) if not a[0]) - 1
        assert warmup == 2 * (4 - stage - 1) + 4


# -- every configuration lowers, validates and simulates ------------------------------------


CONFIGS = (
    [dict(tp=2, pp=2, dp=2, schedule=s, virtual_stages=v, zero=z)
     for s, v in (("gpipe", 1), ("1f1b", 1), ("interleaved", 2)) for z in (0, 1, 2, 3)]
    + [dict(tp=2, pp=2, dp=2, recompute=r, sequence_parallel=sp)
       for r in ("none", "selective", "full") for sp in (False, True)]
    + [dict(tp=tp, pp=pp, dp=dp) for tp in (1, 2) for pp in (1, 2) for dp in (1, 2)]
    + [dict(model=MOE, tp=tp, pp=pp, dp=dp, ep=2, zero=z, sequence_parallel=tp > 1, recompute=r)
       for tp, pp, dp, z, r in ((1, 1, 2, 0, "none"), (2, 2, 2, 0, "full"), (1, 2, 4, 0, "selective"),
                                (1, 1, 4, 3, "none"), (2, 1, 4, 1, "full"), (1, 2, 2, 2, "none"))]
    + [dict(model=MOE, tp=2, pp=2, dp=1, schedule="interleaved", virtual_stages=2, zero=3)]
    + [dict(model=MOE, tp=2, pp=1, dp=2, ep=1, zero=z) for z in (0, 3)]
)


def config_id(config: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in config.items() if k != "model") + (",moe" if "model" in config else "")


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_every_configuration_validates_and_simulates(config):
    config = dict(config)
    model = config.pop("model", TINY)
    w = TransformerTraining(model=model, global_batch=8, bucket_bytes=2**20, steps=2, **config)
    n = nranks_of(w)
    programs, result = simulate(w, bandwidth=25e9, latency=5e-6)
    if result is not None:
        assert result.makespan_s > 0
        assert len(result.records) == sum(len(p) for p in programs)
        report = training_report(w, n, result.makespan_s, result.records, result.per_group, [FLOPS_PER_S] * n)
        # Every exposed second is counted against a group kind (no wait mixes groups).
        assert "other" not in report["exposed_comm_s"]
        assert 0 < report["mfu"] <= report["hfu"] < 1
    assert w.size(n).operations == sum(len(p) for p in programs)
    assert program_flops(programs) == pytest.approx(2 * w.hardware_flops_per_step(), rel=1e-12)
    kinds = Counter(op.kind for p in programs for op in p)
    if w.tp > 1:
        assert kinds["reduce_scatter" if w.sequence_parallel else "allreduce"] > 0
    if w.pp > 1:
        assert kinds["isend"] == kinds["irecv"] > 0
    if w.ep > 1:
        assert kinds["alltoall"] > 0
    if w.zero == 3 and w.dp > 1:
        assert kinds["allgather"] > 0


def test_groups_follow_the_layout():
    w = TransformerTraining(model=MOE, global_batch=8, tp=2, pp=2, dp=4, ep=2)
    groups = w.process_groups(16)
    assert groups["tp"][0] == (0, 1)
    assert groups["dp"][0] == (0, 2, 4, 6)
    assert groups["pp"][0] == (0, 8)
    assert groups["ep"][0] == (0, 2)
    # Expert data parallelism: the ranks of a DP group at the same EP position.
    assert groups["edp"][:2] == ((0, 4), (2, 6))


# -- data-parallel gradients --------------------------------------------------------------


@pytest.mark.parametrize("model,layout", [
    (TINY, dict(tp=2, pp=2, dp=2)),
    (TINY, dict(tp=1, pp=2, dp=4, schedule="interleaved", virtual_stages=2)),
    (MOE, dict(tp=2, pp=1, dp=4, ep=2)),
])
def test_gradient_bytes_reduced_per_step(model, layout):
    w = TransformerTraining(model=model, global_batch=16, bucket_bytes=100_000, steps=2, **layout)
    n = nranks_of(w)
    layout_ = w.layout(n)
    for rank, program in enumerate(w.programs(n)):
        dense, expert = w.rank_parameters(n, layout_.coordinates(rank)["pp"])
        reduced = Counter()
        for op in program:
            if type(op) is Collective and op.group in ("dp", "edp"):
                assert op.op == "allreduce" and not op.blocking and op.nbytes <= 100_000
                reduced[op.group] += op.nbytes
        assert reduced["dp"] == 2 * 2 * dense  # bf16 gradients, two steps
        assert reduced["edp"] == (2 * 2 * expert if w.ep > 1 else 0)


@pytest.mark.parametrize("model", [TINY, MOE, "llama_70b"])
def test_rank_parameters_add_up_to_the_model_without_tensor_parallelism(model):
    w = TransformerTraining(model=model, global_batch=8, pp=4 if model != "llama_70b" else 8)
    n = w.pp
    held = sum(sum(w.rank_parameters(n, stage)) for stage in range(w.pp))
    assert held == total_parameters(w.model_spec)


def test_zero_stages_reduce_scatter_and_gather():
    for zero in (1, 2, 3):
        w = TransformerTraining(model=TINY, global_batch=8, pp=2, dp=2, zero=zero)
        program = w.programs(4)[0]
        dense, _ = w.rank_parameters(4, 0)
        scattered = sum(op.nbytes for op in program if type(op) is Collective and op.op == "reduce_scatter")
        gathered = [op for op in program if type(op) is Collective and op.op == "allgather"]
        assert scattered == 2 * dense
        if zero < 3:
            # One gather of the updated weights after the optimizer.
            assert [op.nbytes for op in gathered] == [2 * dense] and gathered[0].blocking
        else:
            # Every block's weights before its forward and its backward, for each micro-batch, prefetched.
            assert sum(op.nbytes for op in gathered) == 2 * dense * (2 * 4)  # 4 micro-batches
            assert all(not op.blocking for op in gathered)


def test_pipeline_messages():
    w = TransformerTraining(model=TINY, global_batch=4, tp=2, pp=2, sequence_parallel=True)
    program = w.programs(4)[0]
    sends = [op for op in program if type(op) is Isend]
    recvs = [op for op in program if type(op) is Irecv]
    # 4 activations out, 4 gradients in; with SP each TP rank sends its s/t slice of b s h.
    assert len(sends) == len(recvs) == 4
    assert {op.nbytes for op in sends + recvs} == {2 * 64 * 256 // 2}
    assert {(op.group, op.peer) for op in sends + recvs} == {("pp", 1)}


@pytest.mark.parametrize("layers,pp,v,expected", [
    (126, 16, 1, (7,) + (8,) * 14 + (7,)),   # Llama 3 405B on 16 stages
    (96, 8, 1, (12,) * 8),                   # equal where they divide
    (4, 3, 1, (1, 2, 1)),
    (10, 2, 3, (1, 2, 2, 2, 2, 1)),          # interleaved: the virtual stages at the ends hold the fewer
    (7, 7, 1, (1,) * 7),
])
def test_layers_split_over_stages_as_evenly_as_they_can_the_ends_short_first(layers, pp, v, expected):
    par = ParallelSpec(pp=pp, schedule="interleaved" if v > 1 else "1f1b", virtual_stages=v)
    assert stage_layers(layers, par) == expected


def test_stages_of_unequal_depth_run_every_layer_once_and_hold_every_parameter():
    # 4 layers over 3 stages (1, 2, 1): the programs' forward GEMM FLOPs and the stages' parameters are the
    # model's, as with equal stages.
    w = TransformerTraining(model=TINY, global_batch=6, pp=3)
    programs = w.programs(3)
    spec = w.model_spec
    assert program_flops(programs) == pytest.approx(w.hardware_flops_per_step(), rel=1e-12)
    assert w.hardware_flops_per_step() == pytest.approx(w.model_flops_per_step(), rel=1e-12)
    reports = memory_per_stage(spec, w.parallelism, w.training, 3)
    assert [r.layers for r in reports] == [1, 2, 1]
    explicit = TransformerTraining(model=TINY, global_batch=6, pp=3, stage_layers=[2, 1, 1])
    assert [r.layers for r in memory_per_stage(spec, explicit.parallelism, explicit.training, 3)] == [2, 1, 1]
    assert explicit.to_dict()["stage_layers"] == [2, 1, 1]


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fields,nranks,message", [
    (dict(tp=3), 6, "workload.tp 3 must divide model.heads"),
    (dict(tp=2, pp=2), 6, "does not divide"),
    (dict(tp=2, pp=2, dp=3, global_batch=12), 8, "tp 2 x pp 2 x dp 3 = 12 ranks, but the topology has 8"),
    (dict(pp=5, global_batch=10), 5, "pp 5 x virtual_stages 1 = 5 virtual stages, more than the model's 4 layers"),
    (dict(pp=2, stage_layers=[1, 2]), 2, "workload.stage_layers sum to 3 layers, but the model has 4"),
    (dict(pp=2, stage_layers=[4]), 2, "workload.stage_layers has 1 entries, but pp 2 x virtual_stages 1 = 2"),
    (dict(pp=2, stage_layers=[4, 0]), 2, r"workload.stage_layers\[1\] must be an integer >= 1"),
    (dict(pp=2, schedule="interleaved", virtual_stages=2, global_batch=3), 2, r"= 3\) to be a multiple of pp 2"),
    (dict(global_batch=6, dp=4), 4, "global_batch 6 is not a multiple"),
    (dict(ep=2), 2, "needs a mixture-of-experts model"),
    (dict(model=MOE, ep=3), 3, "ep 3 must divide model.experts"),
    (dict(schedule="interleaved", virtual_stages=2), 1, "interleaved needs pp >= 2"),
    (dict(zero=4), 1, "workload.zero"),
    (dict(model=dict(TINY, hidden=100)), 1, "model: hidden 100 must be a multiple of heads"),
])
def test_layouts_that_do_not_fit_are_named(fields, nranks, message):
    fields = dict(fields)
    with pytest.raises(ValueError, match=message):
        w = TransformerTraining(model=fields.pop("model", TINY), **{"global_batch": 8, **fields})
        w.programs(nranks)


def test_unknown_fields_are_named():
    with pytest.raises(ValueError, match="unknown field.*pipeline"):
        workload_from_dict({"kind": "transformer", "pipeline": 2})
    with pytest.raises(ValueError, match="workload.model"):
        workload_from_dict({"kind": "transformer", "model": 3})
    with pytest.raises(ValueError, match="workload.model: unknown model"):
        workload_from_dict({"kind": "transformer", "model": "gpt5"})


# -- dicts and scenarios -------------------------------------------------------------------------


@pytest.mark.parametrize("data", [
    {"kind": "transformer"},
    {"kind": "transformer", "model": "llama_70b", "global_batch": 64, "tp": 8, "pp": 4, "schedule": "interleaved",
     "virtual_stages": 2, "zero": 1, "recompute": "selective", "sequence_parallel": True},
    {"kind": "transformer", "model": MOE, "ep": 2, "bucket_bytes": 1e6, "precision": "fp16", "steps": 3},
])
def test_workload_dict_round_trip(data):
    w = workload_from_dict(data)
    assert workload_from_dict(w.to_dict()) == w
    assert json.loads(json.dumps(w.to_dict())) == w.to_dict()


def tiny_scenario(**workload):
    return {"topology": {"builder": "hierarchical", "levels": [2, 4]},
            "workload": {"kind": "transformer", "model": TINY, "global_batch": 8, "tp": 2, "pp": 2, **workload}}


def test_scenario_gets_the_workloads_groups_and_round_trips():
    scenario = scenario_from_dict(tiny_scenario())
    assert scenario.groups.family("tp")[0] == (0, 1)
    assert scenario.groups.family("pp")[0] == (0, 4)
    data = scenario.to_dict()
    assert "groups" not in data
    again = scenario_from_dict(data)
    assert again.groups == scenario.groups and again.workload == scenario.workload
    # Replacing the workload regenerates its groups.
    other = dataclasses.replace(scenario, workload=TransformerTraining(model=TINY, global_batch=8, tp=4))
    assert other.groups.family("tp")[0] == (0, 1, 2, 3)
    # Built in code, the scenario makes them too.
    built = Scenario(topology=scenario.topology, workload=scenario.workload)
    assert built.groups == scenario.groups


def test_declaring_a_workload_group_is_an_error():
    data = tiny_scenario()
    data["groups"] = {"layout": {"tp": 2, "pp": 2}}
    with pytest.raises(ScenarioError, match="groups.tp: the transformer workload makes its own group tp"):
        scenario_from_dict(data)
    data["groups"] = {"pairs": {"blocks": 2}}
    assert scenario_from_dict(data).groups.family("pairs")[0] == (0, 1)


def test_a_gpt3_step_on_1024_ranks_is_sized_before_it_is_built():
    data = {"topology": {"builder": "hierarchical", "levels": [128, 8]},
            "workload": {"kind": "transformer", "model": "gpt3_175b", "global_batch": 1536, "tp": 8, "pp": 16}}
    with pytest.raises(ScenarioError, match="over the limit"):
        scenario_from_dict(data)


def test_shipped_scenario_runs_and_reports(tmp_path, capsys):
    scenario = load_scenario(SCENARIO)
    result = SimulatedExecutor().run(scenario)
    report = run_cli.training_summary(scenario, result)
    assert 0 < report["mfu"] == report["hfu"] < 1
    assert report["bubble_fraction"] >= report["bubble_fraction_ideal"] == pytest.approx(1 / 9)
    assert report["exposed_comm_s"]["tp"] > 0 and report["exposed_comm_s"]["pp"] > 0
    assert run_cli.main([SCENARIO, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "MFU / HFU" in out and "pipeline bubble" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["training"]["mfu"] == pytest.approx(report["mfu"])


# -- memory: a layout that does not fit is refused, one that fits reports its bytes ---------------------------------


def test_a_layout_that_does_not_fit_the_gpus_is_refused_with_its_numbers():
    data = {"topology": {"builder": "gpu_cluster", "preset": "dgx_a100", "nodes": 1},
            "workload": {"kind": "transformer", "model": "gpt3_175b", "global_batch": 8, "tp": 8}}
    with pytest.raises(ScenarioError) as info:
        scenario_from_dict(data, where="big.yaml")
    message = str(info.value)
    workload = TransformerTraining(model="gpt3_175b", global_batch=8, tp=8)
    (stage,) = workload.memory(8)
    expected = check_fits([stage], 80 * 2**30)
    assert expected and message == (f"big.yaml: workload does not fit in memory: {expected}; try more tp or pp, a "
                                    "higher zero stage, recompute, or a smaller micro_batch")
    assert "stage 0 (ranks 0-7) needs" in message and "on 80 GiB GPUs" in message


def test_the_step_report_carries_each_stages_memory_against_the_gpus():
    data = {"topology": {"builder": "gpu_cluster", "preset": "dgx_h100", "nodes": 1},
            "workload": {"kind": "transformer", "model": TINY, "global_batch": 8, "tp": 2, "pp": 2}}
    scenario = scenario_from_dict(data)
    result = get_executor("sim").run(scenario)
    report = scenario.workload.training_report(8, result.makespan_s, result.records, result.per_group,
                                               [scenario.topology.peak_flops_per_s(r, "bf16") for r in range(8)],
                                               min(scenario.topology.rank_memory_bytes))
    stages = scenario.workload.memory(8)
    assert [row["total_bytes"] for row in report["memory"]] == [s.total_bytes for s in stages]
    assert report["memory_capacity_bytes"] == 80 * 2**30
    assert "memory per GPU" in format_training_report(report)
