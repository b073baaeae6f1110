"""`pbt-job evaluate` and its replay: the episode tally, the GIF, and the command on a real short run.

The tally is checked against what the rewards say independently (rewards that encode
each event), the replay by decoding the GIF, the command on a real tiny PBT run kept
with all its checkpoints (so the initial set exists), locally and on S3 (moto).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.fs
import pytest
from PIL import Image
from scipy import stats

from conftest import list_keys
from env_helpers import random_actions
from test_cli import tree
from test_report import train_tiny
from pbt_job.cli import main
from pbt_job.env import KINDS, EnvConfig, PredPreyGrassEnv
from pbt_job.env.render import KIND_COLOUR
from pbt_job.env.replay import Replay, cell_px
from pbt_job.env.state import PREDATOR, PREY
from pbt_job.env.tally import EpisodeTally
from pbt_job.training.evaluate import FIELDS, POLICY_SETS

REPRODUCTION_REWARD = 1000.0
EVENT_REWARDS = {
    "reproduction_reward_predator": REPRODUCTION_REWARD, "reproduction_reward_prey": REPRODUCTION_REWARD,
    "catch_reward_predator": 1.0, "caught_reward_prey": -1.0,
}
"""Rewards that encode the events: a kind's return is 1000 x its reproductions + its catches - its caught."""
CROWDED = {
    "width": 7, "height": 11, "n_grass": 20, "max_steps": 120,
    "slots": {kind: 15 for kind in KINDS},  # 60 agents at most on 77 cells: every rewarded parent has a child
    "initial_agents": {kind: 3 for kind in KINDS},
    **EVENT_REWARDS,
}


def play_tallied(config: EnvConfig, seed: int) -> tuple[dict, dict[str, int]]:
    """A random episode's tally, and the births per role counted here from newborn slots."""
    game = PredPreyGrassEnv(config)
    game.reset(seed=seed)
    rng = np.random.default_rng(seed)
    tally, births = EpisodeTally.start(game.state), {PREDATOR: 0, PREY: 0}
    while game.agents:
        before = game.state.alive.copy()
        _, rewards, *_ = game.step(random_actions(game, rng))
        for role in births:
            births[role] += int(np.count_nonzero(game.state.alive & ~before & (game.state.layout.role == role)))
        tally.count_step(game.state, before, rewards)
    return tally.finish(game.state), births


@pytest.mark.parametrize("seed", range(6))
def test_the_tally_agrees_with_event_rewards_and_population_counts(seed):
    """Per kind: return == 1000 x reproductions + catches - caught (the rewards count the events on their own);
    per role: births seen as newborn slots == reproductions, and start + births - deaths == alive at end."""
    numbers, births = play_tallied(EnvConfig.model_validate(CROWDED), seed)
    kinds = numbers["kinds"]
    assert sum(k["reproductions"] for k in kinds.values()) > 0 and sum(k["catches"] for k in kinds.values()) > 0
    for kind, k in kinds.items():
        assert k["episode_return"] == REPRODUCTION_REWARD * k["reproductions"] + k["catches"] - k["caught"], kind
    assert sum(k["catches"] for k in kinds.values()) == sum(k["caught"] for k in kinds.values())
    for role, names in ((PREDATOR, KINDS[:2]), (PREY, KINDS[2:])):
        rows = [kinds[name] for name in names]
        assert births[role] == sum(r["reproductions"] for r in rows)
        deaths = sum(r["caught"] + r["starved"] for r in rows)
        assert sum(r["alive_at_start"] for r in rows) + births[role] - deaths == sum(r["alive_at_end"] for r in rows)


