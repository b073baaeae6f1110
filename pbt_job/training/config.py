"""The job's YAML configuration: game, PPO, resources, PBT, stop, checkpoints.

Frozen pydantic models with a description on every field; defaults follow the
reference set-up in `shared/spec/predpreygrass.md`, so `configs/*.yaml` only
override. `load_config` turns a YAML file plus `--set KEY=VALUE` overrides into a
`JobConfig`, and every mistake into a `ConfigError` that names the field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from pbt_job.env import EnvConfig
from pbt_job.errors import BadInput
from pbt_job.result_keys import SCORE_KEY, metric_names

DEFAULT_METRICS_PORT = 9464
RUN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
"""A run name is a folder name: 1-63 letters, digits, `_`, `.`, `-`, starting with a letter or digit."""
"""Clear of Ray's metrics (8080) and node-exporter (9100)."""


class ConfigError(BadInput):
    """A bad user input; the message names the field and the fix."""


STRICT = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)
"""No unknown keys; no booleans, fractions or numeric strings where integers belong; finite numbers."""


class _Frozen(BaseModel):
    model_config = STRICT


MAX_BATCH = 10_000_000
LayerWidth = Annotated[int, Field(ge=1, le=4096)]


class PPOSettings(_Frozen):
    """PPO hyperparameters; those listed under `pbt.mutations` are the population's starting points."""

    lr: float = Field(5e-4, gt=0, description="Adam learning rate.")
    gamma: float = Field(0.99, gt=0, le=1, description="Discount factor.")
    lambda_: float = Field(0.95, ge=0, le=1, alias="lambda", description="GAE lambda.")
    clip_param: float = Field(0.3, gt=0, description="PPO surrogate clip range.")
    vf_loss_coeff: float = Field(1.0, ge=0, description="Weight of the value loss.")
    vf_clip_param: float = Field(10.0, gt=0, description="Clip range of the value loss.")
    entropy_coeff: float = Field(0.01, ge=0, description="Weight of the entropy bonus.")
    kl_coeff: float = Field(0.2, ge=0, description="Initial KL penalty coefficient.")
    kl_target: float = Field(0.01, gt=0, description="Target KL divergence.")
    num_epochs: int = Field(10, ge=1, le=1000, description="SGD passes over each train batch.")
    minibatch_size: int = Field(256, ge=1, le=MAX_BATCH, description="SGD minibatch size (agent steps).")
    train_batch_size_per_learner: int = Field(
        1024, ge=1, le=MAX_BATCH, description="Agent steps per train batch and learner."
    )
    conv_channels: list[LayerWidth] | None = Field(
        None, min_length=1, description="Channels of the 3x3 conv layers; null = the spec's 16, 32, 64, 64... with (R-1)/2 layers."
    )
    hidden_sizes: list[LayerWidth] | None = Field(
        None, min_length=1, max_length=16, description="Dense layers after the convs; null = [256, 256] ([384, 256] above 20 actions)."
    )

    model_config = ConfigDict(**STRICT, populate_by_name=True)

    @model_validator(mode="after")
    def _check_batches(self) -> PPOSettings:
        if self.train_batch_size_per_learner < self.minibatch_size:
            raise ValueError(
                f"train_batch_size_per_learner: {self.train_batch_size_per_learner} must be >= "
                f"minibatch_size ({self.minibatch_size})"
            )
        return self


MUTABLE = ("lr", "gamma", "lambda", "clip_param", "vf_loss_coeff", "entropy_coeff", "kl_coeff",
           "num_epochs", "minibatch_size", "train_batch_size_per_learner")
"""PPO settings PBT may mutate (YAML names): those a live trial can change in place (see `PBTPPO.reset_config`).
Model shape and runner counts are fixed at a trial's start."""

INTEGER_SETTINGS = ("num_epochs", "minibatch_size", "train_batch_size_per_learner")


