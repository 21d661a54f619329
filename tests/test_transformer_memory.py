"""The memory model against its sources: ZeRO's formulas (Rajbhandari et al. 2020), Korthikanti et al.'s
(2022) per-layer activations, pipeline schedules enumerated and executed here, and hand-checked shapes."""
from fractions import Fraction

import pytest

from workloads.transformer.memory import (
    GIB,
    check_fits,
    check_layout,
    embedding_activation_terms,
    layer_activation_bytes,
    layer_activation_terms,
    memory_per_rank,
    memory_per_stage,
    model_state_bytes,
    output_activation_terms,
    stage_parameters,
)
from workloads.transformer.schedule import in_flight_chunks, in_flight_first_chunk, in_flight_last_chunk
from workloads.transformer.spec import (
    ModelSpec,
    ParallelSpec,
    TrainingSpec,
    layer_parameters,
    load_model,
    total_parameters,
)

# ---------------------------------------------------------------------------
# ZeRO (Rajbhandari et al. 2020, Figure 1: K = 12)

PSI = 7_500_000_000  # Figure 1's 7.5B model
K = 12


@pytest.mark.parametrize("shards", [1, 8, 64])
def test_zero_stages_are_the_papers_formulas(shards):
    totals = {zero: sum(model_state_bytes(PSI, zero=zero, shards=shards).values()) for zero in range(4)}
    assert totals[0] == (2 + 2 + K) * PSI
    assert totals[1] == 2 * PSI + 2 * PSI + K * PSI // shards
    assert totals[2] == 2 * PSI + (2 + K) * PSI // shards
    assert totals[3] == (2 + 2 + K) * PSI // shards


def test_zero_reports_each_kind_and_figure_1s_numbers():
    # Figure 1: 7.5B parameters on N_d = 64: 120 GB, 31.4 GB, 16.6 GB, 1.9 GB.
    gb = {zero: sum(model_state_bytes(PSI, zero=zero, shards=64).values()) / 1e9 for zero in range(4)}
    assert [round(gb[z], 1) for z in range(4)] == [120.0, 31.4, 16.6, 1.9]
    assert model_state_bytes(PSI, zero=2, shards=64) == {
        "weights_bytes": 2 * PSI, "gradients_bytes": 2 * PSI // 64, "optimizer_bytes": K * PSI // 64}


def test_fp32_training_keeps_no_master_copy_and_a_partition_rounds_up():
    assert model_state_bytes(1000, zero=0, shards=1, precision="fp32") == {
        "weights_bytes": 4000, "gradients_bytes": 4000, "optimizer_bytes": 8000}
    assert model_state_bytes(1000, zero=3, shards=3, precision="bf16") == {
        "weights_bytes": 2 * 334, "gradients_bytes": 2 * 334, "optimizer_bytes": 12 * 334}


# ---------------------------------------------------------------------------
# Korthikanti et al. 2022, Table 2, for GPT layers (f = 4h, kv = h, dense)

SHAPES = [  # (s, b, h, a, t)
    (2048, 1, 12288, 96, 8),   # GPT-3 175B, Table 3
    (2048, 4, 6144, 64, 8),    # 22B
    (2048, 1, 20480, 128, 8),  # 530B
    (1024, 2, 4096, 32, 4),
    (512, 3, 1024, 16, 2),
    (128, 2, 256, 4, 1),
]


def _gpt(s, h, a, layers=1, vocab=51200):
    return ModelSpec(layers=layers, hidden=h, heads=a, seq_len=s, vocab=vocab)


def _layer(s, b, h, a, t, sp=False, recompute="none", precision="bf16"):
    model = _gpt(s, h, a)
    parallel = ParallelSpec(tp=t, sequence_parallel=sp, recompute=recompute)
    return Fraction(layer_activation_bytes(model, parallel, TrainingSpec(micro_batch=b, precision=precision)))


def _table_2(s, b, h, a, t, sp, recompute):
    sbh = Fraction(s * b * h)
    if recompute == "full":
        return 2 * sbh / (t if sp else 1)
    if recompute == "selective":
        return sbh * 34 / t if sp else sbh * (10 + Fraction(24, t))
    if sp:
        return sbh / t * (34 + Fraction(5 * a * s, h))
    return sbh * (10 + Fraction(24, t) + Fraction(5 * a * s, h * t))


@pytest.mark.parametrize("shape, sp", [(shape, sp) for shape in SHAPES for sp in (False, True) if shape[4] > 1 or not sp],
                         ids=lambda x: "s{}-b{}-h{}-a{}-t{}".format(*x) if isinstance(x, tuple) else f"sp={x}")
@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
def test_a_gpt_layer_is_table_2_exactly(shape, sp, recompute):
    s, b, h, a, t = shape
    assert _layer(s, b, h, a, t, sp, recompute) == _table_2(s, b, h, a, t, sp, recompute)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda x: "s{}-b{}-h{}-a{}-t{}".format(*x))
