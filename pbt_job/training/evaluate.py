"""`pbt-job evaluate`: does the trained population play better than chance and than where it started?

Plays N episodes of the run's own game (`job_config.json`'s `env`) with three policy sets,
episode i of every set from the same seed S + i, so the comparisons are paired (the same
boards at reset, the same game randomness until the actions make the episodes differ):

* `trained`: the run's `best/<policy>/` (the best trial's RLModules, written at the end of
  a run), or with `trial` that trial's latest checkpoint.
* `initial`: the same lineage after its first training iteration: the iteration-1
  checkpoint of the trial at the root of the evaluated trial's ancestry (the trial whose
  weights the trained ones descend from; `pbt_job.report.ancestry`). PBT clones weights,
  so the root, not the evaluated trial's own start, is where those weights began. When
  retention (`checkpoints.num_to_keep`) has deleted that checkpoint, another trial's
  iteration-1 checkpoint stands in (all start alike, from random weights), and the output
  says which; without any, the set is marked unavailable, with the reason.
* `random`: uniformly random moves.

Actions are sampled from each policy's action distribution (as in training) unless
`greedy` (argmax). Inference is plain RLModule forward passes on the CPU: no Ray cluster,
no `ray.init`. RLModules load with `RLModule.from_checkpoint`, which unpickles the
checkpoint's class and state: a checkpoint is trusted as code, as Tune's own restore
trusts it (the run folder's JSON files are not).

Per set and policy the output gives the mean over episodes and a 95% confidence interval
from Student's t-distribution with n - 1 degrees of freedom (exact for normal
per-episode values, conservative beside the normal approximation for small n; none
for n = 1).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import pickle
import re
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow.fs
import torch
from scipy import stats

from pbt_job.env import EnvConfig, PredPreyGrassEnv, policy_of
from pbt_job.env.replay import Replay
from pbt_job.env.tally import EpisodeTally
from pbt_job.errors import BadInput
from pbt_job.report.ancestry import ancestry
from pbt_job.report.run_data import RunData, load_run
from pbt_job.run_folder import BEST_DIR, JOB_CONFIG_FILE, MalformedRunFile, RunFiles
from pbt_job.storage import check_writable, filesystem, parse_storage_uri, write_files
from pbt_job.training.model import torch_threads
from pbt_job.training.run import MODULES_IN_CHECKPOINT

logger = logging.getLogger(__name__)

EVALUATION_DIR = "evaluation"
POLICY_SETS = ("trained", "initial", "random")
MAX_EPISODES = 10_000
ACTION_STREAM = 1
"""Actions draw from `default_rng((seed, ACTION_STREAM))`: apart from the game's `default_rng(seed)`."""
CHECKPOINT_DIR = re.compile(r"checkpoint_(\d+)")
ALGORITHM_STATE = "algorithm_state.pkl"
"""In an algorithm checkpoint: a pickled dict holding `training_iteration`."""
FIELDS = ("episode_return", "reproductions", "catches", "caught", "starved", "alive_at_end")
"""Per policy and episode, from `EpisodeTally`."""

COUNTS_SHOWN = ("reproductions", "catches", "caught", "alive_at_end")
"""The counts `summary_lines` prints (their means)."""

Chooser = Callable[[str, np.ndarray, np.random.Generator], np.ndarray]
"""(policy, stacked observations, action generator) -> one action per observation."""


@dataclass(frozen=True)
class PolicySource:
    """Where a set's RLModules are: `path` holds one folder per policy, in the run's filesystem."""

    path: str
    description: str


def default_out(run: RunData) -> str:
    """`<run>/evaluation/` for a local run, `./evaluation-<name>/` for one on S3 (as `pbt-job report`)."""
    return f"./{EVALUATION_DIR}-{run.name}" if run.location.is_s3 else run.location.join(EVALUATION_DIR)


def check_request(episodes: int, seed: int) -> None:
    """Raises `BadInput` naming the flag when `episodes` or `seed` cannot be played."""
    if not 1 <= episodes <= MAX_EPISODES:
        raise BadInput(f"--episodes {episodes}: give a number of episodes from 1 to {MAX_EPISODES}")
    if seed < 0:
        raise BadInput(f"--seed {seed}: give a seed >= 0 (episode i plays seed + i)")


