"""RLlib `MultiAgentEnv` adapter for the predator-prey-grass game.

RLlib (like PettingZoo) refuses data for an agent id after that id was reported
done in the same episode, but the game reuses the slot of a dead agent for a
newborn. The adapter therefore names each life: the first life of a slot keeps
the slot's id (`type_1_prey_3`), later lives in the same episode get a suffix
(`type_1_prey_3.1`, `type_1_prey_3.2`, ...). The policy is still the id without
its index, so the mapping is unchanged.

The game moves agents in the order of its action dict. RLlib's stock env runner
builds that dict from sets of agent ids, whose order follows Python's per-process
string hashing, so the same seeds would play different games in different
processes; the adapter hands the game its actions in slot order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray.rllib.env.multi_agent_env import MultiAgentEnv

from pbt_job.env import EnvConfig, PredPreyGrassEnv, policy_of
from pbt_job.env.parallel_env import SlotStep

LIFE_SEPARATOR = "."


def slot_id(agent_id: str) -> str:
    """The game's slot id of an adapter id (`type_1_prey_3.2` -> `type_1_prey_3`)."""
    return agent_id.split(LIFE_SEPARATOR, 1)[0]


def policy_mapping_fn(agent_id: str, episode: Any = None, **kwargs: Any) -> str:
    """One policy per agent kind: `type_1_prey_3.2` -> `type_1_prey`."""
    return policy_of(slot_id(agent_id))


class RLlibPredPreyGrass(MultiAgentEnv):
    """The game for RLlib's new API stack.

    Args:
        config: The `EnvConfig` fields as a dict (RLlib passes `env_config`).
    """

    def __init__(self, config: dict[str, Any] | None = None):
        super().__init__()
        self.game = PredPreyGrassEnv(EnvConfig.model_validate(dict(config or {})))
        self.possible_agents = list(self.game.possible_agents)
        self.observation_spaces = {a: self.game.observation_space(a) for a in self.possible_agents}
        self.action_spaces = {a: self.game.action_space(a) for a in self.possible_agents}
        self.agents: list[str] = []
        self._slot_index = {slot: index for index, slot in enumerate(self.possible_agents)}
        self._life_of: dict[str, str] = {}
        self._lives: dict[str, int] = {}

    def get_observation_space(self, agent_id: str):
        return self.game.observation_space(slot_id(agent_id))

    def get_action_space(self, agent_id: str):
        return self.game.action_space(slot_id(agent_id))

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, infos = self.game.reset(seed=seed, options=options)
        self._life_of, self._lives = {}, {}
        self._admit_newborns()
        obs = self._rename(obs)
        self.agents = list(obs)
        return obs, self._rename(infos)

    def step(self, action_dict: dict[str, int]):
        actions = {}
        for agent_id, action in action_dict.items():
            slot = slot_id(agent_id)
            if self._life_of.get(slot) != agent_id:
                raise KeyError(f"agent {agent_id!r} is not alive in this episode")
            actions[slot] = action
        results = self.game.step(dict(sorted(actions.items(), key=lambda item: self._slot_index[item[0]])))
        self._admit_newborns()
        obs, rewards, terminateds, truncateds, infos = (self._rename(d) for d in results)
        done = {slot for slot, flag in results[2].items() if flag} | {slot for slot, flag in results[3].items() if flag}
        # RLlib's env check wants every id with data in `agents`: the living plus those done this step.
        self.agents = list(obs)
        for slot in done & self._life_of.keys():
            del self._life_of[slot]
        episode_over = not self.game.agents
        terminateds["__all__"] = episode_over and any(results[2].values())
        truncateds["__all__"] = episode_over and not terminateds["__all__"]
        return obs, rewards, terminateds, truncateds, infos

    def step_slots(self, slots: np.ndarray, moves: np.ndarray) -> tuple[SlotStep, list[str], bool, bool]:
        """`step` as slot arrays, for the fast env runner: the game's `SlotStep`, the life id of each
        of its slots, and the episode's terminated and truncated flags (`step`'s `__all__`)."""
        played = self.game.step_slots(slots, moves)
        self._admit_newborns()
        ids, life_of = self.possible_agents, self._life_of
        lives = [life_of.get(ids[slot]) for slot in played.slots.tolist()]
        if None in lives:  # a newborn of the last step gets no life, as in `step`
            has_life = np.array([life is not None for life in lives])
            played = played.only(has_life, self.game.layout.role[played.slots])
            lives = [life for life in lives if life is not None]
        self.agents = lives
        for slot in played.slots[played.terminated | played.truncated].tolist():
            del life_of[ids[slot]]
        over = not self.game.agents
        terminated = over and bool(played.terminated.any())
        return played, lives, terminated, over and not terminated

    def _admit_newborns(self) -> None:
        """Give every living slot without a life id its next one."""
        for slot in self.game.agents:
            if slot not in self._life_of:
                count = self._lives.get(slot, 0)
                self._life_of[slot] = slot if count == 0 else f"{slot}{LIFE_SEPARATOR}{count}"
                self._lives[slot] = count + 1

    def _rename(self, per_slot: dict[str, Any]) -> dict[str, Any]:
        """Key a game dict by life ids, dropping slots with no life (inactive slots)."""
        life_of = self._life_of
        return {life_of[slot]: value for slot, value in per_slot.items() if slot in life_of}
