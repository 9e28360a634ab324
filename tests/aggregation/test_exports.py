"""`harvest export`: each export loaded back by its consumer's own library and compared."""

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch

from harvest.aggregation.compact import write_dataset
from harvest.aggregation.config import AggregationConfig
from harvest.aggregation.dataset import Dataset
from harvest.cluster.cli import main
from harvest.envs.spaces import ColumnSpec
from harvest.learners.models import build_policy_model
from harvest.learners.policy import LOGITS_COLUMN, TorchPolicy
from harvest.rollout.batch import BatchSchema, TransitionBatch
from harvest.rollout.policies import CartPoleExpert


def cartpole_dataset(folder, episodes=4, unfinished=True, teacher=None):
    """Expert CartPole episodes (capped at 60 steps, so some are truncated), plus an episode cut
    off mid-way; with `teacher`, its actions and log-probabilities instead of the expert's."""
    env = gym.make("CartPole-v1", max_episode_steps=60)
    expert = CartPoleExpert(env.observation_space, env.action_space)
    rows: dict[str, list] = {}
    for episode in range(episodes + unfinished):
        obs, _ = env.reset(seed=100 + episode)
        for step in range(1000):
            if teacher is not None:
                output = teacher.compute_actions(obs[None])
                action, extras = int(output.actions[0]), {k: v[0] for k, v in output.extras.items()}
            else:
                action, extras = int(expert.compute_actions(obs).actions), {}
            next_obs, reward, terminated, truncated, _ = env.step(action)
            cut = unfinished and episode == episodes and step == 9
            row = {
                "obs": obs,
                "action": action,
                "reward": reward,
                "next_obs": next_obs,
                "terminated": terminated,
                "truncated": truncated,
                "episode_id": episode,
                "step": step,
                "collector_id": 0,
                "policy_version": 0,
                "timestamp": np.datetime64("2026-11-23T12:00:00", "ns"),
                **extras,
            }
            for name, value in row.items():
                rows.setdefault(name, []).append(value)
            obs = next_obs
            if terminated or truncated or cut:
                break
    extras = {LOGITS_COLUMN: ColumnSpec(np.float32, (2,))} if teacher is not None else {}
    schema = BatchSchema.for_spaces(env.observation_space, env.action_space, extras=extras)
    columns = {name: np.asarray(values, dtype=schema.columns[name].dtype) for name, values in rows.items()}
    write_dataset(
        [TransitionBatch(columns)],
        schema,
        folder,
        AggregationConfig(formats=["parquet"]),
        run_id="exp",
        env_id="CartPole-v1",
    )
    return Dataset.open(folder), columns


def test_minari_export_loads_in_minari_and_recovers_the_env(tmp_path):
    import os

    import minari

    dataset, columns = cartpole_dataset(tmp_path / "data")
    assert (
        main(
            [
                "export",
                str(tmp_path / "data"),
                "--to",
                "minari",
                "--out",
                str(tmp_path / "minari"),
                "--minari-id",
                "harvest/cartpole-expert-v0",
            ]
        )
        == 0
    )
    os.environ["MINARI_DATASETS_PATH"] = str(tmp_path / "minari")
    try:
        loaded = minari.load_dataset("harvest/cartpole-expert-v0")
        assert loaded.total_episodes == 4  # the cut-off episode is left out
        for episode in loaded.iterate_episodes():
            rows = columns["episode_id"] == episode.id
            assert rows.any()
            np.testing.assert_allclose(episode.observations[:-1], columns["obs"][rows])
            np.testing.assert_allclose(episode.observations[-1], columns["next_obs"][rows][-1])
            np.testing.assert_array_equal(episode.actions, columns["action"][rows])
            np.testing.assert_allclose(episode.rewards, columns["reward"][rows])
            np.testing.assert_array_equal(episode.terminations, columns["terminated"][rows])
            np.testing.assert_array_equal(episode.truncations, columns["truncated"][rows])
        env = loaded.recover_environment()
        assert env.spec.id == "CartPole-v1"
        env.close()
    finally:
        os.environ.pop("MINARI_DATASETS_PATH")
    assert dataset.manifest.episodes == 5


