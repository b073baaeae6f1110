"""RLlib PPO and Ray Tune PBT for the predator-prey-grass game."""
