"""PPO's torch Learner for this game: RLlib's update, the same arithmetic, less bookkeeping around it.

A trial's iteration on the reference game trains ~50,000 agent steps (three policies,
many short lives) in ~250 minibatch updates, in the trial's one CPU. Two pieces of
RLlib's update cost time without changing what is learned; this learner does them
with the same result and less work:

* GAE's value forward pass over the whole batch ran with autograd on (the learner
  connector runs outside `no_grad`), building a graph over every observation that
  GAE then turns into numpy and drops. `NoGradGAE` runs it without one (and the model's
  `compute_values` encodes so large a batch in cache-sized chunks).
* Before each optimizer step RLlib checks every gradient tensor for NaN/inf twice, one
  `isfinite` per parameter tensor and check (96 per update for three policies: ~6 ms of
  each ~50 ms update). `postprocess_gradients` clears them all with one foreach norm
  (~1 ms) and, when one is not finite, does what RLlib does: replaces NaN with 0 and
  +-inf with the largest finite float, then steps. `build_ppo_config` turns RLlib's own
  checks off (`torch_skip_nan_gradients`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.nn.utils import get_total_norm
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.connectors.learner.general_advantage_estimation import GeneralAdvantageEstimation

from pbt_job.training.ray_compat import learner_connector

logger = logging.getLogger(__name__)


class NoGradGAE(GeneralAdvantageEstimation):
    """RLlib's GAE piece whose value forward pass builds no autograd graph: its values only
    become numpy advantages and targets (the loss computes its own values with gradients)."""

    def __call__(self, **kwargs: Any) -> Any:
        with torch.no_grad():
            return super().__call__(**kwargs)


class GridPPOLearner(PPOTorchLearner):
    """`PPOTorchLearner` with `NoGradGAE` in place of GAE and one finite check per update."""

    def build(self) -> None:
        super().build()
        pipeline = learner_connector(self)
        if pipeline is not None and any(type(piece) is GeneralAdvantageEstimation for piece in pipeline.connectors):
            pipeline.remove(GeneralAdvantageEstimation)
            pipeline.append(NoGradGAE(gamma=self.config.gamma, lambda_=self.config.lambda_))

    def postprocess_gradients(self, gradients_dict: dict[Any, torch.Tensor]) -> dict[Any, torch.Tensor]:
        gradients = super().postprocess_gradients(gradients_dict)
        present = [grad for grad in gradients.values() if grad is not None]
        # A NaN or inf anywhere makes the norm NaN or inf; a finite norm clears every tensor at once.
        if not present or torch.isfinite(get_total_norm(present, foreach=True)):
            return gradients
        if all(torch.isfinite(grad).all() for grad in present):  # finite values whose squares overflowed
            return gradients
        logger.warning("Gradients contain nan/inf values: setting them to finite values (RLlib's default)")
        return {key: None if grad is None else torch.nan_to_num(grad) for key, grad in gradients.items()}
