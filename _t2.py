import time
from workloads.transformer import *
from workloads.groups import ProcessGroups
from topologies.builders import fully_connected
from simcore.engine import Simulator
F=1e12
def run(model, **kw):
    w = TransformerTraining(model=model, **kw)
    n = w.tp*w.pp*max(w.dp,1)
    progs = w.programs(n)
    pg = ProcessGroups(n, w.process_groups(n))
    topo = fully_connected(n, bandwidth_bytes_per_s=1e20, latency_s=0.0, flops_per_s=F)
    return w, Simulator(topo, progs, process_groups=pg).run()
for vocab in (1, 5000):
  m_ = dict(name="x", layers=8, hidden=1024, heads=8, seq_len=256, vocab=vocab)
  ms = ModelSpec(**m_)
  for sched, v in (("gpipe",1),("1f1b",1),("interleaved",2),("interleaved",4)):
    p=2 if v==4 else 4; m=8
    w, r = run(m_, global_batch=m, micro_batch=1, pp=p, dp=1, schedule=sched, virtual_stages=v)
    layer = layer_forward_flops(ms)*1/F
    tf = layer*8/p; tb=2*tf
    lg = logits_forward_flops(ms)/F
    T1 = (p-1)*(tf+tb) + m*(tf+tb+3*lg)
    Tn = (m + (p-1)/v)*(tf+tb)
    print(vocab, sched, v, r.makespan_s, T1, Tn, r.makespan_s/Tn-1, (r.makespan_s-Tn)/(m*3*lg))
