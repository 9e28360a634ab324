"""Models, losses, checkpoints and behaviour cloning, without Ray."""

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from harvest.aggregation.compact import write_dataset as aggregation_write_dataset
from harvest.aggregation.config import AggregationConfig
from harvest.aggregation.dataset import Dataset
from harvest.envs.spaces import ColumnSpec, flatten_value
from harvest.learners.bc import BCLearner, bc_loss, split_by_episode
from harvest.learners.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from harvest.learners.config import BCConfig, LearnerConfig
from harvest.learners.models import ModelSpec, build_policy_model, resolve_model_spec
from harvest.learners.policy import load_torch_policy
from harvest.rollout.batch import BatchSchema, TransitionBatch
from tests.rollout.test_batch import random_batch


def write_dataset(folder: Path, schema: BatchSchema, batch: TransitionBatch) -> Path:
    """A dataset folder made by the real compaction code from an in-memory batch."""
    aggregation_write_dataset(
        [batch], schema, folder / "dataset", AggregationConfig(formats=["parquet"]), run_id="t", env_id="synthetic"
    )
    return folder / "dataset"


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars in a stage's TensorBoard event files, read back with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def synthetic(observation_space, action_space, num_rows, label, seed=0):
    schema = BatchSchema.for_spaces(observation_space, action_space)
    batch = random_batch(schema, num_rows, seed)
    batch.columns["episode_id"] = np.arange(num_rows) // 50
    batch.columns["step"] = np.arange(num_rows) % 50
    batch.columns["action"] = label(batch)
    return schema, batch


def test_cross_entropy_matches_a_hand_computation():
    model = build_policy_model(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(4, start=1), [8])
    obs = {"obs": torch.randn(5, 3)}
    action = torch.tensor([1, 2, 3, 4, 1])
    logits = model(obs).detach().numpy()
    log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = -np.mean(log_probs[np.arange(5), action.numpy() - 1])
    assert float(bc_loss(model, obs, action)) == pytest.approx(expected, rel=1e-5)


def test_continuous_head_squashes_into_the_bounds_and_uses_mse():
    space = gym.spaces.Box(np.array([-2.0, 0.0]), np.array([2.0, 1.0]), dtype=np.float32)
    model = build_policy_model(gym.spaces.Box(-1, 1, (3,)), space, [8])
    with torch.no_grad():
        model.head.bias.fill_(50.0)  # saturate tanh: actions at the upper bounds
    out = model({"obs": torch.zeros(2, 3)})
    np.testing.assert_allclose(out.detach().numpy(), [[2.0, 1.0]] * 2, rtol=1e-4)
    target = torch.tensor([[0.0, 0.0], [2.0, 1.0]])
    expected = float(((out - target) ** 2).mean())
    assert float(bc_loss(model, {"obs": torch.zeros(2, 3)}, target)) == pytest.approx(expected)


def test_squashed_gaussian_matches_torchs_transformed_distribution_and_stays_in_bounds():
    from torch.distributions import Independent, Normal, TransformedDistribution
    from torch.distributions.transforms import AffineTransform, TanhTransform

    low, high = np.array([-2.0, 0.0], np.float32), np.array([2.0, 10.0], np.float32)
    model = build_policy_model(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Box(low, high), [16])
    obs = {"obs": torch.randn(64, 3)}
    dist = model.distribution(obs)
    actions = dist.sample(torch.Generator().manual_seed(0))
    assert ((actions >= torch.from_numpy(low)) & (actions <= torch.from_numpy(high))).all()
    lo, hi = torch.from_numpy(low), torch.from_numpy(high)
    reference = Independent(
        TransformedDistribution(
            Normal(dist.mean, dist.log_std.exp()), [TanhTransform(), AffineTransform((lo + hi) / 2, (hi - lo) / 2)]
        ),
        1,
    )
    torch.testing.assert_close(dist.log_prob(actions), reference.log_prob(actions), rtol=1e-4, atol=1e-4)
    # Actions at the bounds (as a clipped env would store them) get a finite log-probability.
    assert torch.isfinite(dist.log_prob(torch.from_numpy(np.stack([low, high])).repeat(32, 1))).all()
    torch.testing.assert_close(dist.kl(dist), torch.zeros(64))
    torch.testing.assert_close(model(obs), dist.mode())  # greedy play: the squashed mean
    # Entropy is the pre-squash Gaussian's and grows with the learned log-std.
    before = dist.entropy()
    with torch.no_grad():
        model.log_std.add_(1.0)
    torch.testing.assert_close(model.distribution(obs).entropy(), before + 2.0)
    # A dimension BC fixed is played exactly and carries no probability.
    model.fix_constant_actions(torch.tensor([[0.5, 3.0], [1.0, 3.0]]))
    fixed = model.distribution(obs)
    assert (fixed.sample()[:, 1] == 3.0).all()
    one_dim = Normal(fixed.mean[:, 0], fixed.log_std[:, 0].exp()).entropy()
    torch.testing.assert_close(fixed.entropy(), one_dim)