def test_without_parallelism_a_layer_is_sbh_34_plus_5as_over_h(shape):
    s, b, h, a, _ = shape
    assert _layer(s, b, h, a, 1) == s * b * h * (34 + Fraction(5 * a * s, h))


def test_the_attention_and_mlp_blocks_are_sec_4_1s_11sbh_plus_5as2b_and_19sbh():
    s, b, h, a = 512, 3, 1024, 16
    terms = layer_activation_terms(_gpt(s, h, a), ParallelSpec(), TrainingSpec(micro_batch=b))
    attention = sum(v for k, v in terms.items() if k.startswith("attention:") and "layer-norm" not in k)
    mlp = sum(v for k, v in terms.items() if k.startswith("mlp:") and "layer-norm" not in k)
    norms = sum(v for k, v in terms.items() if "layer-norm" in k)
    assert (attention, mlp, norms) == (11 * s * b * h + 5 * a * s * s * b, 19 * s * b * h, 4 * s * b * h)


def test_fp32_training_doubles_the_values_but_not_the_masks():
    s, b, h, a = 512, 3, 1024, 16
    # 16-bit: 34 = 32 (values) + 2 (masks); scores 5 = 4 + 1.  fp32: 64 + 2 and 8 + 1.
    assert _layer(s, b, h, a, 1, precision="fp32") == s * b * h * 66 + 9 * a * s * s * b


def test_korthikanti_abstract_five_times_less_activation_memory_on_table_3s_models():
    # The abstract's "reduces activation memory by 5x": tensor parallelism alone against sequence
    # parallelism + selective recompute, t = 8, on Table 3's 22B, 175B, 530B and 1T shapes (the ratios
    # are computed here by Table 2's formulas; the paper gives no per-model figure to match).
    ratios = [_table_2(s, b, h, a, 8, False, "none") / _table_2(s, b, h, a, 8, True, "selective")
              for s, b, h, a, _ in SHAPES[:3]] + [_table_2(2048, 1, 25600, 160, 8, False, "none")
                                                 / _table_2(2048, 1, 25600, 160, 8, True, "selective")]
    assert [round(float(r), 2) for r in ratios] == [5.41, 6.2, 4.94, 4.94]


# ---------------------------------------------------------------------------
# Extensions: grouped-query attention, gated MLP, mixture of experts (hand-checked)

S, B, H, A, T = 512, 2, 1024, 16, 2
SBH = S * B * H


def test_grouped_query_attention_keeps_k_and_v_kv_wide():
    model = ModelSpec(hidden=H, heads=A, kv_heads=4, seq_len=S)  # kv = 4 x 64 = h/4
    total = layer_activation_bytes(model, ParallelSpec(tp=T), TrainingSpec(micro_batch=B))
    # MHA's 24/t is Q 2 + K 2 + V 2 + projection 2 + MLP 16; K and V shrink to 2 x h/4 each: 21/t.
    assert total == SBH * 10 + SBH * 21 / T + 5 * A * S * S * B / T