def evaluate(
    run: str,
    episodes: int = 30,
    seed: int = 0,
    out: str | None = None,
    trial: str | None = None,
    greedy: bool = False,
    replay: bool = False,
) -> dict[str, Any]:
    """Evaluate the run folder `run` (a path or `s3://...`) and write `evaluation.json` and `evaluation.md`
    (and `replay.gif`: the trained set's first episode) into `out` (None: `default_out`).

    Returns:
        The numbers `evaluation.json` holds, with `out` (where the files are).

    Raises:
        BadInput: `run` is no run folder or has no `best/` (without `trial`), `trial` is no trial of it
            or has no checkpoint, `episodes`/`seed` are out of range, `out` cannot be written.
        StorageOutage: S3 stayed unavailable for the retry limit.
    """
    check_request(episodes, seed)
    data = load_run(run)
    files = RunFiles(partial(filesystem, data.location), data.location.path, writer=False)
    env_config = _env_config(files)
    trained = _trained_source(files, data, trial)
    target = parse_storage_uri(out or default_out(data), flag="--out")
    check_writable(target)  # before anything is played: a place that refuses writes is named at once
    initial, initial_note = _initial_source(files, data, trial or data.best_trial())
    seeds = list(range(seed, seed + episodes))
    numbers: dict[str, Any] = {
        "run": data.name,
        "uri": data.location.uri,
        "episodes": episodes,
        "seeds": [seeds[0], seeds[-1]],
        "actions": "greedy" if greedy else "sampled",
        "confidence_interval": "95%, Student's t over episodes (n - 1 degrees of freedom)",
        "policies": list(env_config.policies),
        "sets": {},
    }
    recorder = Replay(env_config) if replay else None
    with tempfile.TemporaryDirectory(prefix="pbt-job-evaluate-") as local, torch_threads(1):
        for name, source in (("trained", trained), ("initial", initial)):
            if source is None:
                numbers["sets"][name] = {"available": False, "source": initial_note}
                continue
            modules = _load_modules(files.fs, source.path, env_config.policies, Path(local) / name)
            chooser = partial(_module_actions, modules, greedy)
            played = _play(env_config, chooser, seeds, recorder if name == "trained" else None)
            numbers["sets"][name] = {"available": True, "source": source.description, **played}
        played = _play(env_config, _random_actions(env_config), seeds, None)
        numbers["sets"]["random"] = {"available": True, "source": "uniformly random moves", **played}
    written = {}
    if recorder is not None:
        written["replay.gif"] = recorder.gif_bytes()
        numbers["replay"] = {"file": "replay.gif", "frames": len(recorder), "bytes": len(written["replay.gif"])}
    written["evaluation.json"] = (json.dumps(numbers, indent=2) + "\n").encode()
    written["evaluation.md"] = render_markdown(numbers).encode()
    write_files(target, written)
    return {**numbers, "out": target.display()}


def _env_config(files: RunFiles) -> EnvConfig:
    job = files.read_document(JOB_CONFIG_FILE) or {}
    try:
        return EnvConfig.model_validate(job.get("env", {}))
    except ValueError as err:
        first = str(err).splitlines()[1:2] or [""]
        raise MalformedRunFile(
            f"{files.path(JOB_CONFIG_FILE)}: env is not a valid game configuration ({first[0].strip()}); "
            "write it back as `pbt-job train` wrote it"
        ) from None


def _trained_source(files: RunFiles, data: RunData, trial: str | None) -> PolicySource:
    if trial is None:
        best = files.path(BEST_DIR)
        if files.fs.get_file_info(best).type != pyarrow.fs.FileType.Directory:
            raise BadInput(
                f"{data.location.uri} has no {BEST_DIR}/ (`pbt-job train` writes it when the run ends): "
                "finish or resume the run, or pass --trial ID to evaluate a trial's latest checkpoint"
            )
        return PolicySource(best, f"{BEST_DIR}/ (best trial {data.best_trial()})")
    if trial not in data.trials:
        raise BadInput(f"--trial {trial}: no such trial in {data.location.uri}; its trials: {', '.join(data.trials)}")
    checkpoints = _checkpoints(files, trial)
    if not checkpoints:
        raise BadInput(f"--trial {trial}: the trial has no checkpoint left in {data.location.uri}; pick another trial")
    latest = checkpoints[-1]
    return PolicySource(f"{latest}/{MODULES_IN_CHECKPOINT}", f"trial {trial}, {latest.rsplit('/', 2)[-1]}")


