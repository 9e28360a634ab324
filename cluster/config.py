"""`RunConfig`: one YAML file describes a run; each package owns its section.

    run:         id, output folder, seed, log level
    ray:         local cluster or an address, CPUs, dashboard
    env:         envs.config.EnvConfig
    rollout:     rollout.config.RolloutConfig (collectors, batch size, policy)
    replay:      rollout.config.ReplayConfig (shards, capacity)
    aggregation: aggregation.config.AggregationConfig (formats, files)
    learner:     learners.config.LearnerConfig (stages, bc/dqfd/ppo settings, network, GPUs)
    dagger:      learners.config.DaggerConfig (`harvest dagger`'s rounds)
    eval:        EvalConfig (episodes, baselines)

Keys that moved (`learner.epochs` is `learner.bc.epochs` now) are refused with one line naming
the new key (`learners.config.MOVED_KEYS`).

Errors name the file and the key path: `run.yaml: replay.capcity_rows: unexpected key`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import ConfigDict, Field, StrictInt, TypeAdapter, ValidationError, model_validator
from pydantic.dataclasses import dataclass

from harvest.aggregation.config import AggregationConfig
from harvest.envs.config import EnvConfig
from harvest.learners.config import MOVED_KEYS, DaggerConfig, LearnerConfig
from harvest.rollout.config import ReplayConfig, RolloutConfig, WatchdogConfig
from harvest.rollout.human.config import HumanConfig

_STRICT = ConfigDict(extra="forbid")


class ConfigError(ValueError):
    """A run config that does not validate; the message names the file and key path."""


@dataclass(frozen=True, config=_STRICT)
class RunSettingsConfig:
    id: Optional[str] = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    """Run id; outputs go to `<output_dir>/<id>/`. None: a timestamped id is made. A plain name
    (letters, digits, `.`, `_`, `-`), so a run's outputs can never land outside `output_dir`."""
    output_dir: str = "artifacts"
    """Folder that holds one sub-folder per run."""
    seed: StrictInt = 0
    """Seeds envs (collector i gets seed + i), learners and evaluation."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Driver log level on stderr (the run's `harvest.log` always has DEBUG)."""


@dataclass(frozen=True, config=_STRICT)
class RayConfig:
    address: Optional[str] = None
    """None: start a local Ray for this run. Otherwise an existing cluster (`auto`, `ray://...`)."""
    num_cpus: Optional[StrictInt] = None
    """CPUs of the local Ray (None: all cores)."""
    include_dashboard: bool = True
    """Start the Ray dashboard with the local Ray (bound to 127.0.0.1)."""
    dashboard_port: StrictInt = Field(default=8265, ge=0, le=65535)
    """Dashboard port of the local Ray (0: a free one; when another process holds it, e.g. a second
    run on the machine, a free one too, with a warning)."""
    object_store_memory_bytes: Optional[StrictInt] = None
    """Object store size of the local Ray (None: Ray's default)."""
    metrics_export_port: Optional[StrictInt] = Field(default=None, ge=1, le=65535)
    """Port of the local Ray's Prometheus endpoint (`http://127.0.0.1:PORT/metrics`); None: Ray picks a free
    one, logged at start."""


Baseline = Literal["expert", "random"]


def _all_baselines() -> list[Baseline]:  # (a lambda gets no Literal context from Field's overloads)
    return ["expert", "random"]