def test_precision_autocasts_where_asked_and_stays_fp32_on_the_cpu_by_default():
    from harvest.learners.precision import Precision, resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    layer = torch.nn.Linear(4, 4)
    with Precision("auto", cpu).autocast():
        assert layer(torch.randn(2, 4)).dtype == torch.float32
    precision = Precision("bf16", cpu)
    with precision.autocast():
        out = layer(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    before = layer.weight.detach().clone()
    precision.backward(out.float().square().sum())
    precision.step(optimizer, layer.parameters(), max_grad_norm=1.0)
    assert layer.weight.dtype == torch.float32 and not torch.equal(layer.weight, before)


def test_bc_trains_under_bf16_autocast(tmp_path):
    schema, batch = synthetic(
        gym.spaces.Box(-1, 1, (2,), np.float32),
        gym.spaces.Discrete(2),
        3000,
        lambda b: (b["obs"][:, 0] + b["obs"][:, 1] > 0).astype(np.int64),
    )
    dataset = write_dataset(tmp_path, schema, batch)
    result = BCLearner(
        LearnerConfig(batch_size=64, hidden_sizes=[32, 32], precision="bf16", bc=BCConfig(epochs=8)),
        str(dataset),
        str(tmp_path / "learner"),
    ).train()
    assert json.loads(Path(result.history_path).read_text())["precision"] == "bf16"
    assert result.history[-1].validation_accuracy > 0.95
    assert load_checkpoint(result.best_checkpoint).model.trunk[0].weight.dtype == torch.float32


def test_validation_split_holds_out_whole_episodes():
    episode_ids = np.repeat(np.arange(20), 7)
    mask = split_by_episode(episode_ids, 0.25, seed=0)
    held_out = np.unique(episode_ids[mask])
    assert held_out.size == 5
    assert not np.isin(episode_ids[~mask], held_out).any()
    assert not split_by_episode(np.zeros(9, dtype=np.int64), 0.5, 0).any()  # one episode: nothing held out


def test_bc_learns_a_discrete_rule(tmp_path):
    schema, batch = synthetic(
        gym.spaces.Box(-1, 1, (2,), np.float32),
        gym.spaces.Discrete(2),
        3000,
        lambda b: (b["obs"][:, 0] + b["obs"][:, 1] > 0).astype(np.int64),
    )
    dataset = write_dataset(tmp_path, schema, batch)
    learner = BCLearner(
        LearnerConfig(batch_size=64, hidden_sizes=[32, 32], bc=BCConfig(epochs=8)),
        str(dataset),
        str(tmp_path / "learner"),
    )
    result = learner.train()
    assert result.history[-1].validation_accuracy > 0.95
    assert result.trained_on + result.details["validation_rows"] == 3000
    history = json.loads(Path(result.history_path).read_text())
    assert len(history["epochs"]) == 8 and history["best_epoch"] == result.best_step
    assert (tmp_path / "learner" / "training_curve.png").read_bytes()[:4] == b"\x89PNG"
    scalars = tensorboard_scalars(tmp_path / "learner")
    assert [step for step, _ in scalars["loss/train"]] == list(range(1, 9))
    assert scalars["accuracy/validation"][-1][1] == pytest.approx(result.history[-1].validation_accuracy)
    assert {"loss/validation", "lr", "throughput/samples_per_s"} <= set(scalars)
    assert learner.progress().epoch == 8
    policy = load_torch_policy(result.best_checkpoint)
    obs = np.array([[0.5, 0.4], [-0.5, -0.1]], dtype=np.float32)
    assert policy.compute_actions(obs).actions.tolist() == [1, 0]
    assert policy.version == result.best_step


def test_bc_regresses_continuous_actions(tmp_path):
    space = gym.spaces.Box(-1, 1, (2,), np.float32)
    schema, batch = synthetic(
        gym.spaces.Box(-1, 1, (3,), np.float32),
        space,
        2000,
        lambda b: np.tanh(b["obs"][:, :2] * 0.8).astype(np.float32),
    )
    dataset = write_dataset(tmp_path, schema, batch)
    result = BCLearner(
        LearnerConfig(batch_size=64, hidden_sizes=[32], bc=BCConfig(epochs=15)), str(dataset), str(tmp_path / "learner")
    ).train()
    assert result.history[-1].validation_accuracy is None
    assert result.best_score < 0.01


def test_an_action_dimension_the_demonstrations_never_vary_is_played_exactly(tmp_path):
    space = gym.spaces.Box(np.array([-1, -20, 0], np.float32), np.array([1, 20, 3], np.float32))
    schema, batch = synthetic(
        gym.spaces.Box(-1, 1, (3,), np.float32),
        space,
        2000,
        lambda b: np.stack(
            [np.tanh(b["obs"][:, 0]), np.zeros(len(b["obs"])), np.full(len(b["obs"]), 1.5)], axis=1
        ).astype(np.float32),
    )
    dataset = write_dataset(tmp_path, schema, batch)
    cfg = LearnerConfig(
        batch_size=64, hidden_sizes=[16], bc=BCConfig(epochs=3, lr_schedule="cosine", continuous_loss="standardized")
    )
    result = BCLearner(cfg, str(dataset), str(tmp_path / "learner")).train()
    policy = load_torch_policy(result.best_checkpoint)  # the fixed dimensions survive the checkpoint
    actions = policy.compute_actions(np.random.default_rng(3).uniform(-3, 3, (500, 3)).astype(np.float32)).actions
    assert (actions[:, 1] == 0).all() and (actions[:, 2] == 1.5).all()
    assert actions[:, 0].std() > 0.1, "the varying dimension is still learned"


def test_flagged_rows_are_left_out_of_training(tmp_path):
    # Rows flagged `noisy` carry the wrong label; skipping them recovers the rule exactly.
    schema, batch = synthetic(
        gym.spaces.Box(-1, 1, (2,), np.float32),
        gym.spaces.Discrete(2),
        3000,
        lambda b: (b["obs"][:, 0] > 0).astype(np.int64),
    )
    schema = BatchSchema(
        {**schema.columns, "noisy": ColumnSpec(np.bool_, ())}, schema.observation_space, schema.action_space
    )
    noisy = np.random.default_rng(1).random(3000) < 0.4
    batch.columns["noisy"] = noisy
    batch.columns["action"] = np.where(noisy, 1 - batch["action"], batch["action"])
    dataset = write_dataset(tmp_path, schema, batch)
    cfg = LearnerConfig(batch_size=64, hidden_sizes=[32], bc=BCConfig(epochs=6, skip_rows_where=["noisy"]))
    result = BCLearner(cfg, str(dataset), str(tmp_path / "learner")).train()
    assert result.trained_on + result.details["validation_rows"] == int((~noisy).sum())
    assert result.history[-1].validation_accuracy > 0.95
    with pytest.raises(ValueError, match=r"skip_rows_where: \['step'\] must name boolean columns; .*'noisy'"):
        BCLearner(LearnerConfig(bc=BCConfig(skip_rows_where=["step"])), str(dataset), str(tmp_path / "l2")).train()


def test_dict_observations_and_multidiscrete_actions_train(tmp_path):
    from tests.toy_envs import DictObsEnv

    schema, batch = synthetic(
        DictObsEnv.observation_space,
        DictObsEnv.action_space,
        400,
        lambda b: np.stack([b["obs.phase"] % 3, (b["obs.position"][:, 0] > 0)], 1).astype(np.int64),
    )
    batch.columns["obs.phase"] %= 3
    dataset = write_dataset(tmp_path, schema, batch)
    result = BCLearner(
        LearnerConfig(hidden_sizes=[16], bc=BCConfig(epochs=2)), str(dataset), str(tmp_path / "l")
    ).train()
    policy = load_torch_policy(result.final_checkpoint)
    obs = {
        "position": np.zeros((3, 2), np.float32),
        "grid": np.zeros((3, 3, 4, 4), np.uint8),
        "phase": np.array([0, 1, 2]),
    }
    actions = policy.compute_actions(obs).actions
    assert actions.shape == (3, 2) and DictObsEnv.action_space.contains(actions[0])


def test_checkpoint_round_trip_without_pickle(tmp_path):
    model = build_policy_model(gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(3), [16])
    path = save_checkpoint(tmp_path / "m.safetensors", model, [16], version=7, info={"note": "x"})
    loaded = load_checkpoint(path)
    assert loaded.version == 7 and loaded.info == {"note": "x"}
    obs = {"obs": torch.randn(4, 4)}
    torch.testing.assert_close(loaded.model(obs), model.eval()(obs))
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.safetensors: not a readable"):
        load_checkpoint(tmp_path / "junk.safetensors")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.safetensors")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bc_trains_on_cuda(tmp_path):
    schema, batch = synthetic(
        gym.spaces.Box(-1, 1, (2,), np.float32),
        gym.spaces.Discrete(2),
        2000,
        lambda b: (b["obs"][:, 0] > 0).astype(np.int64),
    )
    dataset = write_dataset(tmp_path, schema, batch)
    result = BCLearner(LearnerConfig(bc=BCConfig(epochs=3)), str(dataset), str(tmp_path / "learner")).train()
    assert result.device.startswith("cuda")
    assert result.history[-1].validation_accuracy > 0.9


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_learner_actor_trains_on_the_gpu_ray_gives_it(ray_cluster, tmp_path):
    import ray

    schema, batch = synthetic(
        gym.spaces.Box(-1, 1, (2,), np.float32),
        gym.spaces.Discrete(2),
        2000,
        lambda b: (b["obs"][:, 0] > 0).astype(np.int64),
    )
    dataset = write_dataset(tmp_path, schema, batch)
    learner = (
        ray.remote(BCLearner)
        .options(num_gpus=1, num_cpus=0.5)
        .remote(LearnerConfig(num_gpus=1, bc=BCConfig(epochs=2)), str(dataset), str(tmp_path / "learner"))
    )
    try:
        result = ray.get(learner.train.remote(), timeout=300)
    finally:
        ray.kill(learner, no_restart=True)
    assert result.device.startswith("cuda")


def generals_spaces(size: int = 6):
    from harvest.envs.generals.env import GeneralsVectorEnv

    env = GeneralsVectorEnv(num_envs=2, map={"min_size": size, "max_size": size, "min_general_distance": 2})
    return env, env.single_observation_space, env.single_action_space


def test_auto_model_is_a_cnn_over_the_board_with_masked_per_tile_logits():
    env, observation_space, action_space = generals_spaces()
    spec = resolve_model_spec("auto", observation_space, action_space, [8], [4, 4])
    assert spec.kind == "cnn"
    torch.manual_seed(0)
    assert resolve_model_spec("auto", gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2), [8], [4]).kind == "mlp"
    model = build_policy_model(observation_space, action_space, spec)
    assert model.actions_per_tile == 8
    obs, _ = env.reset(seed=0)
    tensors = {name: torch.as_tensor(value) for name, value in flatten_value(obs, "obs").items()}
    logits = model(tensors)
    assert logits.shape == (2, 6 * 6 * 8 + 1)
    legal = tensors["obs.action_mask"] == 1
    assert (logits[~legal] == -1e9).all() and (logits[legal] > -1e8).all()
    actions = model.act(tensors, deterministic=False, generator=torch.Generator().manual_seed(0))
    assert legal[torch.arange(2), actions].all()
    # The tile logits follow the board: shifting the board shifts them (away from the edges).
    board = torch.zeros(1, 9, 6, 6)
    board[0, 2, 2, 2] = 1.0
    shifted = torch.roll(board, shifts=1, dims=3)
    unmasked = {"obs.board": board, "obs.action_mask": torch.ones(1, 6 * 6 * 8 + 1)}
    tiles = model(unmasked)[0, :-1].reshape(6, 6, 8)
    tiles_shifted = model({**unmasked, "obs.board": shifted})[0, :-1].reshape(6, 6, 8)
    # (equal up to float rounding: the convolution sums in another order at another offset)
    torch.testing.assert_close(tiles_shifted[2, 3], tiles[2, 2], atol=1e-4, rtol=1e-3)