def _initial_source(files: RunFiles, data: RunData, evaluated: str | None) -> tuple[PolicySource | None, str]:
    """The iteration-1 checkpoint of the evaluated trial's ancestry root, else of another trial; or why none."""
    root = ancestry(evaluated, data.exploits)[0].trial if evaluated else None
    for trial in sorted(data.trials, key=lambda t: t != root):
        first = (_checkpoints(files, trial) or [None])[0]
        if first is not None and _iteration_of(files.fs, first) == 1:
            why = "the root of the evaluated trial's ancestry" if trial == root else (
                f"standing in for {root}, the ancestry's root, whose iteration-1 checkpoint is gone")
            return PolicySource(f"{first}/{MODULES_IN_CHECKPOINT}", f"trial {trial} after iteration 1 ({why})"), ""
    return None, ("no iteration-1 checkpoint is left (checkpoint retention deleted them); "
                  "train with checkpoints.num_to_keep: null to keep them")


def _checkpoints(files: RunFiles, trial: str) -> list[str]:
    """The trial's `checkpoint_NNNNNN` folders, oldest first (Tune numbers them in saving order)."""
    fs, found = files.fs, []
    for folder in fs.get_file_info(pyarrow.fs.FileSelector(files.run_path)):
        if folder.type == pyarrow.fs.FileType.Directory and f"_{trial}_" in folder.base_name:
            for info in fs.get_file_info(pyarrow.fs.FileSelector(folder.path)):
                match = CHECKPOINT_DIR.fullmatch(info.base_name)
                if match and info.type == pyarrow.fs.FileType.Directory:
                    found.append((int(match.group(1)), info.path))
    return [path for _, path in sorted(found)]


def _iteration_of(fs: pyarrow.fs.FileSystem, checkpoint: str) -> int | None:
    """The training iteration an algorithm checkpoint was saved at (None: unreadable)."""
    try:
        with fs.open_input_stream(f"{checkpoint}/{ALGORITHM_STATE}") as stream:
            state = pickle.loads(stream.readall())  # trusted as the checkpoint's modules are; see the module doc
    except (OSError, pickle.UnpicklingError, EOFError) as err:
        logger.warning("[evaluate] %s: cannot read its iteration (%s); passing it over", checkpoint, err)
        return None
    return state.get("training_iteration") if isinstance(state, dict) else None


def _load_modules(fs: pyarrow.fs.FileSystem, path: str, policies: tuple[str, ...], local: Path) -> dict[str, Any]:
    """Each policy's RLModule from `path/<policy>/`, on the CPU, in evaluation mode."""
    from ray.rllib.core.rl_module.rl_module import RLModule

    if not isinstance(fs, pyarrow.fs.LocalFileSystem):
        pyarrow.fs.copy_files(path, str(local), source_filesystem=fs, use_threads=False)
        path = str(local)
    modules = {}
    for policy in policies:
        if not Path(path, policy).is_dir():
            raise BadInput(f"{path}: no RLModule of policy {policy} (the run's policies: {', '.join(policies)}); "
                           "the checkpoint is not this run's")
        with _quiet(logging.getLogger("ray._common.deprecation")):  # RLlib warns of a call RLlib itself makes
            module = RLModule.from_checkpoint(str(Path(path, policy)))
        module.eval()
        modules[policy] = module
    return modules