class Mutation(_Frozen):
    """The domain PBT explores for one hyperparameter.

    `choice` picks from `values` (explore moves to a neighbouring value),
    `uniform`/`loguniform` sample in [low, high] (explore scales by 0.8 or 1.2),
    `randint` samples an integer in [low, high].
    """

    type: Literal["choice", "uniform", "loguniform", "randint"] = Field(description="Kind of domain.")
    values: list[float] | None = Field(None, description="Candidates of a `choice` domain.")
    low: float | None = Field(None, description="Lower bound of a range domain.")
    high: float | None = Field(None, description="Upper bound of a range domain (inclusive for randint).")

    @model_validator(mode="after")
    def _check_domain(self) -> Mutation:
        if self.type == "choice":
            if not self.values:
                raise ValueError("a choice mutation needs a non-empty `values` list")
            if self.low is not None or self.high is not None:
                raise ValueError("a choice mutation takes `values`, not `low`/`high`")
            return self
        if self.values is not None:
            raise ValueError(f"a {self.type} mutation takes `low` and `high`, not `values`")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} mutation needs `low` and `high`")
        if not self.low < self.high:
            raise ValueError(f"inverted range: low ({self.low}) must be < high ({self.high})")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"a loguniform mutation needs low > 0, got {self.low}")
        if self.type == "randint" and not (float(self.low).is_integer() and float(self.high).is_integer()):
            raise ValueError("a randint mutation needs integer `low` and `high`")
        return self

    def bounds(self) -> tuple[float, float]:
        return (min(self.values), max(self.values)) if self.type == "choice" else (self.low, self.high)


def _check_domain_within_field(name: str, mutation: Mutation) -> None:
    """Every value a trial can get from `mutation` (its choices, or its range's ends: explore clamps
    into them) must be valid for the PPO setting itself."""
    field = {f.alias or n: f for n, f in PPOSettings.model_fields.items()}[name]
    check = TypeAdapter(Annotated[field.annotation, *field.metadata], config=ConfigDict(strict=True))
    for value in mutation.values if mutation.type == "choice" else (mutation.low, mutation.high):
        if name in INTEGER_SETTINGS:
            if not float(value).is_integer():
                raise ValueError(f"mutations.{name}: {value:g} is not an integer, and {name} counts")
            value = int(value)
        try:
            check.validate_python(value)
        except ValidationError as err:
            raise ValueError(
                f"mutations.{name}: {value:g} is not a valid {name} ({err.errors()[0]['msg'].lower()}); "
                f"every value of the domain must be (see ppo.{name})"
            ) from None


def _reference_mutations() -> dict[str, Mutation]:
    return {
        "lr": Mutation(type="choice", values=[1e-3, 5e-4, 1e-4]),
        "clip_param": Mutation(type="uniform", low=0.1, high=0.3),
        "entropy_coeff": Mutation(type="choice", values=[0.0, 1e-3, 5e-3]),
        "num_epochs": Mutation(type="randint", low=10, high=30),
        "minibatch_size": Mutation(type="choice", values=[128, 256, 512]),
        "train_batch_size_per_learner": Mutation(type="choice", values=[1024, 2048]),
    }


class PBTConfig(_Frozen):
    """Population Based Training (Jaderberg et al. 2017, https://arxiv.org/abs/1711.09846)."""

    scheduler: Literal["pbt", "pb2"] = Field("pbt", description="Tune scheduler: PopulationBasedTraining or PB2.")
    population: int = Field(4, ge=2, le=10_000, description="Trials in the population (PBT needs at least two).")
    perturbation_interval: int = Field(3, ge=1, description="Training iterations between exploit/explore rounds.")
    quantile_fraction: float = Field(0.25, gt=0, le=0.5, description="Share of the population copied from/to.")
    resample_probability: float = Field(0.25, ge=0, le=1, description="Chance explore resamples instead of perturbing.")
    metric: str = Field(SCORE_KEY, min_length=1, description="Result key ranked by PBT (default: see `score`).")
    mode: Literal["max", "min"] = Field("max", description="Whether a higher or lower metric is better.")
    mutations: dict[str, Mutation] = Field(
        default_factory=_reference_mutations, description="Hyperparameters to explore and their domains."
    )
    max_train_batch_size: int = Field(2048, ge=2, le=MAX_BATCH, description="Explore keeps train batch <= this.")
    min_epochs: int = Field(1, ge=1, le=1000, description="Explore keeps num_epochs >= this.")
    max_epochs: int = Field(30, ge=1, le=1000, description="Explore keeps num_epochs <= this.")
    synch: bool = Field(False, description="Synchronous PBT (waits for the whole population; fragile on failure).")
    seed: int = Field(
        0, ge=0, le=2**31 - 1,
        description="Seeds the initial sampling and explore/exploit; trial i (0-based) gets RLlib seed `seed + i`.",
    )

    @model_validator(mode="after")
    def _check_mutations(self) -> PBTConfig:
        if not self.mutations:
            raise ValueError("mutations must name at least one hyperparameter, e.g. lr")
        for name, mutation in self.mutations.items():
            if name not in MUTABLE:
                raise ValueError(
                    f"mutations.{name}: cannot change in place in a live trial (exploits reuse the trial's actor); "
                    f"choose from {', '.join(MUTABLE)}"
                )
            if name in INTEGER_SETTINGS and mutation.type in ("uniform", "loguniform"):
                raise ValueError(f"mutations.{name}: an integer setting; use type choice or randint")
            _check_domain_within_field(name, mutation)
        if self.min_epochs > self.max_epochs:
            raise ValueError(f"min_epochs: {self.min_epochs} must be <= max_epochs ({self.max_epochs})")
        minibatch = self.mutations.get("minibatch_size")
        if minibatch is not None and 2 * minibatch.bounds()[0] > self.max_train_batch_size:
            raise ValueError(
                f"mutations.minibatch_size: the smallest minibatch ({minibatch.bounds()[0]:g}) x 2 exceeds "
                f"max_train_batch_size ({self.max_train_batch_size}); explore could not keep train batch >= 2 x minibatch"
            )
        return self


