"""A transformer training step in 3D (tensor, pipeline, data) parallelism, with experts and ZeRO.

One room per concern:

- ``spec``: what the job is: the model's shape (presets in
  ``workloads/models``), the training setup and the parallel layout, and
  their parameter counts.
- ``flops``: every FLOP and byte of a layer as a readable term (Narayanan et
  al. 2021, sec. 5.1; Korthikanti et al. 2022, sec. 6), and the step's model
  FLOPs (for MFU) and hardware FLOPs (for HFU).
- ``schedule``: the pipeline schedules (``gpipe``, ``1f1b``, Megatron-LM's
  ``interleaved`` 1F1B): each stage's order of forwards and backwards, the
  ideal bubble, and the micro-batches a stage holds in flight.
- ``lowering``: one step of one stage as a program of operations on the
  layout's groups (``workloads.groups.Layout``: tensor-parallel innermost,
  order tp-dp-pp).
- ``memory``: memory per GPU, every byte a named term (model states under
  ZeRO 0-3, activations per layer and in flight).
- ``report``: the step's report (``training_report``): time per step,
  tokens/s, MFU, HFU, the measured and the ideal pipeline bubble and exposed
  communication by group kind, from a run's tables.
- ``workload``: ``TransformerTraining``, the registered ``transformer``
  workload, which holds the specs and asks each room.

Symbols: ``b`` micro-batch, ``s`` sequence, ``h`` hidden, ``a`` heads,
``kv`` key/value width (kv_heads x head_dim), ``f`` MLP width, ``V``
vocabulary, ``L`` layers, ``E`` experts, ``k`` top-k, ``t`` TP, ``p`` PP,
``d`` DP, ``e`` EP, ``v`` virtual stages, ``m`` micro-batches, ``B`` bytes
per value of the training precision.
"""
from workloads.transformer.flops import (attention_score_flops, hardware_flops_per_step, layer_forward_flops,
                                         logits_forward_flops, model_flops_per_step, narayanan_flops_per_step,
                                         recompute_flops_per_step)
from workloads.transformer.memory import MemoryReport, check_fits, memory_per_rank, memory_per_stage
from workloads.transformer.report import format_training_report, training_report
from workloads.transformer.schedule import ideal_bubble_fraction, schedule_order
from workloads.transformer.spec import ModelSpec, ParallelSpec, TrainingSpec, load_model, model_presets
from workloads.transformer.workload import TransformerTraining

__all__ = [
    "MemoryReport", "ModelSpec", "ParallelSpec", "TrainingSpec", "TransformerTraining", "attention_score_flops",
    "check_fits", "format_training_report", "hardware_flops_per_step", "ideal_bubble_fraction", "layer_forward_flops",
    "load_model", "logits_forward_flops", "memory_per_rank", "memory_per_stage", "model_flops_per_step",
    "model_presets", "narayanan_flops_per_step", "recompute_flops_per_step", "schedule_order", "training_report",
]