def test_cnn_checkpoint_round_trip(tmp_path):
    _, observation_space, action_space = generals_spaces()
    spec = ModelSpec("cnn", [8], [4, 4])
    model = build_policy_model(observation_space, action_space, spec)
    path = save_checkpoint(tmp_path / "cnn.safetensors", model, spec, version=3, info={})
    loaded = load_checkpoint(path)
    assert isinstance(loaded.model, type(model)) and loaded.version == 3
    obs = {"obs.board": torch.rand(2, 9, 6, 6), "obs.action_mask": torch.ones(2, 6 * 6 * 8 + 1)}
    torch.testing.assert_close(loaded.model(obs), model.eval()(obs))


def test_cnn_refuses_spaces_it_cannot_lay_out():
    with pytest.raises(TypeError, match="model: cnn needs one"):
        build_policy_model(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2), ModelSpec("cnn"))


def test_bc_with_a_cnn_learns_the_generals_expert(tmp_path):
    from harvest.envs.generals.players import ExpertPlayer
    from harvest.envs.registry import row_columns
    from tests.envs.generals.test_env import collect_rows

    env, observation_space, action_space = generals_spaces(size=6)
    rows = collect_rows(env, ExpertPlayer(), steps=1200)
    schema = BatchSchema.for_spaces(observation_space, action_space, extras=row_columns(env))
    dataset = write_dataset(tmp_path, schema, rows)
    cfg = LearnerConfig(model="auto", conv_channels=[16, 16], batch_size=128, lr=3e-3, bc=BCConfig(epochs=4))
    result = BCLearner(cfg, str(dataset), str(tmp_path / "learner")).train()
    accuracy = result.history[result.best_step - 1].validation_accuracy
    assert accuracy > 0.3, f"validation accuracy {accuracy:.2f}; legal moves number in the tens"
    assert json.loads(Path(result.history_path).read_text())["epochs"][0]["epoch"] == 1
    policy = load_torch_policy(result.best_checkpoint)
    obs, _ = env.reset(seed=1)
    actions = policy.compute_actions(obs).actions
    assert obs["action_mask"][np.arange(2), actions].all()


