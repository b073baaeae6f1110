"""The predator-prey-grass game as a PettingZoo `ParallelEnv`; no Ray imports here."""

from pbt_job.env.config import KINDS, EnvConfig, PerKind
from pbt_job.env.parallel_env import PredPreyGrassEnv, policy_of

__all__ = ["KINDS", "EnvConfig", "PerKind", "PredPreyGrassEnv", "policy_of"]
