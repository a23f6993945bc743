"""The first request after ready, with and without warmup, in fresh processes.

What a replica does before it reports ready: load the engine and, with
``warmup`` on (the default), run one batch per length bucket
(``Engine.warmup``). Each run here is a new Python process (one-time costs are
per process): load, warm up or not, then send ``--requests`` workload texts one
at a time, each as its own request. Reported per run: the first request's
latency, the median of the next ones, and their ratio (the target: within 2x
with warmup on). The runs alternate off / on ``--rounds`` times.

    python -m benchmarks.warmup [--rounds 3] [--requests 101]

Writes benchmarks/results/warmup.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from benchmarks.common import RESULTS, ensure_model_dir, machine_info, table, write_results

# One run, in a child process: prints a JSON line with its timings.
CHILD = """
import json, sys, time
from benchmarks.common import load_texts
from textfleet.engine import Engine
model_dir, warm, n = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
texts = load_texts(n)
start = time.perf_counter()
engine = Engine.load(model_dir)
warm_s = 0.0
if warm:
    t = time.perf_counter(); engine.warmup(); warm_s = time.perf_counter() - t
ready_s = time.perf_counter() - start
took = []
for text in texts:
    t = time.perf_counter(); engine.embed([text]); took.append(time.perf_counter() - t)
engine.close()
print(json.dumps({"ready_s": ready_s, "warmup_s": warm_s, "took": took}))
"""


def one_run(model_dir: str, warm: bool, requests: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, model_dir, "1" if warm else "0", str(requests)],
        capture_output=True,
        text=True,
        check=True,
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    took = got.pop("took")
    first, rest = took[0] * 1e3, statistics.median(took[1:]) * 1e3
    return {"warmup": warm, **got, "first_ms": first, "next_p50_ms": rest, "ratio": first / rest}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", default=None)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=101, help="the first and the next 100")
    args = p.parse_args(argv)
    model_dir = str(ensure_model_dir(args.model_dir))
    runs = [
        one_run(model_dir, warm, args.requests)
        for _ in range(args.rounds)
        for warm in (False, True)
    ]
    rows = [
        [
            "on" if r["warmup"] else "off",
            f"{r['ready_s']:.2f}",
            f"{r['warmup_s']:.2f}",
            f"{r['first_ms']:.1f}",
            f"{r['next_p50_ms']:.1f}",
            f"{r['ratio']:.2f}",
        ]
        for r in runs
    ]
    headers = ["warmup", "ready s", "of it warmup s", "first ms", "next p50 ms", "first/p50"]
    text = table(rows, headers)
    print(text)
    write_results("warmup", {"args": vars(args), "machine": machine_info(), "runs": runs})
    (RESULTS / "warmup.md").write_text(
        "# The first request after ready, warmup off and on\n\n"
        f"`python -m benchmarks.warmup --rounds {args.rounds} --requests {args.requests}`, "
        f"{machine_info()['cpu']}, one engine per fresh process, one workload text per "
        "request.\n\n```\n" + text + "\n```\n"
    )


if __name__ == "__main__":
    main()