def test_a_gated_mlp_keeps_three_f_wide_tensors():
    f = 2816
    model = ModelSpec(hidden=H, heads=A, kv_heads=4, ffn_hidden=f, gated_mlp=True, seq_len=S)
    terms = layer_activation_terms(model, ParallelSpec(tp=T), TrainingSpec(micro_batch=B))
    assert terms["mlp: gate and up projections (SwiGLU input)"] == 2 * 2 * S * B * f / T
    assert terms["mlp: down projection input"] == 2 * S * B * f / T
    assert sum(terms.values()) == SBH * 10 + SBH * 5 / T + 6 * S * B * f / T + 5 * A * S * S * B / T


@pytest.mark.parametrize("capacity_factor, routed", [(1.0, 2 * S * B), (1.25, 4 * 640)])
def test_a_moe_layer_keeps_top_k_times_capacity_tokens_per_expert_mlp(capacity_factor, routed):
    f, experts, ep = 2816, 8, 2
    model = ModelSpec(hidden=H, heads=A, kv_heads=4, ffn_hidden=f, gated_mlp=True, seq_len=S,
                      experts=experts, top_k=2, capacity_factor=capacity_factor)
    terms = layer_activation_terms(model, ParallelSpec(tp=T, ep=ep), TrainingSpec(micro_batch=B))
    # Capacity per expert: ceil(cf x top_k x (ep x sb) / E) = ceil(cf x 512) tokens; 4 local experts.
    assert terms["mlp: dispatched tokens (expert first GEMM input)"] == 2 * routed * H
    assert terms["mlp: experts' gate and up projections (SwiGLU input)"] == 2 * 2 * routed * f / T
    assert terms["mlp: experts' down projection input"] == 2 * routed * f / T
    mlp = sum(v for k, v in terms.items() if k.startswith("mlp:"))
    # norm input 2sbh, router input 2sbh, fp32 probabilities 4sbE, tokens in and out 2 x 2 routed h, mask sbh
    assert mlp == 2 * SBH + 2 * SBH + 4 * S * B * experts + 4 * routed * H + 6 * routed * f / T + SBH