class ResourcesConfig(_Frozen):
    """What each trial asks Ray for."""

    num_env_runners: int = Field(
        0, ge=0, le=1024, description="Remote env runners per trial (0 samples in the trial itself)."
    )
    num_envs_per_env_runner: int = Field(1, ge=1, le=1024, description="Games per env runner, stepped together.")
    env_runner: Literal["fast", "stock"] = Field(
        "fast",
        description=(
            "Sampling loop: 'fast' batches all agents of all the runner's games into one forward pass per "
            "policy and step (pbt_job/training/fast_env_runner.py); 'stock' is RLlib's MultiAgentEnvRunner."
        ),
    )
    rollout_fragment_length: int | Literal["auto"] = Field("auto", description="Env steps per sample call.")
    num_cpus_per_trial: float = Field(1.0, gt=0, description="CPUs of a trial's main process (and local learner).")
    num_cpus_per_env_runner: float = Field(1.0, gt=0, description="CPUs per remote env runner.")
    num_learners: int = Field(0, ge=0, le=1024, description="Remote learners per trial (0: learn in the main process).")
    num_gpus_per_learner: float = Field(0.0, ge=0, description="GPUs per learner (the main process when 0 learners).")

    @field_validator("rollout_fragment_length", mode="before")
    @classmethod
    def _check_fragment(cls, value: Any) -> Any:
        if value != "auto" and not (type(value) is int and 1 <= value <= MAX_BATCH):
            raise ValueError(f"{value!r}: use 'auto' or a whole number of env steps from 1 to {MAX_BATCH}")
        return value


class StopConfig(_Frozen):
    """When a trial stops; at least one criterion."""

    training_iteration: int | None = Field(None, ge=1, description="Iterations per trial.")
    time_total_s: float | None = Field(None, gt=0, description="Wall time per trial, seconds.")

    @model_validator(mode="after")
    def _check_any(self) -> StopConfig:
        if self.training_iteration is None and self.time_total_s is None:
            raise ValueError("set training_iteration and/or time_total_s, or trials never stop")
        return self


class CheckpointsConfig(_Frozen):
    """Checkpoint cadence and retention; exploits pin what they still need."""

    frequency: int = Field(1, ge=0, description="Checkpoint every N iterations (0: only for exploits and at end).")
    num_to_keep: int | None = Field(2, ge=1, description="Checkpoints kept per trial besides pinned ones; null keeps all.")
    at_end: bool = Field(True, description="Checkpoint each trial when it stops.")


