"""Cost of PBT: the same population with an exploit round every 2 iterations and without perturbation.

Measured in one process, one run after the other, on one `ray.init(num_cpus=2)`,
all through `pbt_job.training.run.train` (the job a user runs):

1. `configs/quick.yaml` (3 trials on 2 cores, checkpoints every iteration,
   `num_to_keep` 2) with lr, clip and entropy mutated (not epochs: both runs then do
   equal work per iteration), each trial stopped after `--seconds` of its own
   training time, perturbation interval `--interval` (an exploit round every 2
   iterations, one recipient per round): env steps/s of the population, exploits.
2. The same, with a perturbation interval no trial reaches: no exploit.
   Overhead = 1 - (1) / (2); target <= 5%. Both over the whole run and over the
   part where every trial trains (until the first trial stops: per-trial time
   budgets leave a tail of fewer trials, of varying length, at the end).
   `--rounds` pairs of runs 1 and 2, in alternating order (1 2, 2 1, ...), so that a
   drift of the machine's speed during the benchmark falls on both; the overhead is
   taken from their sums, and each pair's is printed too.
3. Run 1 again on an S3 server (moto on 127.0.0.1).

Per exploit (runs 1 and 3): the recipient's gap, from the exploit decision
(`lineage.jsonl`'s time) to the end of its next iteration (`iteration_ended_at`
of its first result after it), minus that iteration's own time: what an exploit
costs beyond training. Targets: <= 1 s on local storage, <= 2 s through S3.
Also: each run's share of trial time spent training (sum of iteration times /
trials x wall time), and its agent steps per second: an env step is not a fixed amount
of work in this game (each living agent is one forward pass and one sample for the
learner), and populations that learned differently keep different numbers alive.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"overhead_max": 0.05, "exploit_gap_local_s_max": 1.0, "exploit_gap_s3_s_max": 2.0}
NEVER = 10**6
"""A perturbation interval no trial reaches."""
PER_RUN_ONLY = ("exploit_gaps_s", "env_steps_all_running", "all_running_s")
"""A run's raw figures, summed or pooled over runs and not printed themselves."""


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    import ray
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "ray": ray.__version__,
            "torch": torch.__version__, "commit": commit.stdout.strip()}


def run(name: str, storage: str, seconds: float, interval: int) -> dict:
    """One `train` of quick.yaml stopped by per-trial training time; throughput and exploit gaps from the run folder."""
    import pyarrow.fs
    import yaml

    from pbt_job.storage import filesystem, parse_storage_uri, read_text
    from pbt_job.training.algorithm import ENDED_AT_KEY
    from pbt_job.training.config import JobConfig
    from pbt_job.training.run import train
    from pbt_job.run_folder import parse_lineage

    data = yaml.safe_load((REPO / "configs" / "quick.yaml").read_text())
    data["pbt"]["mutations"].pop("num_epochs")  # equal work per iteration in both runs
    data["pbt"]["perturbation_interval"] = interval
    data.update(metrics_port=0, stop={"time_total_s": seconds})
    job = JobConfig.model_validate(data)
    location = parse_storage_uri(storage)
    started, started_at = time.perf_counter(), time.time()
    outcome = train(job, location, name, resume="never")
    wall = time.perf_counter() - started
    fs = filesystem(location)
    run_path = location.join(name)
    results: dict[str, list[dict]] = {}
    for info in fs.get_file_info(pyarrow.fs.FileSelector(run_path)):
        text = read_text(fs, f"{info.path}/result.json") if info.base_name.startswith("PBTPPO_") else None
        if text:
            lines = [json.loads(line) for line in text.splitlines() if line.strip()]
            results[lines[0]["trial_id"]] = lines
    gaps = []
    for event in parse_lineage(read_text(fs, f"{run_path}/lineage.jsonl") or ""):
        after = [r for r in results.get(event["recipient"], []) if r[ENDED_AT_KEY] > event["time"]]
        if after:
            first = min(after, key=lambda r: r[ENDED_AT_KEY])
            gaps.append(first[ENDED_AT_KEY] - event["time"] - first["time_this_iter_s"])
    trained = sum(r["time_this_iter_s"] for lines in results.values() for r in lines)
    steps = outcome.summary["env_steps_total"]
    # Until the first trial stops, every trial trains: per-trial time budgets (a clone takes its donor's
    # time_total_s) leave a tail of fewer trials whose length varies from run to run.
    all_running_until = min(max(r[ENDED_AT_KEY] for r in lines) for lines in results.values())
    steps_all_running = sum(r["env_runners"]["num_env_steps_sampled"] for lines in results.values() for r in lines
                            if r[ENDED_AT_KEY] <= all_running_until)
    sampled = [r["env_runners"] for lines in results.values() for r in lines]
    agent_steps = sum(sum((e.get("num_module_steps_sampled") or {}).values()) for e in sampled)
    return {
        "env_steps": steps, "wall_s": round(wall, 1), "env_steps_per_s": round(steps / wall, 2),
        "agent_steps": agent_steps, "agent_steps_per_s": round(agent_steps / wall, 2),
        # Iteration speed itself: it follows how many agents the policies keep alive (agent steps per
        # env step), which differs between populations that learned differently.
        "env_steps_per_training_s": round(sum(e["num_env_steps_sampled"] for e in sampled) / trained, 2),
        "agent_steps_per_env_step": round(agent_steps / sum(e["num_env_steps_sampled"] for e in sampled), 2),
        "env_steps_per_s_all_running": round(steps_all_running / (all_running_until - started_at), 2),
        "env_steps_all_running": steps_all_running, "all_running_s": round(all_running_until - started_at, 1),
        "exploits": outcome.summary["exploits"], "skipped_exploits": outcome.summary["skipped_exploits"],
        "errors": outcome.errors, "actors": len({r["pid"] for lines in results.values() for r in lines}),
        "training_share": round(trained / (len(results) * wall), 3),
        "exploit_gaps_s": gaps,
    }