def test_a_replay_of_a_1000_step_episode_on_the_reference_board(capsys):
    """One frame per state (start + 1000 steps), the board 8 px a cell, agents in their kind's colour,
    the file small enough to keep and send (measured: 1.5 MB with random play)."""
    config = EnvConfig()
    game, replay = PredPreyGrassEnv(config), Replay(config)
    game.reset(seed=3)
    replay.add(game.state)
    rng = np.random.default_rng(3)
    first_prey = game.possible_agents.index("type_1_prey_0")
    where = (int(game.state.x[first_prey]), int(game.state.y[first_prey]))
    while game.agents:
        step = game.state.step
        game.step(random_actions(game, rng))
        if game.state.step != step:
            replay.add(game.state)
    data = replay.gif_bytes()
    with capsys.disabled():
        print(f"\nreplay of {game.state.step} steps on the {config.width} x {config.height} board: {len(data):,} bytes")
    assert game.state.step == config.max_steps == 1000
    assert len(data) < 3_000_000
    gif = Image.open(io.BytesIO(data))
    assert gif.n_frames == 1001
    px = cell_px(config)
    assert px == 8 and gif.size == (config.width * px, config.height * px + 28)
    first = np.asarray(gif.convert("RGB"))
    x, y = where
    assert tuple(first[y * px + px // 2, x * px + px // 2]) == KIND_COLOUR["type_1_prey"], "rows are y, columns x"


# The command on a real run: tiny.yaml, every checkpoint kept (so iteration 1's exists), 4 iterations.


@pytest.fixture(scope="module")
def local_run(ray_start_2_cpus, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    return Path(train_tiny(str(root), "evaluate", ["stop.training_iteration=4", "checkpoints.num_to_keep=null"]))


def evaluate(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(["evaluate", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_interval(interval: dict, values: list[float]) -> None:
    """Mean and 95% t interval recomputed here from the per-episode values."""
    mean = float(np.mean(values))
    half = stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values))
    assert interval["mean"] == pytest.approx(mean)
    assert interval["ci95"] == pytest.approx([mean - half, mean + half])


def assert_evaluation(folder: Path, episodes: int, policies: list[str]) -> dict:
    numbers = json.loads((folder / "evaluation.json").read_text())
    assert numbers["episodes"] == episodes and numbers["policies"] == policies
    for name in POLICY_SETS:
        entry = numbers["sets"][name]
        assert entry["available"], (name, entry["source"])
        assert len(entry["per_episode"]) == episodes
        assert_interval(entry["episode_length"], [e["length"] for e in entry["per_episode"]])
        for policy in policies:
            for field in FIELDS:
                assert_interval(entry["per_policy"][policy][field], [e["kinds"][policy][field] for e in entry["per_episode"]])
    markdown = (folder / "evaluation.md").read_text()
    assert all(f"| {policy} | {name} |" in markdown for policy in policies for name in POLICY_SETS)
    return numbers


@pytest.mark.slow
def test_evaluate_a_real_run_writes_paired_comparable_sets_and_a_replay(local_run, tmp_path, capsys):
    """1. Into RUN/evaluation: evaluation.json (trained, initial, random; means and CIs recomputed here from
       the per-episode values), evaluation.md, replay.gif (frames: the first trained episode's steps + 1).
    2. The initial set is the iteration-1 checkpoint of the best trial's ancestry root.
    3. Paired and repeatable: the same seed gives the same episodes, in every set; another seed does not.
    """
    code, out, err = evaluate([str(local_run), "--episodes", "4", "--seed", "7", "--replay"], capsys)
    assert code == 0, err
    folder = local_run / "evaluation"
    assert sorted(p.name for p in folder.iterdir()) == ["evaluation.json", "evaluation.md", "replay.gif"]
    numbers = assert_evaluation(folder, 4, ["type_1_predator", "type_1_prey", "type_2_prey"])
    assert numbers["seeds"] == [7, 10] and numbers["actions"] == "sampled"
    summary = json.loads((local_run / "summary.json").read_text())
    assert numbers["sets"]["trained"]["source"] == f"best/ (best trial {summary['best_trial']})"
    assert "after iteration 1" in numbers["sets"]["initial"]["source"]
    gif = Image.open(folder / "replay.gif")
    assert gif.n_frames == numbers["sets"]["trained"]["per_episode"][0]["length"] + 1 == numbers["replay"]["frames"]
    assert out.splitlines()[-1] == f"evaluation: {folder}"
    assert all(f"{policy:<16} {name:<8} return " in out for policy in numbers["policies"] for name in POLICY_SETS)

    code, _, err = evaluate([str(local_run), "--episodes", "4", "--seed", "7", "--out", str(tmp_path / "again")], capsys)
    assert code == 0, err
    again = json.loads((tmp_path / "again" / "evaluation.json").read_text())
    for name in POLICY_SETS:
        assert again["sets"][name]["per_episode"] == numbers["sets"][name]["per_episode"], name
    assert evaluate([str(local_run), "--episodes", "4", "--seed", "8", "--out", str(tmp_path / "other")], capsys)[0] == 0
    other = json.loads((tmp_path / "other" / "evaluation.json").read_text())
    assert other["sets"]["random"]["per_episode"][:3] == numbers["sets"]["random"]["per_episode"][1:], \
        "episode i plays seed S + i: seed 8's first three are seed 7's last three"


@pytest.mark.slow
def test_greedy_and_trial_select_actions_and_weights(local_run, tmp_path, capsys):
    """--greedy takes the argmax; --trial evaluates that trial's latest checkpoint instead of best/."""
    summary = json.loads((local_run / "summary.json").read_text())
    other = next(trial for trial in summary["trials"] if trial != summary["best_trial"])
    code, _, err = evaluate([str(local_run), "--episodes", "2", "--greedy", "--trial", other, "--out", str(tmp_path)],
                            capsys)
    assert code == 0, err
    numbers = json.loads((tmp_path / "evaluation.json").read_text())
    assert numbers["actions"] == "greedy"
    assert numbers["sets"]["trained"]["source"].startswith(f"trial {other}, checkpoint_")


@pytest.mark.slow
def test_initial_policies_gone_to_retention_are_said_not_failed(local_run, tmp_path, capsys):
    """Without any iteration-1 checkpoint the initial set is marked unavailable, with why; the rest is evaluated."""
    run = tmp_path / "evaluate"
    shutil.copytree(local_run, run, ignore=shutil.ignore_patterns("evaluation"))
    for trial_folder in run.glob("PBTPPO_*"):
        shutil.rmtree(min(trial_folder.glob("checkpoint_*")))
    code, out, err = evaluate([str(run), "--episodes", "2"], capsys)
    assert code == 0, err
    numbers = json.loads((run / "evaluation" / "evaluation.json").read_text())
    assert numbers["sets"]["initial"] == {"available": False, "source": numbers["sets"]["initial"]["source"]}
    assert "num_to_keep: null" in numbers["sets"]["initial"]["source"] and "initial  not available: " in out
    assert numbers["sets"]["trained"]["available"] and numbers["sets"]["random"]["available"]


@pytest.mark.slow
def test_evaluate_a_run_on_s3(local_run, s3_endpoint, bucket, tmp_path, monkeypatch, capsys):
    """An s3:// run (the local run's files uploaded to moto) evaluates into ./evaluation-NAME by default."""
    s3 = pyarrow.fs.S3FileSystem(endpoint_override=s3_endpoint, region="us-east-1")
    pyarrow.fs.copy_files(str(local_run), f"{bucket}/runs/evaluate", destination_filesystem=s3, use_threads=False)
    assert "runs/evaluate/best/type_1_prey/module_state.pkl" in list_keys(bucket, "runs/evaluate/best/")
    monkeypatch.chdir(tmp_path)
    code, out, err = evaluate([f"s3://{bucket}/runs/evaluate", "--episodes", "2"], capsys)
    assert code == 0, err
    assert_evaluation(tmp_path / "evaluation-evaluate", 2, ["type_1_predator", "type_1_prey", "type_2_prey"])


BAD_INPUT = {
    "missing-run": (lambda run, tmp: [str(tmp / "nope")], ["no such run folder"]),
    "episodes": (lambda run, tmp: [str(run), "--episodes", "0"], ["--episodes 0"]),
    "seed": (lambda run, tmp: [str(run), "--seed", "-1"], ["--seed -1"]),
    "trial": (lambda run, tmp: [str(run), "--trial", "nope"], ["--trial nope", "its trials:"]),
    "out-is-a-file": (lambda run, tmp: [str(run), "--out", str(tmp / "taken")], ["--out"]),
    "no-best": (lambda run, tmp: [str(tmp / "unfinished")], ["has no best/", "--trial ID"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(local_run, tmp_path, capsys, case):
    (tmp_path / "taken").write_text("a file, not a folder")
    shutil.copytree(local_run, tmp_path / "unfinished", ignore=shutil.ignore_patterns("best", "evaluation"))
    before = tree(tmp_path), tree(local_run)
    args, needles = BAD_INPUT[case]
    code, out, err = evaluate(args(local_run, tmp_path), capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and all(n in lines[0] for n in needles), (code, lines)
    assert (tree(tmp_path), tree(local_run)) == before