@dataclass(frozen=True, config=_STRICT)
class EvalConfig:
    episodes: StrictInt = Field(default=20, ge=1)
    """Episodes each policy plays."""
    num_workers: StrictInt = Field(default=2, ge=1)
    """Rollout actors that play them in parallel."""
    baselines: list[Baseline] = Field(default_factory=_all_baselines)
    """Policies evaluated beside the trained one."""
    checkpoint: Literal["best", "final"] = "best"
    """Which learner checkpoint to evaluate."""
    deterministic: bool = True
    """The trained policy plays its most likely action; false samples actions from its
    distribution (the policy PPO optimized)."""
    scenarios: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Named variations of `env.kwargs` (merged over them) that every policy is evaluated in,
    e.g. `vs_random: {players: first, opponent: random}`; empty: the env as configured."""
    win_return: Optional[float] = None
    """An episode whose return is at least this counts as a win; the summary then shows win rates."""
    env: Optional[EnvConfig] = None
    """The env policies are evaluated in (None: the one the run's env kind names, `EnvKind.eval_env`:
    the run's `env` itself for Gymnasium envs)."""


@dataclass(frozen=True, config=_STRICT)
class RunConfig:
    run: RunSettingsConfig = Field(default_factory=RunSettingsConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    env: EnvConfig = Field(default_factory=EnvConfig)
    """The environment every collector steps: a Gymnasium id or `module:Class`, its kwargs and how
    many copies each collector's vector env holds."""
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    replay: ReplayConfig = Field(default_factory=ReplayConfig)
    aggregation: AggregationConfig = Field(default_factory=AggregationConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    dagger: DaggerConfig = Field(default_factory=DaggerConfig)
    """`harvest dagger`: rounds of play -> label -> aggregate -> retrain after the first BC."""
    watchdog: WatchdogConfig = Field(default_factory=WatchdogConfig)
    """Finds collectors stuck in one call (an env step, a replay ack), names them, and restarts them."""
    human: Optional[HumanConfig] = None
    """A person (or the scripted driver) plays one env copy in a window while the simulators
    collect; their rows share the replay, tagged by `source`. `harvest teleop` sets it."""

    @model_validator(mode="after")
    def _someone_collects(self) -> "RunConfig":
        if self.rollout.num_collectors == 0 and self.human is None:
            raise ValueError("rollout.num_collectors: 0 needs a `human:` section (someone has to collect)")
        from harvest.rollout.env_kinds import env_kind  # (it imports Ray: loaded when a config is checked)

        refusal = env_kind(self.env).human_refusal
        if self.human is not None and refusal is not None:
            raise ValueError(f"human: {refusal}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_ADAPTER = TypeAdapter(RunConfig)


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for error in err.errors():
        path = ".".join(str(part) for part in error["loc"]) or "(top level)"
        if error["type"] == "unexpected_keyword_argument" or error["type"] == "extra_forbidden":
            message = "unexpected key"
        else:
            message = f"{error['msg']} (got {error.get('input')!r})"
        lines.append(f"{source}: {path}: {message}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any] | None, source: str = "<config>") -> RunConfig:
    """Validate a config dict; `source` names it in errors."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {type(data).__name__}")
    _refuse_moved_keys(data, source)
    try:
        cfg = _ADAPTER.validate_python(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from err
    from harvest.rollout.env_kinds import env_kind

    try:
        env_kind(cfg.env).check_kwargs(cfg.env, cfg.run.seed)
    except ValueError as err:
        raise ConfigError("\n".join(f"{source}: {line}" for line in str(err).splitlines())) from None
    return cfg


def _refuse_moved_keys(data: dict[str, Any], source: str) -> None:
    """One line for each key of an earlier config shape in `data`, naming where it went."""
    lines = []
    for old, new in MOVED_KEYS.items():
        node: Any = data
        for key in old.split("."):
            if not isinstance(node, dict) or key not in node:
                break
            node = node[key]
        else:
            lines.append(f"{source}: {old}: moved to {new}")
    if lines:
        raise ConfigError("\n".join(lines))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set section.key=value` overrides (values parsed as YAML) to a config dict."""
    data = yaml.safe_load(yaml.safe_dump(data or {}))  # deep copy
    for override in overrides:
        key_path, sep, raw_value = override.partition("=")
        if not sep or not key_path:
            raise ConfigError(f"--set {override!r}: expected KEY.PATH=VALUE")
        node = data
        keys = key_path.split(".")
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {override!r}: {key!r} is not a section")
            node = child
        node[keys[-1]] = load_yaml(raw_value, f"--set {override!r}")
    return data


MAX_YAML_VALUES = 100_000
"""A config (or one `--set` value) that expands to more values than this is refused: YAML aliases
can make a few lines expand to billions ("billion laughs"), which would hang validation."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice, on line {seen[key]} and on line {line}", None
                )
            if isinstance(key, (str, int, float, bool)):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _UniqueKeyLoader.construct_mapping)


def _expanded_size(value: Any, sizes: dict[int, int]) -> int:
    """How many values `value` holds once every shared (aliased) node is counted where it appears."""
    if not isinstance(value, (dict, list)):
        return 1
    if id(value) not in sizes:
        sizes[id(value)] = 0  # a node that holds itself (`&a [*a]`) counts once
        children = value.values() if isinstance(value, dict) else value
        sizes[id(value)] = 1 + sum(_expanded_size(child, sizes) for child in children)
    return sizes[id(value)]


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML config text: duplicate keys and alias bombs are refused with `source` named."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(
            f"{source}: not valid YAML: {err.context + ', ' if err.context else ''}{err.problem}{where}"
        ) from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {err}") from err
    size = _expanded_size(data, {})
    if size > MAX_YAML_VALUES:
        raise ConfigError(
            f"{source}: expands to {size:,} values (more than {MAX_YAML_VALUES:,}); YAML aliases "
            "(&name / *name) repeat whole subtrees - write the values out"
        )
    return data


PATH_KEYS = (
    "run.output_dir",
    "replay.wal_dir",
    "aggregation.output",
    "rollout.policy.checkpoint",
    "learner.init_checkpoint",
)
"""Config keys that name files or folders: `resolve_paths` makes them absolute."""


def _absolute(value: str, base: Path) -> str:
    if "://" in value:  # a URI (s3://, file://): not a path of this machine's folders
        return value
    path = Path(value).expanduser()
    return os.path.normpath(path if path.is_absolute() else base / path)


def resolve_paths(cfg: RunConfig, base: str | Path | None = None) -> RunConfig:
    """`cfg` with every path in `PATH_KEYS` absolute (relative ones against `base`, default the
    current folder), so subprocesses and actors that run elsewhere (a JVM started in its own
    folder, a Ray worker) see the folders the user meant."""
    base = Path(base or os.getcwd()).absolute()

    def replaced(node: Any, keys: list[str]) -> Any:
        value = getattr(node, keys[0])
        if value is None:
            return node
        new = _absolute(value, base) if len(keys) == 1 else replaced(value, keys[1:])
        return node if new is value else dataclasses.replace(node, **{keys[0]: new})

    for key_path in PATH_KEYS:
        cfg = replaced(cfg, key_path.split("."))
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None = None, absolute_paths: bool = True) -> RunConfig:
    """Read and validate a YAML run config (None: the embedded default), then apply overrides;
    relative paths become absolute against the current folder unless `absolute_paths` is False
    (a config sent to a cluster resolves them there)."""
    data: dict[str, Any] = {}
    source = "<default>"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except FileNotFoundError as err:
            raise ConfigError(f"{source}: no such config file") from err
        except IsADirectoryError as err:
            raise ConfigError(f"{source}: is a folder; expected a YAML config file") from err
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"{source}: cannot read it: {err}") from err
        data = load_yaml(text, source) or {}
    if overrides:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of sections at the top level")
        data = apply_overrides(data, overrides)
        source += " (with --set)"
    cfg = parse_config(data, source)
    return resolve_paths(cfg) if absolute_paths else cfg


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
