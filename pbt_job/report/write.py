"""`pbt-job report`: a run's pictures, `report.md` and `report.json` written into one folder.

The numbers of a finished run are those of its `summary.json`; while a run is
still training they are computed from what its files hold so far, and the report
says so. A run without results yet gets `report.md` and `report.json` only.
"""

from __future__ import annotations

import json
import logging
from typing import Any


from pbt_job.report import plots
from pbt_job.report.ancestry import Segment, ancestry, segment_end
from pbt_job.report.run_data import SUMMARY_FIELDS, RunData, load_run
from pbt_job.storage import check_writable, parse_storage_uri, write_files

logger = logging.getLogger(__name__)

REPORT_DIR = "report"
PICTURES = {
    "lineage.png": plots.lineage_png,
    "schedules.png": plots.schedules_png,
    "curves.png": plots.curves_png,
}


def default_out(run: RunData) -> str:
    """`<run>/report/` for a local run, `./report-<name>/` for one on S3."""
    return f"./report-{run.name}" if run.location.is_s3 else run.location.join(REPORT_DIR)


def write_report(run: str, out: str | None = None) -> str:
    """Write the report of the run folder `run` (a path or `s3://...`) into `out`.

    Args:
        run: The run folder, as `pbt-job train` prints it.
        out: The folder to write into (a path or `s3://...`); None: `default_out`.

    Returns:
        Where `report.md` is (a local path or an `s3://` URI).

    Raises:
        NotARunError: `run` is not a run folder.
        MalformedRunFile: a file of the run the report shows as it is, is damaged.
        StorageError: `run` or `out` is not a usable URI, its S3 endpoint or bucket cannot be reached,
            or `out` cannot be written (an existing file, a read-only place): at once, never retried.
        StorageOutage: S3 stayed unavailable for the retry limit while the report was written.
    """
    data = load_run(run)
    target = parse_storage_uri(out or default_out(data), flag="--out")
    check_writable(target)  # before anything is drawn: a place that refuses writes is named at once
    best = data.best_trial()
    chain = ancestry(best, data.exploits) if best else []
    notes = []
    if data.summary is None:
        notes.append("The run has not finished (no summary.json): the numbers are those of the files so far.")
    pictures = list(PICTURES) if data.results else []
    if not pictures:
        notes.append("No trial has reported a result yet: no pictures; run the report again later.")
    numbers = report_numbers(data, chain, pictures, notes)
    files = {name: PICTURES[name](data, chain) for name in pictures}
    files["report.json"] = (json.dumps(numbers, indent=2, sort_keys=True) + "\n").encode()
    files["report.md"] = render_markdown(numbers).encode()
    write_files(target, files)
    for note in notes:
        logger.warning("[report] %s: %s", data.location.uri, note)
    return target.display("report.md")


def report_numbers(run: RunData, chain: list[Segment], pictures: list[str], notes: list[str]) -> dict[str, Any]:
    """Everything `report.md` shows, as plain JSON values."""
    best = run.best_trial()
    latest = {trial: results[-1] for trial, results in run.results.items() if results}
    numbers: dict[str, Any] = {
        "run": run.name,
        "uri": run.location.uri,
        "finished": run.summary is not None and run.summary.get("status", "finished") == "finished",
        "interrupted": run.summary is not None and run.summary.get("status") == "interrupted",
        "metric": run.metric,
        "mode": run.mode,
        **_running_numbers(run, best),
        "trials": {
            trial: {
                "iteration": latest[trial].iteration if trial in latest else None,
                "metric": latest[trial].metric if trial in latest else None,
                "hyperparameters": latest[trial].hyperparameters if trial in latest else {},
                "times_cloned": sum(e.recipient == trial for e in run.exploits),
                "times_donor": sum(e.donor == trial for e in run.exploits),
            }
            for trial in run.trials
        },
        "best_ancestry": [
            {"trial": s.trial, "from_iteration": s.start + 1, "to_iteration": segment_end(s, run.results)}
            for s in chain
        ],
        "pictures": pictures,
        "notes": notes,
    }
    if run.summary is not None:
        numbers.update({key: run.summary[key] for key in SUMMARY_FIELDS if key in run.summary})  # lacking: from the files
    numbers["training_share"] = training_share(run, numbers["wall_time_s"])
    return numbers


def training_share(run: RunData, wall_time_s: float | None) -> float | None:
    """Share of the population's wall time spent in training iterations.

    The sum of every result's `time_this_iter_s` over (trials x wall time). Every
    result line counts, those a later clone threw away too: the trial spent that
    time training. The rest went to starting, restoring, exploiting and waiting
    for resources.

    Args:
        run: The run's results; its trials are every trial its files name.
        wall_time_s: The run's wall time over all driver sessions.

    Returns:
        The share, rounded to 4 digits; None without a wall time.
    """
    if not isinstance(wall_time_s, (int, float)) or wall_time_s <= 0 or not run.trials:
        return None
    training = sum(result.seconds for results in run.results.values() for result in results)
    return round(training / (len(run.trials) * wall_time_s), 4)


