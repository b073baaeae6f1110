"""`pbt-job`: train a PBT population, validate a config, report on a run, evaluate its policies.

Exit codes: 0 success; 2 bad input (config, flags, storage unreachable, hung or
refusing the credentials, a resume with another configuration), with one line naming
the field or the fix; 1 training failed; 130 / 143 interrupted by SIGINT / SIGTERM
(the run is saved: the same command with `--resume must` continues it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import signal
import sys
from typing import Sequence

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2 like every other bad input."""

    def error(self, message: str) -> None:
        self.exit(EXIT_BAD_INPUT, f"pbt-job: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pbt-job", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="train a population (or resume one)")
    train.add_argument("--config", required=True, help="YAML job configuration (see configs/)")
    train.add_argument("--storage", default="./runs", help="a folder or s3://bucket/prefix (default ./runs)")
    train.add_argument("--name", help="run name, taken verbatim: the run folder (default: the config's name)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    train.add_argument("--metrics-port", type=int, help="Prometheus exporter port (0 disables)")
    train.add_argument("--resume", choices=("auto", "never", "must"), default="auto",
                       help="auto: continue an existing run; never: refuse one; must: require one")

    validate = commands.add_parser("validate", help="check a config (and storage) without training")
    validate.add_argument("--config", required=True, help="YAML job configuration")
    validate.add_argument("--storage", help="also check this folder or s3://bucket/prefix is writable")
    validate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")

    report = commands.add_parser("report", help="draw a run's lineage, schedules and curves (finished or running)")
    report.add_argument("run", metavar="RUN", help="the run folder, local or s3://bucket/prefix/name")
    report.add_argument("--out", help="folder to write into (default RUN/report, or ./report-NAME for S3)")

    evaluate = commands.add_parser("evaluate", help="play the trained policies against random and initial ones")
    evaluate.add_argument("run", metavar="RUN", help="the run folder, local or s3://bucket/prefix/name")
    evaluate.add_argument("--episodes", type=int, default=30, help="episodes per policy set (default 30)")
    evaluate.add_argument("--seed", type=int, default=0, help="episode i plays seed S + i in every set (default 0)")
    evaluate.add_argument("--trial", metavar="ID", help="a trial's latest checkpoint instead of the run's best/")
    evaluate.add_argument("--greedy", action="store_true", help="take each policy's most likely action (default: sample)")
    evaluate.add_argument("--replay", action="store_true", help="also write replay.gif of the first trained episode")
    evaluate.add_argument("--out", help="folder to write into (default RUN/evaluation, or ./evaluation-NAME for S3)")
    return parser


def _load(args: argparse.Namespace):
    from pbt_job.training.config import load_config

    overrides = list(args.set)
    if getattr(args, "metrics_port", None) is not None:
        overrides.append(f"metrics_port={args.metrics_port}")
    return load_config(args.config, overrides, name=getattr(args, "name", None))


def _validate(args: argparse.Namespace) -> int:
    from pbt_job.storage import check_storage, parse_storage_uri

    job = _load(args)
    print(f"config {args.config}: valid (population {job.pbt.population}, "
          f"mutations {', '.join(job.pbt.mutations)}, policies {', '.join(job.env.policies)})")
    if args.storage:
        for line in check_storage(parse_storage_uri(args.storage)):
            print(f"storage: {line}")
    return EXIT_OK


def _progress_reporter(job):
    from ray import tune

    from pbt_job.result_keys import ENV_STEPS_PER_S_KEY, yaml_name
    from pbt_job.training.explore import initial_space

    return tune.CLIReporter(
        metric_columns={"training_iteration": "iter", job.pbt.metric: "metric", ENV_STEPS_PER_S_KEY: "env steps/s"},
        parameter_columns={key: yaml_name(key) for key in initial_space(job.pbt)},
        max_report_frequency=15,
        sort_by_metric=True,
        metric=job.pbt.metric,
        mode=job.pbt.mode,
    )


def _train(args: argparse.Namespace) -> int:
    from pbt_job import interruption, metrics
    from pbt_job.storage import check_storage, parse_storage_uri

    job = _load(args)
    location = parse_storage_uri(args.storage)
    with contextlib.ExitStack() as stack:
        stack.enter_context(interruption.caught())
        if job.metrics_port:
            server = stack.enter_context(metrics.serve(job.metrics_port))
            print(f"metrics: http://localhost:{server.port}/metrics")
        try:
            check_storage(location)  # the run's one check, before Ray's imports: bad storage answers in a second
            from pbt_job.training.run import train  # Ray and RLlib load in seconds: only once the input is sound
            outcome = train(job, location, job.name, resume=args.resume, progress_reporter=_progress_reporter(job))
        except KeyboardInterrupt:
            return _interrupted(args, "stopped at once, the run's last saved state stays")
    summary = outcome.summary
    if outcome.interrupted:
        return _interrupted(args, f"the run is saved in {outcome.run_uri}")
    print(f"run {outcome.run_uri}: best trial {summary['best_trial']} {summary['metric']}={summary['best_metric']} "
          f"after {summary['exploits']} exploits, {summary['env_steps_total']} env steps in {summary['wall_time_s']:.0f} s")
    print(f"best hyperparameters: {json.dumps(summary['best_hyperparameters'])}")
    _report_after_training(outcome.run_uri)
    if outcome.errors:
        print(f"pbt-job: {outcome.errors} trial(s) failed; see {outcome.run_uri}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _interrupted(args: argparse.Namespace, state: str) -> int:
    """One line: what was interrupted and the command that resumes it; exit 128 + the signal."""
    from pbt_job import interruption

    signum = interruption.received() or signal.SIGINT
    command = ["pbt-job", "train", "--config", args.config, "--storage", args.storage, "--resume", "must"]
    if args.name is not None:
        command += ["--name", args.name]
    for override in args.set:
        command += ["--set", override]
    if args.metrics_port is not None:
        command += ["--metrics-port", str(args.metrics_port)]
    print(f"pbt-job: interrupted by {signal.Signals(signum).name}; {state}; resume with: {shlex.join(command)}",
          file=sys.stderr)
    return 128 + signum


def _report_after_training(run_uri: str) -> None:
    """The run's report in its own folder; a failed drawing never fails the training."""
    from pbt_job.report.write import write_report

    try:
        print(f"report: {write_report(run_uri, f'{run_uri}/report')}")
    except Exception as err:  # noqa: BLE001 - the run itself succeeded
        print(f"pbt-job: warning: the report failed ({err}); try: pbt-job report {run_uri}", file=sys.stderr)


def _report(args: argparse.Namespace) -> int:
    from pbt_job.report.write import write_report

    print(f"report: {write_report(args.run, args.out)}")
    return EXIT_OK


def _evaluate(args: argparse.Namespace) -> int:
    from pbt_job.training.evaluate import check_request

    check_request(args.episodes, args.seed)  # before Ray and torch load: a bad flag answers in a second
    from pbt_job.training.evaluate import evaluate, summary_lines

    numbers = evaluate(args.run, episodes=args.episodes, seed=args.seed, out=args.out, trial=args.trial,
                       greedy=args.greedy, replay=args.replay)
    print(f"evaluation of {numbers['uri']}: {numbers['episodes']} episodes per set (seeds {numbers['seeds'][0]}-"
          f"{numbers['seeds'][1]}), actions {numbers['actions']}; means per episode, [95% CI]")
    for line in summary_lines(numbers):
        print(line)
    print(f"evaluation: {numbers['out']}")
    return EXIT_OK


COMMANDS = {"train": _train, "validate": _validate, "report": _report, "evaluate": _evaluate}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("ray", "filelock", "urllib3", "botocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("ray.tune.schedulers.pbt").setLevel(logging.INFO)
    logging.getLogger("ray.tune.tune").addFilter(lambda record: "Tuner.restore" not in record.getMessage())
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune drops the futures of tasks it abandons (the save of a trial it pauses or stops);
    # Ray would print their errors at exit, after pbt-job's own last line. Trial errors
    # still reach the trial's error.txt and the summary through Tune.
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")

    from pbt_job.errors import BadInput
    from pbt_job.storage import StorageOutage

    try:
        return COMMANDS[args.command](args)
    except BadInput as err:
        print(f"pbt-job: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StorageOutage as err:
        print(f"pbt-job: error: {err}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