@contextlib.contextmanager
def s3_server():
    """moto's S3 server on 127.0.0.1 with a bucket, in a process of its own as MinIO would be (in
    the driver's process its request handling took the GIL from Tune's controller: exploit gaps
    and throughput then measured the benchmark's set-up); the AWS variables point at it."""
    import boto3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                boto3.client("s3").create_bucket(Bucket="pbt-bench")
                break
            except Exception:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.2)
        yield "s3://pbt-bench/runs"
    finally:
        server.terminate()
        server.wait()


def _summed(runs: list[dict]) -> dict:
    """Several runs of one kind as one: rates over their summed time, exploit gaps pooled, one entry per run for the rest."""
    env_steps, wall = sum(r["env_steps"] for r in runs), sum(r["wall_s"] for r in runs)
    return {
        "env_steps": env_steps, "wall_s": round(wall, 1), "env_steps_per_s": round(env_steps / wall, 2),
        "agent_steps_per_s": round(sum(r["agent_steps"] for r in runs) / wall, 2),
        "env_steps_per_s_all_running": round(sum(r["env_steps_all_running"] for r in runs)
                                             / sum(r["all_running_s"] for r in runs), 2),
        "training_share": round(sum(r["training_share"] * r["wall_s"] for r in runs) / wall, 3),
        "exploit_gap_s": _spread([gap for r in runs for gap in r["exploit_gaps_s"]]),
        "runs": [_shown(r) for r in runs],
    }


def _shown(run: dict) -> dict:
    """A run as printed: its exploit gaps as their spread, without the raw figures."""
    shown = {key: value for key, value in run.items() if key not in PER_RUN_ONLY}
    return shown | {"exploit_gap_s": _spread(run["exploit_gaps_s"])}


def _overhead(pbt: dict, plain: dict, figure: str) -> float:
    return round(1 - pbt[figure] / plain[figure], 4)


def _spread(seconds: list[float]) -> dict[str, float] | None:
    if not seconds:
        return None
    return {"n": len(seconds), "mean_s": round(sum(seconds) / len(seconds), 3), "min_s": round(min(seconds), 3),
            "max_s": round(max(seconds), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60, help="training time per trial")
    parser.add_argument("--interval", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="pairs of runs with and without perturbation")
    args = parser.parse_args()

    with s3_server() as s3_storage:  # started before Ray so that trial processes inherit the variables
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        pairs = []
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):  # Tune prints tables
            for number in range(args.rounds):
                order = [("pbt", args.interval), ("plain", NEVER)]
                pair = {name: run(f"{name}_{number}", tmp, args.seconds, interval)
                        for name, interval in (order if number % 2 == 0 else order[::-1])}
                pairs.append((pair["pbt"], pair["plain"]))
            pbt_s3 = run("pbt", s3_storage, args.seconds, args.interval)
    pbt, plain = (_summed([pair[side] for pair in pairs]) for side in (0, 1))
    figures = {
        "benchmark": "pbt_overhead",
        "settings": {**vars(args), "config": "configs/quick.yaml"},
        "pbt": pbt,
        "no_perturbation": plain,
        "pbt_s3": _shown(pbt_s3),
        "overhead": _overhead(pbt, plain, "env_steps_per_s"),
        "overhead_per_round": [_overhead(*pair, "env_steps_per_s") for pair in pairs],
        "overhead_all_running": _overhead(pbt, plain, "env_steps_per_s_all_running"),
        "overhead_agent_steps": _overhead(pbt, plain, "agent_steps_per_s"),
        "overhead_training_share": _overhead(pbt, plain, "training_share"),
        "targets": TARGETS,
        "machine": machine(),
    }
    print(json.dumps(figures))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
