"""`GridPPOLearner` builds the batch and makes the updates RLlib's stock PPO learner makes.

Same episodes, same weights, same shuffling seed: the learner connector's train batch
(advantages and value targets included) and the weights after an update are equal to
the last bit; non-finite gradients are made finite as RLlib does; the value pass that
GAE runs in chunks equals the one-pass values.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.connectors.learner.general_advantage_estimation import GeneralAdvantageEstimation
from ray.rllib.core import COMPONENT_OPTIMIZER
from ray.rllib.core.columns import Columns

from conftest import REPO
from pbt_job.training.algorithm import build_ppo_config, weights_digest
from pbt_job.training.config import load_config
from pbt_job.training.fast_env_runner import FastEnvRunner
from pbt_job.training.learner import GridPPOLearner, NoGradGAE
from pbt_job.training.model import VALUE_CHUNK
from pbt_job.training.ray_compat import learner_connector

GRAZING = REPO / "tests" / "data" / "grazing.yaml"


@pytest.fixture(scope="module")
def trained_pair(ray_start_2_cpus):
    """Episodes of one train batch (prey breed on the grazing board: lives with suffixed ids),
    and a stock and a grid learner with the same weights."""
    job = load_config(GRAZING, ["ppo.num_epochs=2", "resources.num_envs_per_env_runner=2", "pbt.seed=3"])
    config = build_ppo_config(job)
    runner = FastEnvRunner(config=config)
    episodes = []
    while sum(episode.env_steps() for episode in episodes) < config.train_batch_size_per_learner:
        episodes += runner.sample()
    spaces = runner.get_spaces()
    runner.stop()
    stock_config = config.copy(copy_frozen=False).learners(learner_class=PPOTorchLearner)
    stock = stock_config.framework(torch_skip_nan_gradients=False).build_learner(spaces=spaces)
    grid = config.build_learner(spaces=spaces)
    grid.module.set_state(stock.module.get_state())
    return config, episodes, stock, grid


def train_batch(learner, episodes: list) -> dict:
    return learner_connector(learner)(rl_module=learner.module, batch={}, episodes=copy.deepcopy(episodes),
                                      shared_data={}, metrics=learner.metrics)


def test_the_grid_learner_runs_gae_without_autograd_in_place_of_rllibs_piece(trained_pair):
    _, _, stock, grid = trained_pair
    assert type(learner_connector(stock).connectors[-1]) is GeneralAdvantageEstimation
    assert [type(piece) for piece in learner_connector(grid).connectors] == [
        *(type(piece) for piece in learner_connector(stock).connectors[:-1]), NoGradGAE]
    assert isinstance(grid, GridPPOLearner) and type(stock) is PPOTorchLearner


def test_the_grid_learner_builds_the_train_batch_rllib_builds(trained_pair):
    _, episodes, stock, grid = trained_pair
    expected, built = train_batch(stock, episodes), train_batch(grid, episodes)
    assert built.keys() == expected.keys() == set(stock.module.keys())
    for module_id, columns in expected.items():
        assert built[module_id].keys() == columns.keys()
        assert {Columns.ADVANTAGES, Columns.VALUE_TARGETS, Columns.LOSS_MASK} <= columns.keys()
        for column, values in columns.items():
            assert torch.equal(torch.as_tensor(built[module_id][column]), torch.as_tensor(values)), (module_id, column)
        assert not built[module_id][Columns.ADVANTAGES].requires_grad


def test_an_update_of_the_grid_learner_equals_rllibs(trained_pair):
    config, episodes, stock, grid = trained_pair
    losses = {}
    for name, learner in (("stock", stock), ("grid", grid)):
        np.random.seed(7)  # the minibatch shuffle
        results = learner.update(episodes=copy.deepcopy(episodes), timesteps={}, num_epochs=config.num_epochs,
                                 minibatch_size=config.minibatch_size, shuffle_batch_per_epoch=True)
        losses[name] = {module_id: float(results[module_id]["total_loss"].peek()) for module_id in learner.module.keys()}
    assert losses["grid"] == losses["stock"]
    for module_id in stock.module.keys():
        assert weights_digest(grid.module[module_id]) == weights_digest(stock.module[module_id]), module_id


def test_non_finite_gradients_are_made_finite_and_applied_as_rllib_does(trained_pair):
    _, _, stock, grid = trained_pair
    grid.module.set_state(stock.module.get_state())
    grid.set_state({COMPONENT_OPTIMIZER: stock.get_state(components=COMPONENT_OPTIMIZER)[COMPONENT_OPTIMIZER]})
    for learner in (stock, grid):
        gradients = {}
        for module_id in learner.module.keys():
            for index, param in enumerate(learner.get_parameters(learner.module[module_id])):
                grad = torch.full_like(param, 0.01)
                grad.view(-1)[0] = (float("nan"), float("inf"), -float("inf"), 1.0)[index % 4]
                gradients[learner.get_param_ref(param)] = grad
        learner.apply_gradients(learner.postprocess_gradients(gradients))
    for module_id in stock.module.keys():
        assert torch.isfinite(torch.cat([p.detach().view(-1) for p in grid.module[module_id].parameters()])).all()
        assert weights_digest(grid.module[module_id]) == weights_digest(stock.module[module_id]), module_id


def test_finite_gradients_too_large_for_the_norm_pass_unchanged_and_unreported(trained_pair, caplog):
    _, _, _, grid = trained_pair
    param = grid.get_parameters(grid.module["type_1_prey"])[0]
    huge = torch.full_like(param, 1e30)  # its norm overflows to inf
    assert grid.postprocess_gradients({grid.get_param_ref(param): huge})[grid.get_param_ref(param)] is huge
    assert "nan/inf" not in caplog.text


def test_values_of_a_batch_larger_than_a_chunk_equal_the_one_pass_values(trained_pair):
    _, _, stock, _ = trained_pair
    module = stock.module["type_1_prey"]
    obs = torch.rand(2 * VALUE_CHUNK + 5, *module.observation_space.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        one_pass = module.compute_values({}, embeddings=module.forward_train({Columns.OBS: obs})[Columns.EMBEDDINGS])
        torch.testing.assert_close(module.compute_values({Columns.OBS: obs}), one_pass)
