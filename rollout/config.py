"""The `rollout:` and `replay:` sections of a run config."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, Optional

from pydantic import ConfigDict, Field, StrictInt, model_validator
from pydantic.dataclasses import dataclass

from harvest.rollout.net import is_loopback

_STRICT = ConfigDict(extra="forbid")


@dataclass(frozen=True, config=_STRICT)
class PolicyConfig:
    kind: Literal["expert", "random", "torch", "custom"] = "expert"
    """`expert`: the scripted expert registered for the env; `random`: uniform actions;
    `torch`: a checkpoint written by a learner; `custom`: your own factory (`entry_point`)."""
    checkpoint: Optional[str] = None
    """Checkpoint file for `kind: torch` (a learner's `best.safetensors`)."""
    entry_point: Optional[str] = None
    """`"package.module:factory"` for `kind: custom`; called as factory(observation_space, action_space)."""
    deterministic: bool = True
    """For `kind: torch`: play the most likely action instead of sampling (live, as `epsilon`)."""
    record_logits: bool = False
    """For `kind: torch` with Discrete actions: record the policy's (masked) logits in a
    `policy_logits` column beside every action (a teacher for distillation; `harvest export
    --to teacher-student` carries them)."""

    epsilon: float = Field(default=0.0, ge=0, le=1)
    """ε-greedy exploration: per env and step, the probability of playing a uniformly random
    action (a legal one where observations carry an `action_mask`) instead of the policy's.
    Live: an edit while the run collects applies from the collectors' next step."""

    label_with: Optional[Literal["expert"]] = None
    """A critic labels every state the policy visits: the env's scripted expert's action goes
    in a `label_action` column beside the action played (DAgger's relabelling)."""
    label_mix: float = Field(default=0.0, ge=0, le=1)
    """With `label_with`: the probability, per env and step, that the critic's action is played
    instead of the policy's (DAgger's beta: early rounds stay nearer the expert's states)."""

    @model_validator(mode="after")
    def _check_kind_fields(self) -> "PolicyConfig":
        if self.kind == "torch" and not self.checkpoint:
            raise ValueError("kind 'torch' needs 'checkpoint'")
        if self.record_logits and self.kind != "torch":
            raise ValueError("record_logits needs kind 'torch' (a policy with logits)")
        if self.kind == "custom" and not self.entry_point:
            raise ValueError("kind 'custom' needs 'entry_point'")
        if self.label_mix and self.label_with is None:
            raise ValueError("label_mix plays the critic's actions: it needs label_with")
        return self


@dataclass(frozen=True, config=_STRICT)
class EpisodeFilter:
    """Episodes to keep: `aggregation.filter`, `rollout.trajectory_filter`, `harvest edit filter`
    (applied by rollout/episode_filter.py)."""

    min_return: Optional[float] = None
    """Keep episodes whose return (sum of rewards) is at least this."""
    max_return: Optional[float] = None
    """... and at most this."""
    min_length: Optional[StrictInt] = Field(default=None, ge=1)
    """Keep episodes of at least this many steps."""
    max_length: Optional[StrictInt] = Field(default=None, ge=1)
    """... and at most this many."""
    ended: list[Literal["terminated", "truncated", "unfinished"]] = Field(default_factory=list)
    """Keep episodes that ended this way (unfinished: cut off by the end of collection); []: any."""
    game_ids: list[int] = Field(default_factory=list)
    """Generals: keep these games (the `game_id` column); []: any."""
    player_ids: list[int] = Field(default_factory=list)
    """Generals: keep these players' episodes (the `player_id` column); []: any."""
    collector_ids: list[int] = Field(default_factory=list)
    """Keep episodes collected by these collectors; []: any."""
    sources: list[str] = Field(default_factory=list)
    """Values of the `source` column (`expert`, `human`, `agent`, ...) to keep; []: any."""
    start: Optional[datetime] = None
    """Keep episodes whose first step is at or after this time (UTC when no zone is given)."""
    end: Optional[datetime] = None
    """... and before this one."""
    dedupe: bool = False
    """Drop an episode whose observations and actions repeat an earlier episode's exactly."""
    exclude_episodes: list[int] = Field(default_factory=list)
    """Drop these episode ids (e.g. a person's episodes discarded after their session)."""

    def is_empty(self) -> bool:
        return self == EpisodeFilter()


@dataclass(frozen=True, config=_STRICT)
class PlacementConfig:
    """Where Ray may start an actor, beside its CPUs and GPUs."""

    resources: dict[str, float] = Field(default_factory=dict)
    """Custom Ray resources each actor asks for, e.g. `{collector: 1}` keeps collectors on nodes
    started with `ray start --resources '{"collector": 8}'`."""
    label_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels the actor's node must have, e.g. `{harvest-role: learner}` for nodes started
    with `ray start --labels harvest-role=learner`."""
    strategy: Literal["DEFAULT", "SPREAD"] = "SPREAD"
    """SPREAD: actors go to the nodes in turn, as far as resources allow; DEFAULT: Ray packs
    them where it finds room."""

    def options(self) -> dict:
        """The actor options that say this (`ray.remote(...).options(**placement.options())`)."""
        options: dict = {"scheduling_strategy": self.strategy}
        if self.resources:
            options["resources"] = dict(self.resources)
        if self.label_selector:
            options["label_selector"] = dict(self.label_selector)
        return options


@dataclass(frozen=True, config=_STRICT)
class RolloutConfig:
    num_collectors: StrictInt = Field(default=2, ge=0)
    """Rollout actors, each owning one vector env and one policy (0: only the `human:` session collects)."""
    steps: StrictInt = Field(default=20_000, ge=1)
    """Transitions (rows) to collect in total, split evenly across collectors."""
    batch_rows: StrictInt = Field(default=4096, ge=1)
    """Rows per pushed batch (at most). Larger batches amortize the per-call cost of Ray."""
    max_pushes_in_flight: StrictInt = Field(default=4, ge=1)
    """Unacknowledged pushes a collector may have before it waits (backpressure)."""
    push_timeout_s: float = Field(default=120.0, gt=0)
    """How long a collector waits for a replay shard to acknowledge a push before failing."""
    num_cpus: float = Field(default=0.5, ge=0)
    """CPUs Ray reserves for each collector actor."""
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    """Which policy the collectors play."""
    mode: Literal["step", "trajectory", "buffer"] = "step"
    """`step`: every transition goes to the replay as batches fill (the default); `trajectory`:
    only whole episodes that pass `trajectory_filter` reach it (unfinished ones never do);
    `buffer`: batches wait in a local buffer of `buffer_mb` (compressed with `buffer_compression`)
    and go to the replay together, asynchronously, when it is full."""
    trajectory_filter: Optional[EpisodeFilter] = None
    """`mode: trajectory`: which finished episodes are pushed (None: all finished ones)."""
    buffer_mb: float = Field(default=64.0, gt=0)
    """`mode: buffer`: the local buffer's memory limit per collector, in MB."""
    buffer_compression: Optional[Literal["zstd", "lz4"]] = None
    """`mode: buffer`: keep buffered batches compressed (Arrow IPC) until they are pushed."""
    placement: PlacementConfig = Field(default_factory=PlacementConfig)
    """Where collectors run (spread over the nodes by default)."""
    pause_above_memory: Optional[float] = Field(default=0.9, gt=0, le=1)
    """Backpressure on the node's memory: a collector whose node uses more than this share of its
    memory waits before its next push (up to `push_timeout_s`), so Ray's memory monitor (which
    kills workers above 0.95) does not have to. None: never."""
    chunk_rows: Optional[StrictInt] = Field(default=None, ge=1)
    """Rows a collector is asked for at a time; the collection hands out chunks until `steps` are
    stored, so restarted and added collectors share what is left. None: steps / (8 x
    num_collectors), at least `batch_rows`."""
    max_restarts: StrictInt = Field(default=3, ge=0)
    """How often Ray restarts a collector actor that died (or that the stall watchdog killed);
    the restarted collector gets a new incarnation (its own episode ids and push source) and
    collects the rows its predecessor had not stored."""


@dataclass(frozen=True, config=_STRICT)
class WatchdogConfig:
    """`watchdog:` - finds collectors stuck in one call, names what they wait for, restarts them."""

    stall_after_s: Optional[float] = Field(default=120.0, gt=0)
    """A collector that has been in one call (an env step, waiting for a replay ack, ...) this
    long, or that does not answer, is reported as stalled: what it waits for is logged and goes
    to `harvest_stalled`. None: no watchdog."""
    check_every_s: float = Field(default=5.0, gt=0)
    """How often the watchdog asks every collector what it is doing."""
    recover: bool = True
    """Kill a stalled collector so Ray restarts it (within `rollout.max_restarts`); it collects
    the rows its predecessor had not stored."""


@dataclass(frozen=True, config=_STRICT)
class RateLimitConfig:
    samples_per_insert: float = Field(gt=0)
    """Samples drawn per inserted row that the replay holds collectors and learners to."""
    error_buffer: float = Field(default=1000.0, gt=0)
    """How far (in samples) the two may drift apart before one side waits."""
    timeout_s: float = Field(default=60.0, gt=0)
    """How long an insert or a sample waits before it fails with a message naming the limit."""


@dataclass(frozen=True, config=_STRICT)
class FlightConfig:
    host: str = "127.0.0.1"
    """Interface the Arrow Flight server binds; anything but loopback needs `token_env`."""
    port: StrictInt = Field(default=0, ge=0, le=65535)
    """0: a free port, logged and written to `<run>/replay_flight.json`."""
    token_env: Optional[str] = None
    """Name of an environment variable holding the token clients must send (the token itself
    never goes into the config, the logs or the run folder)."""

    @model_validator(mode="after")
    def _check_exposure(self) -> "FlightConfig":
        if not self.token_env and not is_loopback(self.host):
            raise ValueError(f"host {self.host!r} exposes the replay beyond this machine; set token_env too")
        return self


@dataclass(frozen=True, config=_STRICT)
class ReplayConfig:
    num_shards: StrictInt = Field(default=2, ge=1)
    """Shard actors; every row of an episode lands in the same one."""
    placement: PlacementConfig = Field(default_factory=PlacementConfig)
    """Where shards run (e.g. a label of nodes that stay up; a durable shard restarted on
    another node needs `wal_dir` on storage that node reaches)."""
    capacity_rows: StrictInt = Field(default=100_000, ge=1)
    """Rows one shard keeps before the oldest are evicted (FIFO)."""
    capacity_bytes: Optional[StrictInt] = Field(default=None, ge=1)
    """Bytes of rows one shard keeps (with `capacity_rows` as a cap on rows): without
    compression it fixes the rows to capacity_bytes // bytes per row; with compressed columns the
    oldest rows are evicted once the compressed bytes outgrow what the plain columns leave."""
    memory_limit_bytes: Optional[StrictInt] = Field(default=None, ge=1)
    """A shard refuses to start, or to store a batch, past this many bytes (rows plus sampler
    state), with a message saying what to change. None: no limit."""
    compression: dict[str, Literal["zstd", "lz4"]] = Field(default_factory=dict)
    """Columns stored compressed row by row, e.g. `{obs: zstd, next_obs: zstd}` for large,
    compressible observations; decompressed on sample and read. Costs CPU: see bench/replay.py."""
    compression_level: Optional[StrictInt] = None
    """The codec's level (None: its default)."""
    sampler: Literal["uniform", "prioritized", "fifo", "lifo"] = "uniform"
    """How `sample` picks rows (rollout/replay/selectors.py): `uniform`; `prioritized`
    (proportional, P(i) = p_i^α / Σ p^α, with importance weights and `update_priorities`);
    `fifo` / `lifo`: oldest / newest rows not sampled yet, each at most once."""
    priority_alpha: float = Field(default=0.6, ge=0)
    """`prioritized`: how strongly priorities skew sampling (0: uniform)."""
    priority_beta: float = Field(default=0.4, ge=0, le=1)
    """`prioritized`: importance-weight exponent (1: fully corrects the sampling bias)."""
    priority_eps: float = Field(default=1e-6, gt=0)
    """`prioritized`: added to |TD error| so no row's priority is 0."""
    min_size_to_sample: StrictInt = Field(default=1, ge=1)
    """Rows a shard must hold before `sample` returns anything."""
    num_cpus: float = Field(default=0.25, ge=0)
    """CPUs Ray reserves for each shard actor; a shard given 2 or more copies large batches
    into its ring with that many threads."""
    wal_dir: Optional[str] = None
    """Durable shards: each writes every inserted batch to a write-ahead log in
    `<wal_dir>/shard-NNN/` before acknowledging it, and a shard restarted by Ray (see
    `max_restarts`) restores its rows from its last checkpoint and the log. None: in memory only."""
    wal_fsync: bool = False
    """fsync the log on every insert (survives a machine crash, not only a process kill)."""
    checkpoint_every_rows: Optional[StrictInt] = Field(default=None, ge=1)
    """Durable shards: checkpoint (and start a fresh log) after this many inserted rows."""
    max_restarts: StrictInt = Field(default=0, ge=-1)
    """How often Ray restarts a shard actor that died (-1: always); calls in flight are retried,
    and retried batches are recognised by their batch id and never stored twice."""
    flight: Optional[FlightConfig] = None
    """Serve the replay's stream over Arrow Flight (rollout/replay/flight.py) while the run
    lives, for trainers outside Ray; None: off."""
    rate_limit: Optional[RateLimitConfig] = None
    """Samples-per-insert limiting (inserts or samples wait instead of drifting); None: off,
    as for pure collection. `min_size_to_sample` applies either way."""
