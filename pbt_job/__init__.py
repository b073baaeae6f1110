"""pbt-job: Population Based Training of RLlib PPO on the predator-prey-grass game."""

__version__ = "0.1.0"