class JobConfig(_Frozen):
    """One pbt-job run."""

    name: str = Field("pbt-predpreygrass", pattern=RUN_NAME_PATTERN, description="Run name (the run folder's name).")
    env: EnvConfig = Field(default_factory=EnvConfig, description="The game.")
    ppo: PPOSettings = Field(default_factory=PPOSettings, description="PPO hyperparameters.")
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig, description="Per-trial resources.")
    pbt: PBTConfig = Field(default_factory=PBTConfig, description="Population Based Training.")
    stop: StopConfig = Field(default_factory=lambda: StopConfig(training_iteration=30), description="Stop criteria.")
    checkpoints: CheckpointsConfig = Field(default_factory=CheckpointsConfig, description="Checkpoints.")
    metrics_port: int = Field(
        DEFAULT_METRICS_PORT, ge=0, le=65535, description="Prometheus exporter port on the driver (0 disables)."
    )

    @model_validator(mode="after")
    def _check_schedule(self) -> JobConfig:
        iterations = self.stop.training_iteration
        if iterations is not None and self.pbt.perturbation_interval >= iterations:
            raise ValueError(
                f"pbt.perturbation_interval: {self.pbt.perturbation_interval} must be < stop.training_iteration "
                f"({iterations}), or no exploit ever happens"
            )
        self._check_initial_population()
        self._check_metric()
        self._check_model_fits_windows()
        return self

    def _check_metric(self) -> None:
        known = metric_names(self.env.policies)
        if self.pbt.metric not in known:
            raise ValueError(
                f"pbt.metric: {self.pbt.metric!r} is not a key every result carries; choose one of {', '.join(known)}"
            )

    def _check_model_fits_windows(self) -> None:
        """Each unpadded 3x3 conv layer shrinks the observation window by 2 (see `training/model.py`)."""
        layers = len(self.ppo.conv_channels or [])
        for name in ("obs_range_predator", "obs_range_prey"):
            window = getattr(self.env, name)
            if layers > (window - 1) // 2:
                raise ValueError(
                    f"ppo.conv_channels: {layers} unpadded 3x3 conv layers need an observation window of at least "
                    f"{2 * layers + 1}, but env.{name} is {window}; use at most {(window - 1) // 2} layers"
                )

    def _check_initial_population(self) -> None:
        """Every trial drawn from the mutation domains must already keep explore's constraints."""
        mutations, pbt = self.pbt.mutations, self.pbt

        def span(name: str) -> tuple[float, float]:
            value = getattr(self.ppo, name)
            return mutations[name].bounds() if name in mutations else (value, value)

        largest_minibatch = span("minibatch_size")[1]
        smallest_train, largest_train = span("train_batch_size_per_learner")
        if {"minibatch_size", "train_batch_size_per_learner"} & mutations.keys():
            if smallest_train < 2 * largest_minibatch:
                raise ValueError(
                    f"pbt.mutations: a trial could start with train_batch_size_per_learner {smallest_train:g} < "
                    f"2 x minibatch_size {largest_minibatch:g}; narrow the domains (or ppo values)"
                )
            if largest_train > pbt.max_train_batch_size:
                raise ValueError(
                    f"pbt.mutations: train_batch_size_per_learner can reach {largest_train:g} > "
                    f"pbt.max_train_batch_size {pbt.max_train_batch_size}"
                )
        low, high = span("num_epochs")
        if "num_epochs" in mutations and (low < pbt.min_epochs or high > pbt.max_epochs):
            raise ValueError(
                f"pbt.mutations.num_epochs: domain [{low:g}, {high:g}] must lie within "
                f"[pbt.min_epochs, pbt.max_epochs] = [{pbt.min_epochs}, {pbt.max_epochs}]"
            )


_FIELD_PREFIX = re.compile(r"^([A-Za-z_][\w.]*): (.+)$", re.DOTALL)