@contextlib.contextmanager
def _quiet(log: logging.Logger) -> Iterator[None]:
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _module_actions(modules: dict[str, Any], greedy: bool, policy: str, obs: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
    with torch.no_grad():
        logits = modules[policy].forward_inference({"obs": torch.from_numpy(obs)})["action_dist_inputs"].numpy()
    if greedy:
        return logits.argmax(axis=1)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    cumulative = np.cumsum(probs / probs.sum(axis=1, keepdims=True), axis=1)
    return np.minimum((cumulative < rng.random((len(obs), 1))).sum(axis=1), logits.shape[1] - 1)


def _random_actions(cfg: EnvConfig) -> Chooser:
    game = PredPreyGrassEnv(cfg)
    sizes = {policy: int(game.action_space(f"{policy}_0").n) for policy in cfg.policies}
    return lambda policy, obs, rng: rng.integers(sizes[policy], size=len(obs))


def _play(cfg: EnvConfig, choose: Chooser, seeds: list[int], recorder: Replay | None) -> dict[str, Any]:
    """Play one episode per seed; the first is recorded into `recorder`. Returns `_summarise`'s numbers."""
    game = PredPreyGrassEnv(cfg)
    episodes = []
    for index, seed in enumerate(seeds):
        record = recorder if index == 0 else None
        obs, _ = game.reset(seed=seed)
        rng = np.random.default_rng((seed, ACTION_STREAM))
        tally = EpisodeTally.start(game.state)
        if record is not None:
            record.add(game.state)
        while game.agents:
            alive_before, step_before = game.state.alive.copy(), game.state.step
            actions = {}
            for policy in cfg.policies:
                agents = [agent for agent in game.agents if policy_of(agent) == policy]
                if agents:
                    chosen = choose(policy, np.stack([obs[agent] for agent in agents]), rng)
                    actions.update(zip(agents, chosen.tolist()))
            obs, rewards, *_ = game.step(actions)
            tally.count_step(game.state, alive_before, rewards)
            if record is not None and game.state.step != step_before:
                record.add(game.state)
        episodes.append(tally.finish(game.state))
    return _summarise(episodes)


def _summarise(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and 95% CI of every number over episodes, plus the per-episode values they come from."""
    kinds = list(episodes[0]["kinds"])
    return {
        "episode_length": interval([e["length"] for e in episodes]),
        "agents_alive_at_end": interval([sum(k["alive_at_end"] for k in e["kinds"].values()) for e in episodes]),
        "per_policy": {
            kind: {name: interval([e["kinds"][kind][name] for e in episodes]) for name in FIELDS} for kind in kinds
        },
        "per_episode": episodes,
    }


def interval(values: list[float]) -> dict[str, Any]:
    """`mean`, `ci95` ([low, high] by Student's t, None for one value) and `std` (n - 1) of `values`."""
    array = np.asarray(values, dtype=np.float64)
    mean = float(array.mean())
    if len(array) < 2:
        return {"mean": mean, "ci95": None, "std": None}
    std = float(array.std(ddof=1))
    half = float(stats.t.ppf(0.975, len(array) - 1)) * std / math.sqrt(len(array))
    return {"mean": mean, "ci95": [mean - half, mean + half], "std": std}


def render_markdown(numbers: dict[str, Any]) -> str:
    """`evaluation.md`: per policy a row per set, then what each set is."""
    sets = numbers["sets"]
    lines = [
        f"# Evaluation: {numbers['run']}",
        "",
        f"Run `{numbers['uri']}`: {numbers['episodes']} episodes per set, seeds {numbers['seeds'][0]} to "
        f"{numbers['seeds'][1]} (episode i of every set starts from the same seed), actions "
        f"{numbers['actions']}. Mean per episode, with its {numbers['confidence_interval']} in brackets.",
        "",
        "| Policy | Set | Return | Reproductions | Catches | Caught | Starved | Alive at end |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for policy in numbers["policies"]:
        for name in POLICY_SETS:
            if sets[name]["available"]:
                row = sets[name]["per_policy"][policy]
                lines.append(f"| {policy} | {name} | " + " | ".join(_shown(row[f]) for f in FIELDS) + " |")
    lines += ["", "| Set | Episode length | Agents alive at end | Policies |", "|---|---|---|---|"]
    for name in POLICY_SETS:
        entry = sets[name]
        if entry["available"]:
            lines.append(f"| {name} | {_shown(entry['episode_length'])} | {_shown(entry['agents_alive_at_end'])} | "
                         f"{entry['source']} |")
        else:
            lines.append(f"| {name} | n/a | n/a | not available: {entry['source']} |")
    if "replay" in numbers:
        lines += ["", f"Replay of the trained set's first episode (seed {numbers['seeds'][0]}): "
                      f"[replay.gif](replay.gif), {numbers['replay']['frames']} frames (one per step, and the start)."]
    return "\n".join(lines) + "\n"


def summary_lines(numbers: dict[str, Any]) -> list[str]:
    """What `pbt-job evaluate` prints: per policy and set, the mean return [95% CI] and mean counts;
    per set, the episode length and agents alive at the end."""
    lines = []
    sets = {name: entry for name, entry in numbers["sets"].items() if entry["available"]}
    for policy in numbers["policies"]:
        for name, entry in sets.items():
            row = entry["per_policy"][policy]
            counts = ", ".join(f"{field} {row[field]['mean']:.3g}" for field in COUNTS_SHOWN)
            lines.append(f"{policy:<16} {name:<8} return {_shown(row['episode_return'])}, {counts}")
    for name, entry in numbers["sets"].items():
        if entry["available"]:
            lines.append(f"{name:<8} episode length {_shown(entry['episode_length'])}, "
                         f"agents alive at end {_shown(entry['agents_alive_at_end'])}; {entry['source']}")
        else:
            lines.append(f"{name:<8} not available: {entry['source']}")
    return lines


def _shown(value: dict[str, Any]) -> str:
    if value["ci95"] is None:
        return f"{value['mean']:.4g}"
    low, high = value["ci95"]
    return f"{value['mean']:.4g} [{low:.4g}, {high:.4g}]"

