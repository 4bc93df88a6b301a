"""Training throughput: end to end vs. compute only, and the data-wait share (same as `mmtm bench train`).

    .venv/bin/python benchmarks/bench_train.py --data demo/data [--device cuda --preset paper] [--json out.json]
"""
import argparse
import json

from mmtm.bench import bench_train

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--preset", default="demo")
    p.add_argument("--device", default="auto")
    p.add_argument("--loader", default="auto")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--json")
    a = p.parse_args()
    r = bench_train(a.data, preset=a.preset, device=a.device, loader=a.loader, batch_size=a.batch_size,
                    threads=a.threads, steps=a.steps, channels_last=a.channels_last)
    print(json.dumps(r, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=2)
