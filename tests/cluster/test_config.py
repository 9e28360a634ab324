from pathlib import Path

import pytest

from harvest.cluster.config import ConfigError, RunConfig, dump_config, load_config, parse_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_default_config_is_the_embedded_cartpole_run():
    cfg = load_config(None)
    assert isinstance(cfg, RunConfig)
    assert (cfg.env.id, cfg.rollout.num_collectors, cfg.replay.num_shards, cfg.rollout.steps) == (
        "CartPole-v1",
        2,
        2,
        20_000,
    )
    assert cfg.rollout.policy.kind == "expert" and cfg.learner.stages == ["bc"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("replay:\n  capcity_rows: 5\n", "run.yaml: replay.capcity_rows: unexpected key"),
        ("replya: {}\n", "run.yaml: replya: unexpected key"),
        ("rollout:\n  num_collectors: 2.5\n", "run.yaml: rollout.num_collectors: Input should be a valid integer"),
        ("env:\n  num_envs: '4'\n", "run.yaml: env.num_envs: Input should be a valid integer"),
        ("env:\n  num_envs: 0\n", "run.yaml: env.num_envs: Input should be greater than or equal to 1"),
        (
            "rollout:\n  policy: {kind: torch}\n",
            "run.yaml: rollout.policy: Value error, kind 'torch' needs 'checkpoint'",
        ),
        ("rollout:\n  policy: {kind: smart}\n", "run.yaml: rollout.policy.kind: Input should be"),
        ("learner:\n  hidden_sizes: [64, x]\n", "run.yaml: learner.hidden_sizes.1: Input should be a valid integer"),
        (
            "aggregation:\n  formats: [csv]\n",
            "run.yaml: aggregation.formats.0: Input should be 'parquet', 'npz', 'hdf5', 'tfrecord' or 'robocode_npz'",
        ),
        ("- just\n- a list\n", "run.yaml: expected a mapping of sections"),
        ("env: [unclosed\n", "run.yaml: not valid YAML"),
    ],
)
def test_bad_configs_name_the_key_path(tmp_path, text, message):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text))
    assert message in str(error.value)


@pytest.mark.parametrize(
    "text, line",
    [
        (
            "learner:\n  algorithm: dqfd\n",
            "run.yaml: learner.algorithm: moved to learner.stages (a list: `stages: [dqfd]`)",
        ),
        ("learner:\n  epochs: 3\n", "run.yaml: learner.epochs: moved to learner.bc.epochs"),
        ("learner:\n  dagger: {rounds: 3}\n", "run.yaml: learner.dagger: moved to dagger (a section at the top)"),
        ("learner:\n  ppo: {gamma: 0.9}\n", "run.yaml: learner.ppo.gamma: moved to learner.gamma"),
        (
            "learner:\n  dqfd: {eval_episodes: 2}\n",
            "run.yaml: learner.dqfd.eval_episodes: moved to learner.eval.episodes",
        ),
        (
            "learner:\n  ppo: {eval_env_kwargs: {}}\n",
            "run.yaml: learner.ppo.eval_env_kwargs: moved to learner.eval.env_kwargs",
        ),
        ("dagger:\n  eval_episodes: 4\n", "run.yaml: dagger.eval_episodes: moved to learner.eval.episodes"),
    ],
)
def test_a_key_of_the_earlier_learner_shape_is_one_line_naming_the_new_key(tmp_path, text, line):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text))
    assert str(error.value) == f"{tmp_path}/{line}"


def test_every_old_key_is_named_and_the_new_shape_loads(tmp_path):
    old = "learner:\n  epochs: 2\n  validation_fraction: 0\n  ppo: {init_checkpoint: x, env_kwargs: {a: 1}}\n"
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, old))
    assert str(error.value).replace(f"{tmp_path}/", "").splitlines() == [
        "run.yaml: learner.epochs: moved to learner.bc.epochs",
        "run.yaml: learner.validation_fraction: moved to learner.bc.validation_fraction",
        "run.yaml: learner.ppo.env_kwargs: moved to learner.env_kwargs",
        "run.yaml: learner.ppo.init_checkpoint: moved to learner.init_checkpoint",
    ]
    new = "learner:\n  stages: [bc, ppo]\n  gamma: 0.9\n  bc: {epochs: 2}\n  eval: {episodes: 3}\ndagger: {rounds: 4}\n"
    cfg = load_config(write(tmp_path, new))
    assert (cfg.learner.stages, cfg.learner.gamma, cfg.learner.bc.epochs) == (["bc", "ppo"], 0.9, 2)
    assert (cfg.learner.eval.episodes, cfg.dagger.rounds) == (3, 4)
    with pytest.raises(ConfigError, match=r"learner.stages: List should have at least 1 item"):
        load_config(None, ["learner.stages=[]"])


def test_floats_stay_lax_and_sections_are_typed(tmp_path):
    cfg = load_config(write(tmp_path, "learner:\n  lr: 1\nreplay:\n  num_shards: 4\n"))
    assert cfg.learner.lr == 1.0 and cfg.replay.num_shards == 4


def test_overrides_go_through_the_same_validator(tmp_path):
    cfg = load_config(write(tmp_path, "replay: {num_shards: 3}\n"), ["replay.capacity_rows=500", "eval.episodes=3"])
    assert (cfg.replay.num_shards, cfg.replay.capacity_rows, cfg.eval.episodes) == (3, 500, 3)
    with pytest.raises(ConfigError, match=r"replay.capacity_rows: Input should be a valid integer"):
        load_config(None, ["replay.capacity_rows=lots"])
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        load_config(None, ["replay.capacity_rows"])


def test_dumped_config_loads_back_equal(tmp_path):
    cfg = load_config(None, ["env.num_envs=3", "learner.hidden_sizes=[8]"])
    assert parse_config(__import__("yaml").safe_load(dump_config(cfg))) == cfg


def test_the_example_config_is_valid():
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[2] / "examples" / "cartpole_bc.yaml")
    assert cfg.env.id == "CartPole-v1"


@pytest.mark.parametrize("name", sorted(path.name for path in EXAMPLES.glob("*.yaml")))
def test_every_example_config_validates_and_builds_its_env(name):
    from harvest.envs.registry import make_vector_env

    cfg = load_config(EXAMPLES / name)
    if cfg.env.id != "robocode":  # the Robocode collectors host the engine; their env needs a JVM
        make_vector_env(cfg.env).close()


@pytest.mark.parametrize("run_id", ["../escape", "a/b", ".hidden", "/abs", "x" * 200])
def test_a_run_id_that_could_leave_the_output_folder_is_refused(tmp_path, run_id):
    from harvest.cluster.cli import main

    with pytest.raises(ConfigError, match="run.id: String should match pattern"):
        load_config(None, [f"run.id={run_id!r}"])
    assert main(["run", "--run-id", run_id, "--set", f"run.output_dir={tmp_path / 'out'}"]) == 2
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape").exists()
