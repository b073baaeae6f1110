"""Validated configuration of the predator-prey-grass game.

Defaults equal the reference PBT configuration in `shared/spec/predpreygrass.md`;
YAML files only override. Every field is a keyword with a default and a one-line
description, and every bad value is rejected at load time with the field's name.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

KINDS = ("type_1_predator", "type_2_predator", "type_1_prey", "type_2_prey")
"""Agent kinds, in the order their slots appear in `possible_agents`."""


class PerKind(BaseModel):
    """One non-negative count per agent kind."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    type_1_predator: int = Field(ge=0)
    type_2_predator: int = Field(ge=0)
    type_1_prey: int = Field(ge=0)
    type_2_prey: int = Field(ge=0)

    def get(self, kind: str) -> int:
        return getattr(self, kind)


class Slots(PerKind):
    """Agent slots per kind; a kind with 0 slots has no agents and no policy."""

    type_1_predator: int = Field(50, ge=0)
    type_2_predator: int = Field(0, ge=0)
    type_1_prey: int = Field(40, ge=0)
    type_2_prey: int = Field(40, ge=0)


class InitialAgents(PerKind):
    """Agents alive at reset per kind."""

    type_1_predator: int = Field(12, ge=0)
    type_2_predator: int = Field(0, ge=0)
    type_1_prey: int = Field(10, ge=0)
    type_2_prey: int = Field(10, ge=0)