def test_minari_export_and_import_take_a_relative_datasets_folder(tmp_path, monkeypatch):
    dataset, _ = cartpole_dataset(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert main(["export", "data", "--to", "minari", "--out", "minari", "--minari-id", "harvest/demo-v0"]) == 0
    assert (tmp_path / "minari" / "harvest" / "demo-v0" / "data" / "main_data.hdf5").is_file()
    assert main(["import", "minari", "harvest/demo-v0", "--minari-path", "minari", "--out", "back"]) == 0
    assert Dataset.open(tmp_path / "back").manifest.rows == dataset.manifest.rows - 10  # (less the cut-off episode)


@pytest.mark.parametrize("suffix", ["hdf5", "npz"])
def test_offline_rl_export_is_the_d4rl_dict(tmp_path, suffix):
    _, columns = cartpole_dataset(tmp_path / "data")
    out = tmp_path / f"cartpole.{suffix}"
    assert main(["export", str(tmp_path / "data"), "--to", "offline-rl", "--out", str(out)]) == 0
    if suffix == "hdf5":  # as D4RL's get_dataset reads its files: every dataset in the file, by path
        data = {}
        with h5py.File(out, "r") as h5:
            h5.visititems(
                lambda name, item: data.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None
            )
            assert h5.attrs["env_id"] == "CartPole-v1"
    else:
        with np.load(out, allow_pickle=False) as npz:
            data = dict(npz)
    order = np.lexsort((columns["step"], columns["episode_id"]))
    for key, name in (
        ("observations", "obs"),
        ("next_observations", "next_obs"),
        ("actions", "action"),
        ("rewards", "reward"),
        ("terminals", "terminated"),
        ("timeouts", "truncated"),
        ("infos/episode_id", "episode_id"),
        ("infos/step", "step"),
    ):
        np.testing.assert_array_equal(data[key], columns[name][order], err_msg=key)
    assert data["timeouts"].sum() == 4  # the expert keeps the pole up until the 60-step limit
    # The same export with an episode filter: the 10-step episode cut off by the collection is left out.
    filtered = tmp_path / f"long.{suffix}"
    assert (
        main(["export", str(tmp_path / "data"), "--to", "offline-rl", "--out", str(filtered), "--min-length", "60"])
        == 0
    )
    if suffix == "npz":
        with np.load(filtered, allow_pickle=False) as npz:
            assert npz["observations"].shape == (240, 4) and set(npz["infos/episode_id"]) == {0, 1, 2, 3}


def test_teacher_student_export_carries_the_teachers_log_probabilities(tmp_path):
    from safetensors.torch import load_file

    torch.manual_seed(0)
    env = gym.make("CartPole-v1")
    teacher = TorchPolicy(build_policy_model(env.observation_space, env.action_space, [16]), record_logits=True)
    assert teacher.extra_columns() == {LOGITS_COLUMN: ColumnSpec(np.float32, (2,))}
    _, columns = cartpole_dataset(tmp_path / "data", episodes=2, unfinished=False, teacher=teacher)
    out = tmp_path / "distill.safetensors"
    assert main(["export", str(tmp_path / "data"), "--to", "teacher-student", "--out", str(out)]) == 0
    tensors = load_file(out)
    assert set(tensors) == {"observations", "teacher_actions", "teacher_logits", "episode_ids", "steps"}
    np.testing.assert_allclose(tensors["observations"].numpy(), columns["obs"])
    np.testing.assert_allclose(tensors["teacher_logits"].exp().sum(-1).numpy(), 1.0, rtol=1e-5)
    # The deterministic teacher played the most likely action it recorded.
    assert torch.equal(tensors["teacher_logits"].argmax(-1), tensors["teacher_actions"])
    with pytest.raises(ValueError, match="record_logits needs Discrete actions"):
        TorchPolicy(build_policy_model(env.observation_space, gym.spaces.Box(-1, 1, (2,)), [8]), record_logits=True)


def test_export_of_a_missing_dataset_names_it(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nothing"), "--to", "offline-rl", "--out", str(tmp_path / "x.hdf5")]) == 2
    assert not (tmp_path / "x.hdf5").exists()
    assert f"{tmp_path / 'nothing'}: no _manifest.json" in capsys.readouterr().err


def test_an_export_is_refused_over_an_existing_file_inside_a_dataset_or_with_an_unknown_extension(tmp_path):
    from harvest.aggregation.export import ExportTargetError, export_offline_rl, export_teacher_student

    dataset, _ = cartpole_dataset(tmp_path / "data")
    manifest = (tmp_path / "data" / "_manifest.json").read_bytes()
    refused = {
        tmp_path / "e.csv": r"e.csv: this export writes .hdf5 or .h5 or .npz files, not .csv",
        tmp_path / "e": r"e: this export writes .hdf5 or .h5 or .npz files, not a file without an extension",
        tmp_path / "data" / "_manifest.json": r"writes .hdf5 or .h5 or .npz files, not .json",
        tmp_path / "data" / "copy.hdf5": rf"copy.hdf5: inside the dataset folder {tmp_path / 'data'}; write exports "
        "outside it",
    }
    for out, says in refused.items():
        with pytest.raises(ExportTargetError, match=says):
            export_offline_rl(dataset, out)
        assert not out.exists() or out.name == "_manifest.json"
    assert (tmp_path / "data" / "_manifest.json").read_bytes() == manifest
    with pytest.raises(ExportTargetError, match="file_format 'npz', but the extension says hdf5"):
        export_offline_rl(dataset, tmp_path / "e.h5", file_format="npz")
    export_offline_rl(dataset, tmp_path / "e.h5")
    written = (tmp_path / "e.h5").read_bytes()
    with pytest.raises(ExportTargetError, match=r"e.h5: already exists; choose a new name or ask to overwrite it"):
        export_offline_rl(dataset, tmp_path / "e.h5", compression=None)
    assert (tmp_path / "e.h5").read_bytes() == written
    export_offline_rl(dataset, tmp_path / "e.h5", compression=None, overwrite=True)
    assert (tmp_path / "e.h5").read_bytes() != written
    with pytest.raises(ExportTargetError, match=r"t.npz: this export writes .safetensors files, not .npz"):
        export_teacher_student(dataset, tmp_path / "t.npz")
    export_teacher_student(dataset, tmp_path / "t.safetensors")
    with pytest.raises(ExportTargetError, match="already exists"):
        export_teacher_student(dataset, tmp_path / "t.safetensors")
    assert main(["export", str(tmp_path / "data"), "--to", "offline-rl", "--out", str(tmp_path / "e.csv")]) == 2
    assert not (tmp_path / "e.csv").exists()
