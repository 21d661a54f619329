import time
from workloads.transformer import *
from workloads.scenario import scenario_from_dict, ScenarioError
t0=time.time()
w = TransformerTraining(model="gpt3_175b", global_batch=1536, micro_batch=1, tp=8, pp=16, schedule="interleaved", virtual_stages=2)
s = w.size(1024)
print("size 1024", s, s.memory_bytes(1024)/2**30, "GiB", time.time()-t0)
d = {"topology": {"builder": "hierarchical", "levels": [128, 8]}, "workload": w.to_dict()}
t0=time.time()
try:
    scenario_from_dict(d)
except ScenarioError as e: print(str(e)[:300])
print("refused in", time.time()-t0)
d = {"topology": {"builder": "hierarchical", "levels": [8, 8]}, "workload": dict(kind="transformer", model="gpt3_175b", global_batch=8, tp=8, pp=8)}
t0=time.time()
sc = scenario_from_dict(d); print("load", time.time()-t0, sc.workload.size(64))
from executors.simulated import SimulatedExecutor
t0=time.time()
r = SimulatedExecutor().run(sc)
print("sim 64", time.time()-t0, r.makespan_s, len(r.records))
from experiments.run import training_summary
from workloads.transformer import format_training_report
print(format_training_report(training_summary(sc, r)))
