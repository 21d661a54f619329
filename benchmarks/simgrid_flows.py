"""The SimGrid peer of benchmarks/flow_speed.py: the same flows on the same links and routes, in SimGrid.

Run by flow_speed.py under the system Python that has SimGrid's binding
(Debian's ``python3-simgrid``: ``/usr/bin/python3``), never imported by the
project.  Reads a JSON case on stdin: ``hosts`` (how many), ``links`` (each
directed link's bandwidth in bytes/s), ``flows`` ([source host, destination
host, bytes, start s] each) and ``routes`` ([source, destination, [link
numbers]] for every pair a flow uses: distsim's routes, so both tools share
every flow's path); prints one JSON line: ``run_s`` (the simulation:
``Engine.run``), ``wall_s`` (with the platform's build) and ``finish_s``
(each flow's end, in input order).

The model is set to match distsim's flow model: CM02 (max-min sharing, no
bandwidth or latency factors), no cross-traffic, one SimGrid link per
directed distsim link, links without latency, routes given whole (Full
routing), and SimGrid's solver precision tightened from its defaults (1e-5
and 1e-9), which otherwise round finish times at about those relative
amounts.
"""
import json
import os
import sys
import tempfile
import time


def platform_xml(case: dict) -> str:
    lines = ['<?xml version="1.0"?>', '<!DOCTYPE platform SYSTEM "https://simgrid.org/simgrid.dtd">',
             '<platform version="4.1">', '<zone id="world" routing="Full">']
    for h in range(case["hosts"]):
        lines.append(f'<host id="h{h}" speed="1f"/>')
    used = sorted({link for _, _, links in case["routes"] for link in links})
    for link in used:
        lines.append(f'<link id="l{link}" bandwidth="{case["links"][link]!r}Bps" latency="0s"/>')
    for src, dst, links in case["routes"]:
        lines.append(f'<route src="h{src}" dst="h{dst}" symmetrical="NO">'
                     + "".join(f'<link_ctn id="l{link}"/>' for link in links) + '</route>')
    lines += ['</zone>', '</platform>']
    return "\n".join(lines)


def main() -> int:
    import simgrid

    case = json.load(sys.stdin)
    flows = case["flows"]
    wall0 = time.perf_counter()
    engine = simgrid.Engine(["simgrid_flows", "--log=root.thres:critical",
                             "--cfg=network/model:CM02", "--cfg=network/crosstraffic:0",
                             "--cfg=maxmin/precision:1e-13", "--cfg=surf/precision:1e-13"])
    with tempfile.NamedTemporaryFile("w", suffix=".xml", delete=False) as f:
        f.write(platform_xml(case))
    try:
        engine.load_platform(f.name)
    finally:
        os.unlink(f.name)
    hosts = {h.name: h for h in engine.all_hosts}
    comms = [None] * len(flows)
    order = sorted(range(len(flows)), key=lambda i: (flows[i][3], i))

    def driver():
        for i in order:
            src, dst, nbytes, start_s = flows[i]
            simgrid.this_actor.sleep_until(start_s)
            comms[i] = simgrid.Comm.sendto_async(hosts[f"h{src}"], hosts[f"h{dst}"], nbytes)
        simgrid.Comm.wait_all(comms)

    simgrid.Actor.create("driver", hosts["h0"], driver)
    run0 = time.perf_counter()
    engine.run()
    end = time.perf_counter()
    print(json.dumps({"run_s": end - run0, "wall_s": end - wall0, "finish_s": [c.finish_time for c in comms]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
