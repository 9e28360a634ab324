"""Standard exports of a Harvest dataset, each in the form its consumers already read.

* `offline-rl`: the D4RL dict (`observations`, `actions`, `rewards`, `terminals`, `timeouts`,
  `next_observations`, plus `infos/episode_id` and `infos/step`) as an HDF5 file laid out the
  way D4RL's `get_dataset` reads one (datasets at the root, Dict observations as groups), or as
  an NPZ with the same keys (`/` in key names).
* `teacher-student`: a safetensors file (no pickle) with `observations` (or
  `observations.<key>`), `teacher_actions`, and `teacher_logits` / `teacher_probs` where the
  collecting policy recorded them (`policy_logits` / `action_probs` columns), plus episode ids
  and steps: `safetensors.torch.load_file(path)` gives the tensors a distillation loop needs.
* `minari`: a Minari dataset (`minari.load_dataset(id)`), episodes with T + 1 observations;
  the env is recorded for `recover_environment()` when the dataset's env id is a Gymnasium id.
  Episodes the collection cut off (neither terminated nor truncated) are left out of it.

All read the dataset record batch by record batch in manifest order (episodes contiguous),
each file checked against the manifest as it is read. An export's file is refused
(`ExportTargetError`) when its extension is not one the export writes (`.hdf5`/`.h5`/`.npz`
for offline-rl, `.safetensors` for teacher-student), when it is inside a dataset folder, or when
it exists already (unless `overwrite`).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import Literal

import gymnasium as gym
import h5py
import numpy as np
import pyarrow as pa
from loguru import logger

from harvest.aggregation.dataset import Dataset
from harvest.aggregation.manifest import INDEX_NAME, has_manifest
from harvest.aggregation.storage import Location, location
from harvest.cluster.logging import column_rows, track
from harvest.envs.spaces import unflatten_value

EXPORTS = ("offline-rl", "teacher-student", "minari")
TEACHER_COLUMNS = {"policy_logits": "teacher_logits", "action_probs": "teacher_probs"}
OFFLINE_RL_FORMATS: dict[str, Literal["hdf5", "npz"]] = {".hdf5": "hdf5", ".h5": "hdf5", ".npz": "npz"}
"""File extensions `export_offline_rl` writes, and the format each one means."""
TEACHER_STUDENT_SUFFIX = ".safetensors"


class ExportTargetError(ValueError):
    """An export's output file is refused: an extension the export does not write, a path inside
    a dataset folder, or a file that exists (without `overwrite`)."""


def check_export_target(target: Location, suffixes: list[str], overwrite: bool = False) -> str:
    """`target`'s extension (one of `suffixes`), once the file may be written there.

    Raises:
        ExportTargetError: naming the file and what is wrong with it.
    """
    suffix = "." + target.name.rsplit(".", 1)[-1].lower() if "." in target.name else ""
    if suffix not in suffixes:
        raise ExportTargetError(
            f"{target}: this export writes {' or '.join(suffixes)} files, not "
            f"{suffix or 'a file without an extension'}; name the output with one of those"
        )
    parent = target.parent()
    if has_manifest(parent) or parent.join(INDEX_NAME).exists():
        raise ExportTargetError(f"{target}: inside the dataset folder {parent}; write exports outside it")
    if target.exists() and (not overwrite or not target.is_file()):
        raise ExportTargetError(
            f"{target}: already exists; choose a new name"
            + (" or ask to overwrite it (--overwrite)" if target.is_file() else "")
        )
    return suffix


def _d4rl_key(column: str) -> str | None:
    """Harvest column -> D4RL key (`obs.pos` -> `observations/pos`); None: not exported."""
    head, dot, rest = column.partition(".")
    base = {
        "obs": "observations",
        "next_obs": "next_observations",
        "action": "actions",
        "reward": "rewards",
        "terminated": "terminals",
        "truncated": "timeouts",
        "episode_id": "infos/episode_id",
        "step": "infos/step",
        "collector_id": "infos/collector_id",
        "policy_version": "infos/policy_version",
    }
    key = base.get(head)
    return None if key is None else key + ("/" + rest.replace(".", "/") if dot else "")


def export_offline_rl(
    dataset: Dataset,
    out: str | Path | Location,
    file_format: Literal["hdf5", "npz"] | None = None,
    compression: str | None = "gzip",
    overwrite: bool = False,
) -> Location:
    """The D4RL dict (see the module doc) at `out` (`.hdf5`/`.h5` or `.npz`: the extension says
    which; `file_format`, when given, must agree with it).

    Raises:
        ExportTargetError: `out` is refused (see the module doc).
    """
    target = location(out)
    implied = OFFLINE_RL_FORMATS[check_export_target(target, list(OFFLINE_RL_FORMATS), overwrite)]
    if file_format is not None and file_format != implied:
        raise ExportTargetError(f"{target}: file_format {file_format!r}, but the extension says {implied}")
    file_format = implied
    keys = {name: key for name in dataset.schema.columns if (key := _d4rl_key(name))}
    with tempfile.TemporaryDirectory(prefix="harvest-export-") as scratch:
        local = Path(scratch) / target.name
        if file_format == "npz":
            parts: dict[str, list[np.ndarray]] = {key: [] for key in keys.values()}
            for columns in track(dataset.iter_batches(), "export", "rows", dataset.manifest.rows, column_rows):
                for name, key in keys.items():
                    parts[key].append(columns[name])
            arrays = {
                key: np.concatenate(chunks)
                if chunks
                else np.zeros((0, *dataset.schema.columns[name].shape), dataset.schema.columns[name].dtype)
                for (name, key), chunks in zip(keys.items(), parts.values())
            }
            buffer = io.BytesIO()
            np.savez(buffer, allow_pickle=False, **arrays)  # every D4RL key is numeric: nothing to pickle
            target.write_bytes(pa.py_buffer(buffer.getbuffer()))
            return target
        with h5py.File(local, "w") as h5:
            h5.attrs.update(
                {"env_id": dataset.manifest.env_id, "source": str(dataset.folder), "run_id": dataset.manifest.run_id}
            )
            for name, key in keys.items():
                spec = dataset.schema.columns[name]
                h5.create_dataset(
                    key,
                    shape=(0, *spec.shape),
                    maxshape=(None, *spec.shape),
                    dtype=spec.dtype,
                    chunks=(4096, *spec.shape),
                    compression=compression,
                )
            for columns in track(dataset.iter_batches(), "export", "rows", dataset.manifest.rows, column_rows):
                for name, key in keys.items():
                    values = columns[name]
                    h5[key].resize(h5[key].shape[0] + values.shape[0], axis=0)
                    h5[key][-values.shape[0] :] = values
        target.upload(local)
    logger.info("offline-RL export {}: {:,} transitions", target, dataset.manifest.rows)
    return target


def export_teacher_student(dataset: Dataset, out: str | Path | Location, overwrite: bool = False) -> Location:
    """Observations, teacher actions and (where recorded) logits/probabilities as safetensors.

    Raises:
        ExportTargetError: `out` is refused (see the module doc).
    """
    from safetensors.numpy import save

    target = location(out)
    check_export_target(target, [TEACHER_STUDENT_SUFFIX], overwrite)
    schema = dataset.schema
    wanted = {name: "observations" + name[3:] for name in schema.obs_columns}
    wanted.update({"action": "teacher_actions", "episode_id": "episode_ids", "step": "steps"})
    wanted.update({name: key for name, key in TEACHER_COLUMNS.items() if name in schema.columns})
    columns = dataset.read_columns(list(wanted), progress="export")
    tensors = {key: np.ascontiguousarray(columns[name]) for name, key in wanted.items()}
    for key, values in tensors.items():
        if values.dtype == np.bool_:
            tensors[key] = values.astype(np.uint8)
    target.write_bytes(
        save(
            tensors,
            metadata={
                "env_id": dataset.manifest.env_id,
                "source": str(dataset.folder),
                "run_id": dataset.manifest.run_id,
                "teacher_outputs": ",".join(sorted(set(wanted.values()) & set(TEACHER_COLUMNS.values()))),
            },
        )
    )
    if not any(name in schema.columns for name in TEACHER_COLUMNS):
        logger.info("{}: no policy_logits / action_probs columns; the export has teacher actions only", dataset.folder)
    return target


@contextlib.contextmanager
def _minari_root(path: str | Path | None):
    """Minari keeps datasets under $MINARI_DATASETS_PATH; point it at `path` for the call (made
    absolute: Minari joins a relative one onto itself)."""
    if path is None:
        yield
        return
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(Path(path).expanduser().resolve())
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous


def _is_gymnasium_id(env_id: str) -> bool:
    try:
        gym.spec(env_id)
        return True
    except gym.error.Error:
        return False


def export_minari(
    dataset: Dataset, dataset_id: str, datasets_path: str | Path | None = None, episodes_per_write: int = 256
):
    """A Minari dataset `dataset_id` (e.g. `harvest/cartpole-expert-v0`) under `datasets_path`
    (default: Minari's own, $MINARI_DATASETS_PATH or ~/.minari/datasets). Returns it loaded."""
    from harvest.envs.extras import require

    minari = require("minari", "harvest export --to minari")
    from minari.data_collector import EpisodeBuffer

    schema = dataset.schema
    env_id = dataset.manifest.env_id
    env = env_id if _is_gymnasium_id(env_id) else None
    if env is None:
        logger.warning(
            "{}: env {!r} is not a Gymnasium id; the Minari dataset records the spaces but cannot "
            "recover the environment",
            dataset.folder,
            env_id,
        )
    created, skipped = None, 0
    buffers: list[EpisodeBuffer] = []

    def flush() -> None:
        nonlocal created, buffers
        if not buffers:
            return
        with _minari_root(datasets_path):
            if created is None:
                created = minari.create_dataset_from_buffers(
                    dataset_id,
                    buffers,
                    env=env,
                    observation_space=schema.observation_space,
                    action_space=schema.action_space,
                    algorithm_name="harvest",
                    description=f"Exported by Harvest from {dataset.folder} (run {dataset.manifest.run_id}).",
                )
            else:
                created.update_dataset_from_buffer(buffers)
        buffers = []

    for episode in track(dataset.iter_episodes(), "export", "rows", dataset.manifest.rows, column_rows):
        if not (episode["terminated"][-1] or episode["truncated"][-1]):
            skipped += 1
            continue
        obs = _stack_obs(episode, schema)
        action = unflatten_value({"action": episode["action"]}, schema.action_space, "action")
        buffers.append(
            EpisodeBuffer(
                id=None,
                observations=obs,
                actions=action,
                rewards=episode["reward"].astype(np.float64).tolist(),
                terminations=episode["terminated"].tolist(),
                truncations=episode["truncated"].tolist(),
            )
        )
        if len(buffers) >= episodes_per_write:
            flush()
    flush()
    if created is None:
        raise ValueError(f"{dataset.folder}: no finished episodes to export to Minari")
    if skipped:
        logger.info("{}: {} unfinished episodes left out of the Minari dataset", dataset.folder, skipped)
    with _minari_root(datasets_path):
        return minari.load_dataset(dataset_id)


def _stack_obs(episode: dict[str, np.ndarray], schema) -> object:
    """T + 1 observations: the episode's `obs` rows and its last `next_obs`, nested like the space."""
    stacked = {name: np.concatenate([episode[name], episode["next_" + name][-1:]]) for name in schema.obs_columns}
    return unflatten_value(stacked, schema.observation_space, "obs")