def pixel_square_dataset(tmp_path, rows: int = 1200):
    """Stacked 2 x 36 x 36 x 3 uint8 frames; the action is whether the bright square is on the left."""
    space = gym.spaces.Box(0, 255, (2, 36, 36, 3), np.uint8)
    schema, batch = synthetic(space, gym.spaces.Discrete(2), rows, lambda b: np.zeros(b.num_rows, np.int64))
    rng = np.random.default_rng(0)
    frames = np.zeros((rows, 2, 36, 36, 3), np.uint8)
    left = rng.random(rows) < 0.5
    cols = np.where(left, rng.integers(0, 12, rows), rng.integers(22, 30, rows))
    tops = rng.integers(0, 28, rows)
    for i in range(rows):
        frames[i, 1, tops[i] : tops[i] + 6, cols[i] : cols[i] + 6] = 255  # only the newest frame shows it
    batch.columns["obs"], batch.columns["action"] = frames, left.astype(np.int64)
    return write_dataset(tmp_path, schema, batch)


def test_pixel_observations_get_a_convolutional_encoder_that_learns_and_reloads(tmp_path):
    space = gym.spaces.Box(0, 255, (2, 36, 36, 3), np.uint8)
    assert resolve_model_spec("auto", space, gym.spaces.Discrete(2), [32], [16, 32]).kind == "pixels"
    dataset = pixel_square_dataset(tmp_path)
    frames = Dataset.open(dataset).read_columns(["obs"])["obs"]
    result = BCLearner(
        LearnerConfig(batch_size=64, hidden_sizes=[32], conv_channels=[16, 32], bc=BCConfig(epochs=6)),
        str(dataset),
        str(tmp_path / "learner"),
    ).train()
    assert max(record.validation_accuracy for record in result.history) > 0.9
    loaded = load_checkpoint(result.best_checkpoint)
    assert loaded.spec.kind == "pixels" and loaded.model.pixels is not None
    obs = {"obs": torch.from_numpy(frames[:50])}
    again = load_checkpoint(result.best_checkpoint).model
    assert torch.equal(loaded.model.act(obs), again.act(obs))
    with pytest.raises(TypeError, match="pixels needs one image"):
        build_policy_model(gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(2), ModelSpec("pixels", [8], [8]))