class EnvConfig(BaseModel):
    """Rules and sizes of one predator-prey-grass game.

    Quirks of the reference are kept as defaults and flagged `Quirk:` below.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    width: int = Field(25, ge=2, le=1024, description="Grid cells along x (bounded, no wrap-around).")
    height: int = Field(25, ge=2, le=1024, description="Grid cells along y (bounded, no wrap-around).")
    max_steps: int = Field(1000, ge=1, description="Steps after which the episode is truncated.")
    slots: Slots = Field(
        default_factory=Slots,
        description="Agent slots per kind: the ids type_<k>_<role>_<i> with i < slots.",
    )
    initial_agents: InitialAgents = Field(
        default_factory=InitialAgents,
        description="Agents alive at reset per kind (slots 0..n-1).",
    )
    obs_range_predator: int = Field(7, ge=1, description="Side of a predator's square observation window (odd).")
    obs_range_prey: int = Field(9, ge=1, description="Side of a prey's square observation window (odd).")
    move_range_type_1: int = Field(3, ge=1, description="Side of type_1 agents' square move range (odd).")
    move_range_type_2: int = Field(5, ge=1, description="Side of type_2 agents' square move range (odd).")
    initial_energy_predator: float = Field(6.0, gt=0, description="Predator energy at reset; a parent pays it per child.")
    initial_energy_prey: float = Field(3.0, gt=0, description="Prey energy at reset; a parent pays it per child.")
    energy_loss_per_step_predator: float = Field(0.06, ge=0, description="Energy an acting predator loses each step.")
    energy_loss_per_step_prey: float = Field(0.02, ge=0, description="Energy an acting prey loses each step.")
    move_energy_cost_factor: float = Field(
        0.01, ge=0, description="Move cost = euclidean distance moved x factor x current energy."
    )
    n_grass: int = Field(100, ge=0, description="Grass patches, each on its own cell.")
    initial_energy_grass: float = Field(2.0, ge=0, description="Grass patch energy at reset.")
    energy_gain_per_step_grass: float = Field(0.1, ge=0, description="Regrowth of every patch per step.")
    max_energy_grass: float = Field(2.0, ge=0, description="Cap on a patch's energy.")
    max_energy_gain_predator: float = Field(5.0, ge=0, description="Cap on the prey energy a predator can take.")
    max_energy_gain_prey: float = Field(1.5, ge=0, description="Cap on the grass energy a prey can take.")
    energy_transfer_efficiency: float = Field(0.9, ge=0.0, le=1.0, description="Share of eaten energy gained.")
    max_energy_predator: float = Field(20.0, gt=0, description="Cap on a predator's energy.")
    max_energy_prey: float = Field(14.0, gt=0, description="Cap on a prey's energy.")
    reproduction_energy_predator: float = Field(12.0, gt=0, description="Predator energy needed to reproduce.")
    reproduction_energy_prey: float = Field(8.0, gt=0, description="Prey energy needed to reproduce.")
    reproduction_cooldown_steps: int = Field(5, ge=0, description="Steps between two reproductions of one parent.")
    reproduction_chance_predator: float = Field(0.95, ge=0.0, le=1.0, description="Chance an eligible predator reproduces.")
    reproduction_chance_prey: float = Field(0.95, ge=0.0, le=1.0, description="Chance an eligible prey reproduces.")
    mutation_rate_predator: float = Field(0.05, ge=0.0, le=1.0, description="Chance a predator child flips type.")
    mutation_rate_prey: float = Field(0.05, ge=0.0, le=1.0, description="Chance a prey child flips type.")
    child_energy_efficiency: float = Field(0.9, ge=0.0, le=1.0, description="Child energy = initial energy x this.")
    reproduction_reward_predator: float = Field(10.0, description="Reward to a predator parent per reproduction.")
    reproduction_reward_prey: float = Field(10.0, description="Reward to a prey parent per reproduction.")
    catch_reward_predator: float = Field(0.0, description="Reward to a predator for catching a prey.")
    eat_reward_prey: float = Field(0.0, description="Reward to a prey for eating grass.")
    caught_reward_prey: float = Field(0.0, description="Reward to a prey for being caught (a penalty if negative).")
    step_reward_predator: float = Field(0.0, description="Reward to every acting predator each step.")
    step_reward_prey: float = Field(0.0, description="Reward to every acting prey each step.")
    reuse_slots: bool = Field(
        True,
        description=(
            "A newborn may take a slot freed by a death earlier in the episode (the reference rule). "
            "False keeps such slots closed until reset, so an id never returns after its termination "
            "(PettingZoo's contract)."
        ),
    )
    quirk_prey_child_uses_predator_mutation_rate: bool = Field(
        True,
        description="Quirk: the reference flips prey children with the predator rate; false uses mutation_rate_prey.",
    )
    quirk_truncate_after_last_step: bool = Field(
        True,
        description=(
            "Quirk: the reference reports truncation on the call after step max_steps, for every slot; "
            "false truncates the live agents in step max_steps itself."
        ),
    )

    @model_validator(mode="after")
    def _check_consistency(self) -> EnvConfig:
        for name in ("obs_range_predator", "obs_range_prey", "move_range_type_1", "move_range_type_2"):
            if getattr(self, name) % 2 == 0:
                raise ValueError(f"{name} must be odd (the window is centred on the agent), got {getattr(self, name)}")
        largest_window = 2 * max(self.width, self.height) - 1
        for name in ("obs_range_predator", "obs_range_prey"):
            if getattr(self, name) > largest_window:
                raise ValueError(
                    f"{name}={getattr(self, name)} exceeds 2*max(width, height)-1={largest_window}: "
                    "a larger window only sees padding"
                )
        for kind in KINDS:
            if self.initial_agents.get(kind) > self.slots.get(kind):
                raise ValueError(
                    f"initial_agents.{kind}={self.initial_agents.get(kind)} exceeds slots.{kind}={self.slots.get(kind)}"
                )
        predators = self.initial_agents.type_1_predator + self.initial_agents.type_2_predator
        prey = self.initial_agents.type_1_prey + self.initial_agents.type_2_prey
        if predators == 0 or prey == 0:
            raise ValueError("initial_agents must hold at least one predator and one prey, or the game ends at once")
        cells = self.width * self.height
        slots = sum(self.slots.get(kind) for kind in KINDS)
        if slots > cells:
            raise ValueError(f"slots: {slots} in all exceed the {cells} grid cells; an agent needs a cell of its own")
        if predators + prey + self.n_grass > cells:
            raise ValueError(
                f"initial_agents ({predators + prey}) + n_grass ({self.n_grass}) exceed the {cells} grid cells: "
                "each starts on its own cell"
            )
        if self.initial_energy_grass > self.max_energy_grass:
            raise ValueError("initial_energy_grass must not exceed max_energy_grass")
        for role in ("predator", "prey"):
            initial = getattr(self, f"initial_energy_{role}")
            threshold = getattr(self, f"reproduction_energy_{role}")
            cap = getattr(self, f"max_energy_{role}")
            if not initial < threshold <= cap:
                raise ValueError(
                    f"need initial_energy_{role} ({initial}) < reproduction_energy_{role} ({threshold}) "
                    f"<= max_energy_{role} ({cap}), so a parent keeps positive energy"
                )
        return self

    @property
    def policies(self) -> tuple[str, ...]:
        """Kinds that have slots, one policy each."""
        return tuple(kind for kind in KINDS if self.slots.get(kind) > 0)
