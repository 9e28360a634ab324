"""`harvest import minari`: a Minari dataset (episodes with T + 1 observations) into a dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harvest.aggregation.config import AggregationConfig
from harvest.aggregation.importers.result import ImportLog, ImportResult, finish_import, flag_nonfinite
from harvest.cluster.logging import track
from harvest.envs.spaces import flatten_value
from harvest.rollout.batch import BatchSchema, TransitionBatch


def import_minari(
    dataset_id: str, out: str | Path, datasets_path: str | Path | None = None, cfg: AggregationConfig | None = None
) -> ImportResult:
    """A Minari dataset (by id, from `datasets_path` or Minari's default folder) → a dataset."""
    from harvest.aggregation.export import _minari_root
    from harvest.envs.extras import require

    minari = require("minari", "harvest import minari")

    with _minari_root(datasets_path):
        source = minari.load_dataset(dataset_id)
    result = ImportLog(files=[dataset_id])
    env_id = source.spec.env_spec.id if source.spec.env_spec is not None else f"minari:{dataset_id}"
    schema = BatchSchema.for_spaces(source.observation_space, source.action_space)
    batches, start = [], np.datetime64("1970-01-01T00:00:00", "ns")
    for episode in track(source.iterate_episodes(), "import", "episodes", source.total_episodes):
        length = (
            len(episode.actions)
            if not isinstance(episode.actions, dict)
            else len(next(iter(flatten_value(episode.actions, "action").values())))
        )
        obs = flatten_value(episode.observations, "obs")
        rows = {name: np.asarray(values[:length]) for name, values in obs.items()}
        rows.update({"next_" + name: np.asarray(values[1 : length + 1]) for name, values in obs.items()})
        rows.update(flatten_value(episode.actions, "action"))
        rows.update(
            reward=np.asarray(episode.rewards, np.float32),
            terminated=np.asarray(episode.terminations, bool),
            truncated=np.asarray(episode.truncations, bool),
            episode_id=np.full(length, episode.id, np.int64),
            step=np.arange(length, dtype=np.int64),
            collector_id=np.zeros(length, np.int64),
            policy_version=np.zeros(length, np.int64),
            timestamp=np.full(length, start),
        )
        batches.append(
            TransitionBatch({name: np.asarray(rows[name]).astype(spec.dtype) for name, spec in schema.columns.items()})
        )
    if batches:
        flag_nonfinite(
            f"minari:{dataset_id}",
            {
                name: np.concatenate([batch.columns[name] for batch in batches])
                for name in [*schema.obs_columns, *schema.action_columns, "reward"]
            },
            result,
        )
    return finish_import(batches, schema, out, env_id, result, "Minari episodes", cfg, [f"minari:{dataset_id}"])