def _format_validation_error(err: ValidationError) -> str:
    """One `field.path: message` per error; a validator's own `sub.field: ...` prefix extends the path."""
    parts = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        message = e["msg"].removeprefix("Value error, ")
        prefixed = _FIELD_PREFIX.match(message)
        if prefixed:
            loc.append(prefixed.group(1))
            message = prefixed.group(2)
        field = ".".join(loc) or "<config>"
        if e["type"] == "extra_forbidden":
            message = "unknown key; check the spelling against configs/reference.yaml"
        parts.append(f"{field}: {message}")
    return "; ".join(parts)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["pbt.population=6", ...]` -> nested dict; values are parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE with a dotted key, e.g. --set pbt.population=6")
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {pair!r}: {part} is set as a value elsewhere")
        node[leaf] = _parse_yaml(raw, f"--set {pair!r}") if raw else ""
    return nested


def _merge(base: dict[str, Any], overrides: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Deep-merge `overrides` into `base`; a key that is neither in the file nor a model field is an error later.

    A mutation's domain is replaced whole: its `type` decides which keys it has."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and prefix != "pbt.mutations.":
            merged[key] = _merge(merged[key], value, f"{prefix}{key}.")
        else:
            merged[key] = value
    return merged


def _check_override_keys(overrides: dict[str, Any], model: type[BaseModel], prefix: str = "") -> None:
    """`--set` may only name keys the configuration has (a typo must not be silently added)."""
    fields = {f.alias or name: f for name, f in model.model_fields.items()}
    for key, value in overrides.items():
        field = fields.get(key)
        if field is None:
            raise ConfigError(f"--set {prefix}{key}: no such key; known keys here: {', '.join(sorted(fields))}")
        annotation = field.annotation
        if isinstance(value, dict) and isinstance(annotation, type) and issubclass(annotation, BaseModel):
            _check_override_keys(value, annotation, f"{prefix}{key}.")


def check_run_name(name: str, flag: str = "--name") -> str:
    """`name` verbatim if it is a usable run-folder name.

    Raises:
        ConfigError: naming `flag`, the value and the rule.
    """
    if not re.fullmatch(RUN_NAME_PATTERN, name):
        raise ConfigError(
            f"{flag} {name!r}: not a run-folder name; use 1-63 letters, digits, '_', '.' or '-', "
            f"starting with a letter or digit (pattern {RUN_NAME_PATTERN})"
        )
    return name


MAX_CONFIG_BYTES = 1 << 20


def _read_config_text(path: str | Path) -> str:
    """The file as UTF-8 text, read no further than `MAX_CONFIG_BYTES` (`--config /dev/zero` ends)."""
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"--config {path}: cannot read the file ({err.strerror or err})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"--config {path}: larger than {MAX_CONFIG_BYTES >> 20} MiB; not a pbt-job config")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"--config {path}: not UTF-8 text (byte {err.start}); save the file as UTF-8") from None


class _YAMLLoader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, where `1e-3` (no dot) is a string; YAML 1.2 and users read a number."""

    yaml_implicit_resolvers = {key: list(value) for key, value in yaml.SafeLoader.yaml_implicit_resolvers.items()}


_YAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def _parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_YAMLLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        detail = " ".join(str(getattr(err, "problem", None) or err).split())
        raise ConfigError(f"{where}: malformed YAML{at}: {detail}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to be a pbt-job config") from None


def load_config(path: str | Path | None, overrides: list[str] | None = None, name: str | None = None) -> JobConfig:
    """Read a YAML file (or the defaults when `path` is None) and apply `--set` overrides.

    Args:
        path: The YAML file.
        overrides: `--set KEY=VALUE` pairs (values are YAML).
        name: `--name`, taken verbatim (not YAML: `--name 2024` is the string "2024");
            it replaces the file's `name`.

    Raises:
        ConfigError: the file is missing or malformed, or a field is invalid; the
            message names the file and the field (or the flag).
    """
    if name is not None:
        check_run_name(name)
    source = "defaults"
    data: Any = {}
    if path is not None:
        source = str(path)
        data = _parse_yaml(_read_config_text(path), str(path)) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections (env, ppo, pbt, ...)")
    extra = parse_overrides(overrides or [])
    _check_override_keys(extra, JobConfig)
    merged = _merge(data, extra)
    if name is not None:
        merged["name"] = name
    try:
        return JobConfig.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(f"{source}: {_format_validation_error(err)}") from None


def config_to_dict(cfg: JobConfig) -> dict[str, Any]:
    """JSON-safe dict of the whole configuration (YAML names)."""
    return cfg.model_dump(mode="json", by_alias=True)



RESUME_APPLIED = ("metrics_port",)
"""Keys a resume may change: the exporter is the driver's own, not part of Tune's stored state."""
RESUME_IGNORED = ("name",)
"""Keys a resume does not compare: the name is the run folder itself."""


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): data}


def resume_changes(stored: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Compare a run's stored `job_config.json` with the configuration a resume was given.

    Both are `config_to_dict` output. Tune restores its pickled scheduler, search space,
    stop criteria and checkpoint settings with the run; only keys outside that state can
    change.

    Returns:
        `(refused, applied)`: dotted keys that differ, split into those a resume cannot
        honour (anything but `RESUME_APPLIED`, `stop.*` included) and those it applies.
    """
    old, now = _flatten(stored), _flatten(new)
    changed = sorted(
        key for key in old.keys() | now.keys()
        if key.split(".")[0] not in RESUME_IGNORED and old.get(key, _MISSING) != now.get(key, _MISSING)
    )
    applied = [key for key in changed if key.split(".")[0] in RESUME_APPLIED]
    return [key for key in changed if key not in applied], applied


_MISSING = object()