def _running_numbers(run: RunData, best: str | None) -> dict[str, Any]:
    """The summary's numbers from the files of a run still training."""
    results = run.results.get(best) if best else None
    env_steps = sum(ledger.env_steps_total for ledger in run.ledgers.values()) if run.ledgers else None
    wall_time = run.wall_time_s
    return {
        "best_trial": best,
        "best_metric": results[-1].metric if results else None,
        "best_hyperparameters": results[-1].hyperparameters if results else {},
        "exploits": len(run.exploits),
        "env_steps_total": env_steps,
        "wall_time_s": wall_time,
        "env_steps_per_s": round(env_steps / wall_time, 3) if env_steps is not None and wall_time else None,
    }


def render_markdown(numbers: dict[str, Any]) -> str:
    """`report.md`: the summary table, the pictures with what to look for, the trials."""
    better = "higher" if numbers["mode"] == "max" else "lower"
    state = ("finished" if numbers["finished"]
             else "interrupted (the same `pbt-job train` command continues it)" if numbers["interrupted"]
             else "still training, or stopped before writing its summary")
    lines = [
        f"# PBT report: {numbers['run']}",
        "",
        f"Run `{numbers['uri']}`: {state}.",
        "",
        *(f"> **Note:** {note}\n" for note in numbers["notes"]),
        "Population Based Training (PBT) trains a population of trials side by side. Every few iterations the",
        "worst trials *exploit* the best: each copies a better trial's network weights and hyperparameters (a",
        "clone), then *explores* by perturbing those hyperparameters. Hyperparameters thus change during",
        "training; the schedule the best trial inherited is what PBT discovered.",
        "",
        "| | |",
        "|---|---|",
        f"| Best trial | `{numbers['best_trial']}` |",
        f"| Metric `{numbers['metric']}` ({better} is better) | {_number(numbers['best_metric'])} |",
        f"| Final hyperparameters | {_hyperparameters(numbers['best_hyperparameters'])} |",
        f"| Exploits (clones) | {_number(numbers['exploits'])} |",
        f"| Env steps | {_number(numbers['env_steps_total'])} |",
        f"| Wall time | {_number(numbers['wall_time_s'])} s |",
        f"| Env steps/s | {_number(numbers['env_steps_per_s'])} |",
        f"| Share of wall time spent training | {_share(numbers['training_share'])} |",
        f"| Best trial's ancestry | {_ancestry(numbers['best_ancestry'])} |",
        "",
    ]
    captions = {
        "lineage.png": ("Lineage: who cloned whom",
                        "Each lane is a trial, each dot an iteration coloured by the metric. An arrow is an exploit, "
                        "from the donor to the recipient, which continued from the donor's weights. The shaded path "
                        "is the best trial's ancestry. A population that collapses onto one lineage early shows "
                        "every arrow leaving the same lane."),
        "schedules.png": ("Hyperparameter schedules",
                          "Each trial's hyperparameters over iterations; bold: the schedule the best trial's weights "
                          "were trained with, followed back through its clones."),
        "curves.png": ("Learning curves",
                       "The PBT metric and each policy's return per trial; a star marks where an exploit restarted "
                       "a trial from its donor's result."),
    }
    for picture in numbers["pictures"]:
        title, caption = captions[picture]
        lines += [f"## {title}", "", f"![{title}]({picture})", "", caption, ""]
    lines += ["## Trials", "",
              f"| Trial | Iteration | `{numbers['metric']}` | Cloned | Donor to others | Hyperparameters |",
              "|---|---|---|---|---|---|"]
    for trial, row in numbers["trials"].items():
        lines.append(f"| `{trial}` | {_number(row['iteration'])} | {_number(row['metric'])} | {row['times_cloned']} | "
                     f"{row['times_donor']} | {_hyperparameters(row['hyperparameters'])} |")
    return "\n".join(lines) + "\n"


def _number(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.4g}" if isinstance(value, float) else str(value)


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _hyperparameters(values: dict[str, Any]) -> str:
    return ", ".join(f"{name}={value:.4g}" if isinstance(value, (int, float)) else f"{name}={value}"
                     for name, value in sorted(values.items())) or "n/a"


def _ancestry(segments: list[dict[str, Any]]) -> str:
    """`a` (iterations 1-4) -> `b` (passed on untrained) -> ...; an empty segment is a trial that handed on at once."""
    steps = [f"`{s['trial']}` " + (f"(iterations {s['from_iteration']}-{s['to_iteration']})"
                                   if s["to_iteration"] >= s["from_iteration"] else "(passed on untrained)")
             for s in segments]
    return " → ".join(steps) or "n/a"

