"""The closed-form step estimate (workloads.transformer.estimate) on hand-checked cases."""
from __future__ import annotations

import pytest

from workloads.transformer.estimate import Fabric, estimate_step
from workloads.transformer.flops import hardware_flops_per_step
from workloads.transformer.spec import ModelSpec, ParallelSpec, TrainingSpec, total_parameters

MODEL = ModelSpec(name="small", layers=4, hidden=1024, heads=16, seq_len=512, vocab=1000)
FABRIC = Fabric(peak_flops_per_s=1e14, gpus_per_node=8, scale_up_bandwidth_bytes_per_s=1e11,
                scale_up_latency_s=1e-6, scale_out_bandwidth_bytes_per_s=1e10, scale_out_latency_s=5e-6)


def test_one_gpu_is_its_compute():
    training = TrainingSpec(global_batch=4, micro_batch=1)
    est = estimate_step(MODEL, training, ParallelSpec(tp=1, pp=1, dp=1), 4, FABRIC)
    compute = hardware_flops_per_step(MODEL, training, "none") / 1e14
    assert est.step_s == pytest.approx(compute, rel=1e-12)
    assert (est.bubble_s, est.tp_s, est.pp_s, est.dp_s) == (0.0, 0.0, 0.0, 0.0)


def test_tensor_parallelism_adds_four_ring_all_reduces_a_layer_and_micro_batch():
    training = TrainingSpec(global_batch=2, micro_batch=1)
    est = estimate_step(MODEL, training, ParallelSpec(tp=2, pp=1, dp=1), 2, FABRIC)
    nbytes = 1 * 512 * 1024 * 2  # b x s x h x bf16
    ring = 2 * (1 / 2 * nbytes / 1e11 + 1e-6)
    assert est.tp_s == pytest.approx(2 * 4 * 4 * ring, rel=1e-12)  # m x layers x 4 x ring


def test_the_pipeline_bubble_is_p_minus_1_micro_batch_times():
    training = TrainingSpec(global_batch=8, micro_batch=1)
    est = estimate_step(MODEL, training, ParallelSpec(tp=1, pp=4, dp=1), 8, FABRIC)
    per_mb = (est.compute_s + est.pp_s) / 8
    assert est.bubble_s == pytest.approx(3 * per_mb, rel=1e-12)
    assert est.pp_s == pytest.approx(8 * 2 * (512 * 1024 * 2 / 1e10 + 5e-6), rel=1e-12)
    assert est.step_s == pytest.approx(11 * per_mb, rel=1e-12)


def test_data_parallel_gradients_are_exposed_past_the_last_backward():
    training = TrainingSpec(global_batch=16, micro_batch=1)
    # 16 GPUs of 8 per server, tp 1: the dp ring leaves the server.
    est = estimate_step(MODEL, training, ParallelSpec(tp=1, pp=1, dp=16), 1, FABRIC)
    grads = total_parameters(MODEL) * 2
    ring = 2 * (15 / 16 * grads / 1e10 + 15 * 5e-6)
    assert est.dp_s == pytest.approx(max(0.0, ring - 2 / 3 * est.compute_s), rel=1e-12)