def test_mixtral_weights_per_rank_are_the_model_less_the_experts_other_ranks_hold():
    model = load_model("mixtral_8x7b")
    training = TrainingSpec(global_batch=16, micro_batch=1)
    report, = memory_per_stage(model, ParallelSpec(ep=8, recompute="selective"), training, 8)
    experts_total = model.layers * model.experts * layer_parameters(model).mlp
    held = total_parameters(model) - experts_total * 7 // 8
    assert report.weights_bytes == 2 * held
    assert 7.0e9 < held < 7.5e9  # 1.6B dense + 5.6B of one expert per layer
    # ZeRO-1: dense states over d = 8, expert states over d / ep = 1.
    zero1, = memory_per_stage(model, ParallelSpec(ep=8, zero=1, recompute="selective"), training, 8)
    dense = held - experts_total // 8
    assert zero1.optimizer_bytes == 12 * (dense // 8) + 12 * (experts_total // 8)


def test_stages_split_the_parameters_of_the_whole_model():
    for name, parallel in [("gpt3_175b", ParallelSpec(tp=8, pp=8)), ("llama_70b", ParallelSpec(tp=8, pp=4)),
                           ("mixtral_8x7b", ParallelSpec(tp=2, pp=4, ep=4))]:
        model = load_model(name)
        parts = [stage_parameters(model, parallel, stage) for stage in range(parallel.pp)]
        assert sum(p["dense"] * parallel.tp + p["expert"] * parallel.tp * parallel.ep
                   for p in parts) == total_parameters(model), name


# ---------------------------------------------------------------------------
# Pipeline schedules, enumerated and executed here


def _order(schedule, p, m, v, rank):
    """Rank ``rank``'s forwards and backwards, in the schedule's order, as ("F"|"B", chunk, micro-batch)."""
    if schedule == "gpipe":
        return [("F", 0, j) for j in range(m)] + [("B", 0, j) for j in range(m)]
    if schedule == "1f1b":
        warm = min(p - rank - 1, m)
        order = [("F", 0, j) for j in range(warm)]
        for j in range(m - warm):
            order += [("F", 0, warm + j), ("B", 0, j)]
        return order + [("B", 0, j) for j in range(m - warm, m)]
    # Megatron-LM's interleaved 1F1B: forward k runs chunk (k mod pv) // p of micro-batch
    # (k // pv) p + k mod p; backward k the chunks in reverse.
    total = m * v
    warm = total if m == p else min(2 * (p - rank - 1) + (v - 1) * p, total)

    def op(kind, k):
        chunk = (k % (p * v)) // p
        return kind, (chunk if kind == "F" else v - 1 - chunk), (k // (p * v)) * p + k % p

    order = [op("F", k) for k in range(warm)]
    for k in range(total - warm):
        order += [op("F", warm + k), op("B", k)]
    return order + [op("B", k) for k in range(total - warm, total)]


def _run(schedule, p, m, v):
    """Execute every rank's order under the data dependencies; fail on a deadlock; per-rank in-flight peaks."""
    orders = [_order(schedule, p, m, v, r) for r in range(p)]
    done, position = set(), [0] * p
    moved = True
    while moved:
        moved = False
        for r in range(p):
            while position[r] < len(orders[r]):
                kind, chunk, j = orders[r][position[r]]
                stage = chunk * p + r  # the virtual stage: chunk c of rank r is model part c p + r
                if kind == "F":
                    need = ("F", stage - 1, j) if stage else None
                else:
                    need = ("B", stage + 1, j) if stage < p * v - 1 else ("F", stage, j)
                if need is not None and need not in done:
                    break
                done.add((kind, stage, j))
                position[r] += 1
                moved = True
    assert all(position[r] == len(orders[r]) for r in range(p)), f"{schedule} p={p} m={m} v={v} deadlocks"
    peaks = []
    for order in orders:
        held, per_chunk = 0, [0] * v
        best, best_chunk = 0, [0] * v
        for kind, chunk, _ in order:
            step = 1 if kind == "F" else -1
            held += step
            per_chunk[chunk] += step
            best = max(best, held)
            best_chunk = [max(x, y) for x, y in zip(best_chunk, per_chunk)]
        peaks.append((best, best_chunk))
    return peaks


CASES = ([("gpipe", p, m, 1) for p in (1, 2, 3, 4) for m in (1, 2, 3, 5, 8)]
         + [("1f1b", p, m, 1) for p in (1, 2, 3, 4) for m in (1, 2, 3, 5, 8)]
         + [("interleaved", p, m, v) for p in (1, 2, 3, 4) for v in (1, 2, 3, 4) for m in (p, 2 * p, 3 * p, 5 * p)])


@pytest.mark.parametrize("schedule, p, m, v", CASES, ids=lambda x: str(x))
def test_in_flight_counts_are_the_executed_schedules_peaks(schedule, p, m, v):
    peaks = _run(schedule, p, m, v)
    assert [in_flight_chunks(schedule, stages=p, microbatches=m, stage=i, virtual_stages=v)
            for i in range(p)] == [peak for peak, _ in peaks]
    assert in_flight_first_chunk(schedule, stages=p, microbatches=m, virtual_stages=v) == peaks[0][1][0]
    assert in_flight_last_chunk(schedule, stages=p, microbatches=m, virtual_stages=v) == peaks[-1][1][v - 1]


def test_the_first_stage_of_an_interleaved_pipeline_holds_korthikantis_factor_more():
    # Korthikanti sec. 4.2.3: L (1 + (p - 1)/(p v)) layers' activations, in chunks of L/(p v) layers.
    for p, v in [(4, 2), (8, 3), (8, 4)]:
        chunks = in_flight_chunks("interleaved", stages=p, microbatches=4 * p, stage=0, virtual_stages=v)
        assert Fraction(chunks, p * v) == 1 + Fraction(p - 1, p * v)


def test_first_stage_activations_are_sec_4_3s_total():
    # 1F1B, sequence parallel, no recompute, p > 1: the first stage holds p micro-batches of L/p layers,
    # (sbhL/t)(34 + 5as/h), plus the embedding's dropout masks sbhp/t; the output layer is on the last stage.
    s, b, h, a, layers, t, p = 2048, 1, 12288, 96, 96, 8, 8
    model = _gpt(s, h, a, layers=layers)
    parallel = ParallelSpec(tp=t, pp=p, sequence_parallel=True)
    reports = memory_per_stage(model, parallel, TrainingSpec(global_batch=64, micro_batch=b), t * p)
    first, last = reports[0], reports[-1]
    assert Fraction(first.activations_bytes) == (Fraction(s * b * h * layers, t) * (34 + Fraction(5 * a * s, h))
                                                 + Fraction(s * b * h * p, t))
    # The last stage: one micro-batch of L/p layers, and the output layer's (4sbh/t)(1 + V/h).
    assert Fraction(last.activations_bytes) == (Fraction(s * b * h * layers // p, t) * (34 + Fraction(5 * a * s, h))
                                                + Fraction(4 * s * b * h, t) * (1 + Fraction(model.vocab, h)))


def test_full_recompute_keeps_the_layer_inputs_and_one_layers_working_set():
    s, b, h, a, layers, t, p, m = 1024, 2, 4096, 32, 16, 4, 4, 8
    model = _gpt(s, h, a, layers=layers, vocab=32000)
    training = TrainingSpec(global_batch=m * b, micro_batch=b)
    full = memory_per_stage(model, ParallelSpec(tp=t, pp=p, recompute="full"), training, t * p)
    whole = layer_activation_bytes(model, ParallelSpec(tp=t), training)
    for i, report in enumerate(full[1:-1], start=1):
        assert report.activations_bytes == min(p - i, m) * (layers // p) * 2 * s * b * h + whole
    selective = memory_per_stage(model, ParallelSpec(tp=t, pp=p, recompute="selective"), training, t * p)
    scores = 5 * a * s * s * b / t
    assert selective[1].activations_bytes == 3 * (layers // p) * (whole - scores) + scores
    # The first stage adds its embedding's masks, the last its output layer's, for the micro-batches held.
    emb = sum(embedding_activation_terms(model, ParallelSpec(tp=t), training).values())
    out = sum(output_activation_terms(model, ParallelSpec(tp=t), training).values())
    assert full[0].activations_bytes == 4 * 4 * 2 * s * b * h + whole + 4 * emb
    assert full[-1].activations_bytes == 1 * 4 * 2 * s * b * h + whole + out


# ---------------------------------------------------------------------------
# Reports and the fits check


GPT3 = load_model("gpt3_175b")
A100_80GB = 80 * GIB


def test_gpt3_175b_fits_on_64_a100s_with_tp8_pp8_and_selective_recompute():
    training = TrainingSpec(global_batch=1536, micro_batch=1)
    reports = memory_per_stage(GPT3, ParallelSpec(tp=8, pp=8, recompute="selective"), training, 64)
    assert check_fits(reports, A100_80GB) == ""
    assert [r.ranks for r in reports] == [tuple(range(8 * i, 8 * i + 8)) for i in range(8)]
    # Stage 0: 12 layers and the embedding over t = 8: 16 bytes a parameter, 2.80e9 parameters.
    params = (12 * layer_parameters(GPT3).total + 51200 * 12288) // 8
    assert reports[0].weights_bytes + reports[0].gradients_bytes + reports[0].optimizer_bytes == 16 * params
    assert 60 * GIB < reports[0].total_bytes < 80 * GIB  # the most loaded stage: 8 micro-batches in flight
    assert reports[0].in_flight_chunks == 8 and reports[-1].in_flight_chunks == 1
    assert check_fits(memory_per_rank(GPT3, ParallelSpec(tp=8, pp=8, recompute="selective"), training, 64),
                      A100_80GB) == ""


def test_gpt3_175b_without_model_parallelism_does_not_fit_and_says_by_how_much():
    training = TrainingSpec(global_batch=1536, micro_batch=1)
    reports = memory_per_rank(GPT3, ParallelSpec(recompute="selective"), training, 64)
    assert len(reports) == 64 and all(r is reports[0] for r in reports)
    report = reports[0]
    psi = total_parameters(GPT3)
    assert (report.weights_bytes, report.gradients_bytes, report.optimizer_bytes) == (2 * psi, 2 * psi, 12 * psi)
    message = check_fits(reports, A100_80GB)
    assert message == (f"stage 0 (ranks 0-63) needs {report.total_bytes / GIB:.1f} GiB (weights "
                       f"{2 * psi / GIB:.1f}, gradients {2 * psi / GIB:.1f}, optimizer {12 * psi / GIB:.1f}, "
                       f"activations {report.activations_bytes / GIB:.1f}) on 80 GiB GPUs: "
                       f"{(report.total_bytes - A100_80GB) / GIB:.1f} GiB over")
    assert message.startswith("stage 0 (ranks 0-63) needs 2689.9 GiB (weights 326.4, gradients 326.4, "
                              "optimizer 1958.2, activations 78.9)")


def test_check_fits_names_the_worst_stage_and_counts_the_others():
    training = TrainingSpec(global_batch=64, micro_batch=1)
    reports = memory_per_stage(GPT3, ParallelSpec(tp=8, pp=2), training, 16)
    message = check_fits(reports, 141e9)
    assert message.startswith("stage 0 (ranks 0-7) needs ") and "on 131.3 GiB GPUs" in message
    assert message.endswith("; 1 more stage(s) over too")


def test_ranks_of_a_stage_follow_the_layout_order():
    training = TrainingSpec(global_batch=8, micro_batch=1)
    model = _gpt(128, 256, 4, layers=4)
    reports = memory_per_stage(model, ParallelSpec(tp=2, pp=2), training, 8, order="pp-tp-dp")
    assert [r.ranks for r in reports] == [(0, 2, 4, 6), (1, 3, 5, 7)]
    # The last stage holds the output layer: the larger.
    assert check_fits(reports, 1).startswith("stage 1 (ranks 1, 3, 5, 7) needs 0.1 GiB")
    assert "on 1 B GPUs" in check_fits(reports, 1)


@pytest.mark.parametrize("model, parallel, match", [
    (dict(heads=12, hidden=768), dict(tp=8), "tp 8 must divide the model's heads 12"),
    (dict(heads=16, kv_heads=2), dict(tp=4), "tp 4 must divide the model's kv_heads 2"),
    (dict(layers=3), dict(pp=4), "pp 4 x virtual_stages 1 = 4 virtual stages, more than the model's 3 layers"),
    (dict(layers=8), dict(pp=2, schedule="interleaved", virtual_stages=3, stage_layers=(1, 1, 1, 1, 1, 1)),
     r"workload.stage_layers sum to 6 layers, but the model has 8"),
    (dict(experts=8, top_k=2), dict(ep=3), "ep 3 must divide the model's experts 8"),
    (dict(), dict(ep=2), "ep 2 needs a mixture-of-experts model"),
    (dict(ffn_hidden=1000), dict(tp=16), "tp 16 must divide the model's ffn_hidden 1000"),
    (dict(seq_len=100), dict(tp=8, sequence_parallel=True), "tp 8 to divide seq_len 100"),
])
def test_layouts_that_do_not_divide_are_refused(model, parallel, match):
    with pytest.raises(ValueError, match=match):
        check_layout(ModelSpec(**model), ParallelSpec(**parallel))


def test_an_interleaved_step_needs_a_multiple_of_pp_micro_batches():
    with pytest.raises(ValueError, match=r"micro-batches per step \(6\) to be a multiple of pp 4"):
        memory_per_stage(_gpt(128, 256, 4, layers=8), ParallelSpec(pp=4, schedule="interleaved", virtual_stages=2),
                         TrainingSpec(global_batch=6), 4)


def test_a_report_serializes_to_plain_data():
    reports = memory_per_stage(_gpt(128, 256, 4, layers=4), ParallelSpec(pp=2), TrainingSpec(global_batch=4), 2)
    data = reports[1].to_dict()
    assert data["total_bytes"] == reports[1].total_bytes and data["ranks"] == [1] and data["last"] is True
    assert sum(data["activation_terms"].values()) == data["activations_bytes"]
