"""Data-parallel behaviour cloning through Ray Train's `TorchTrainer` over a Ray Data dataset.

`learner.bc.num_workers` > 1 trains BC this way: every worker holds a replica of the model
(DistributedDataParallel set up by `ray.train.torch.prepare_model`, NCCL on GPUs, gloo on
CPUs), reads its own shard of the dataset (`get_dataset_shard`, streamed from the Parquet
files, never loaded into one process), and the gradients are averaged each step. Rank 0
writes the same outputs as `BCLearner`: best and final checkpoints (by validation loss),
`training_history.json`, the curve and TensorBoard files. Validation is split by episode,
as in `BCLearner`; the normalizer's statistics come from a sample of the training rows.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from loguru import logger

from harvest.aggregation.dataset import Dataset
from harvest.aggregation.storage import Location
from harvest.learners.checkpoint import save_checkpoint
from harvest.learners.config import LearnerConfig
from harvest.learners.learner import (
    BEST_NAME,
    CURVE_NAME,
    FINAL_NAME,
    HISTORY_NAME,
    EpochRecord,
    TrainResult,
    epochs_result,
    split_by_episode,
)
from harvest.learners.losses import bc_loss, loss_from_output
from harvest.learners.models import ConvPolicyModel, PolicyModel, build_policy_model, fit_normalizer, resolve_model_spec
from harvest.learners.plots import plot_training_curve
from harvest.learners.precision import Precision
from harvest.learners.records import TrainingRecorder


def _train_loop(config: dict) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    cfg: LearnerConfig = config["cfg"]
    schema, spec, obs_names = config["schema"], config["spec"], config["obs_names"]
    torch.manual_seed(cfg.seed)
    if cfg.num_cpus >= 1:
        torch.set_num_threads(int(cfg.num_cpus))
    policy = build_policy_model(schema.observation_space, schema.action_space, spec)
    if config["normalizer"] is not None:
        assert isinstance(policy, PolicyModel)  # the MLP's normalizer: see train_bc_data_parallel
        policy.encoder.mean.copy_(torch.as_tensor(config["normalizer"][0]))
        policy.encoder.std.copy_(torch.as_tensor(config["normalizer"][1]))
    model = ray.train.torch.prepare_model(policy)
    inner = model.module if hasattr(model, "module") else model
    assert isinstance(inner, (PolicyModel, ConvPolicyModel))  # the policy, inside its DDP wrapper or not
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.bc.weight_decay)
    device = ray.train.torch.get_device()
    precision = Precision(cfg.precision, device)
    rank = ray.train.get_context().get_world_rank()
    out_dir = Path(config["out_dir"])
    recorder = TrainingRecorder(out_dir, "bc") if rank == 0 else None
    history, best_loss = [], float("inf")
    for epoch in range(1, cfg.bc.epochs + 1):
        started, losses, rows = time.perf_counter(), [], 0
        model.train()
        for batch in ray.train.get_dataset_shard("train").iter_torch_batches(
            batch_size=cfg.batch_size, device=device, local_shuffle_buffer_size=4 * cfg.batch_size
        ):
            # Through the DDP wrapper, so that backward averages the gradients across workers.
            with precision.autocast():
                out = model({name: batch[name] for name in obs_names})
            loss = loss_from_output(out, inner.action_space, batch["action"])
            optimizer.zero_grad(set_to_none=True)
            precision.backward(loss)
            precision.step(optimizer)
            losses.append(loss.detach())
            rows += int(batch["action"].shape[0])
        totals = torch.tensor(
            [float(torch.stack(losses).sum()) if losses else 0.0, len(losses), rows, 0.0, 0.0, 0.0],
            dtype=torch.float64,
            device=device,
        )
        model.eval()
        with torch.no_grad():
            for batch in ray.train.get_dataset_shard("validation").iter_torch_batches(batch_size=8192, device=device):
                obs = {name: batch[name] for name in obs_names}
                count = int(batch["action"].shape[0])
                totals[3] += float(bc_loss(inner, obs, batch["action"])) * count
                totals[4] += float((inner.act(obs) == batch["action"]).reshape(count, -1).all(-1).sum())
                totals[5] += count
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(totals)
        seconds = time.perf_counter() - started
        train_loss = float(totals[0]) / max(float(totals[1]), 1.0)
        validation_loss = float(totals[3]) / max(float(totals[5]), 1.0) if totals[5] else train_loss
        accuracy = float(totals[4] / totals[5]) if totals[5] and config["discrete"] else None
        record = EpochRecord(epoch, train_loss, validation_loss, accuracy, float(totals[2]) / seconds, seconds)
        history.append(asdict(record))
        if recorder is not None:  # rank 0
            recorder.scalars(
                epoch,
                {
                    "loss/train": train_loss,
                    "loss/validation": validation_loss,
                    "accuracy/validation": accuracy,
                    "throughput/samples_per_s": record.samples_per_s,
                    "lr": cfg.lr,
                },
            )
            info = {
                "algorithm": "bc",
                "epoch": epoch,
                "dataset": config["dataset"],
                "validation_loss": validation_loss,
                "validation_accuracy": accuracy,
                "workers": ray.train.get_context().get_world_size(),
            }
            if validation_loss < best_loss:
                best_loss = validation_loss
                save_checkpoint(out_dir / BEST_NAME, inner, spec, epoch, info)
            if epoch == cfg.bc.epochs:
                save_checkpoint(out_dir / FINAL_NAME, inner, spec, epoch, info)
            (out_dir / HISTORY_NAME).write_text(
                json.dumps(
                    {
                        "config": asdict(cfg),
                        "device": str(device),
                        "precision": precision.name,
                        "workers": ray.train.get_context().get_world_size(),
                        "best_epoch": min(history, key=lambda entry: entry["validation_loss"])["epoch"],
                        "epochs": history,
                    },
                    indent=2,
                )
            )
        ray.train.report(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "validation_loss": validation_loss,
                "validation_accuracy": accuracy,
                "samples_per_s": record.samples_per_s,
            }
        )
    if recorder is not None:
        recorder.close()


def train_bc_data_parallel(cfg: LearnerConfig, dataset_dir: str | Location, out_dir: str) -> TrainResult:
    """BC on `cfg.bc.num_workers` Ray Train workers (GPUs when `learner.num_gpus` > 0); blocks."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    dataset = Dataset.open(dataset_dir, verify=cfg.verify_dataset)
    schema, out = dataset.schema, Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    obs_names, action_names = schema.obs_columns, schema.action_columns
    if action_names != ["action"]:
        raise ValueError(f"{dataset.folder}: data-parallel BC supports one action column, got {action_names}")
    episode_ids = dataset.read_columns(["episode_id"])["episode_id"]
    validation_ids = np.unique(episode_ids[split_by_episode(episode_ids, cfg.bc.validation_fraction, cfg.seed)])
    spec = resolve_model_spec(
        cfg.model, schema.observation_space, schema.action_space, cfg.hidden_sizes, cfg.conv_channels
    )
    sample = dataset.read_columns(obs_names, max_rows=100_000)
    probe = build_policy_model(schema.observation_space, schema.action_space, spec)
    normalizer = None
    if isinstance(probe, PolicyModel):  # (the CNN has no normalizer)
        tensors = {name: torch.from_numpy(np.array(sample[name])) for name in obs_names}
        fit_normalizer(probe, tensors, obs_names, torch.arange(len(next(iter(sample.values())))))
        normalizer = (probe.encoder.mean.numpy().copy(), probe.encoder.std.numpy().copy())
    rows = dataset.to_ray(columns=[*obs_names, "action", "episode_id"])

    def held_out(batch: dict) -> dict:
        batch["validation"] = np.isin(batch["episode_id"], validation_ids)
        return batch

    rows = rows.map_batches(held_out, batch_format="numpy")
    train_rows = rows.filter(lambda row: not row["validation"]).drop_columns(["validation", "episode_id"])
    validation_rows = rows.filter(lambda row: row["validation"]).drop_columns(["validation", "episode_id"])
    config = {
        "cfg": cfg,
        "schema": schema,
        "spec": spec,
        "obs_names": obs_names,
        "normalizer": normalizer,
        "out_dir": str(out.resolve()),
        "dataset": str(dataset.folder),
        "discrete": not hasattr(schema.action_space, "low"),
    }
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=cfg.bc.num_workers,
            use_gpu=cfg.num_gpus > 0,
            resources_per_worker={"CPU": cfg.num_cpus, **({"GPU": cfg.num_gpus} if cfg.num_gpus else {})},
        ),
        datasets={"train": train_rows, "validation": validation_rows},
        run_config=RunConfig(name="bc", storage_path=str((out / "ray_train").resolve())),
    )
    logger.info(
        "training BC data-parallel on {} Ray Train workers ({}) over {}",
        cfg.bc.num_workers,
        "GPU" if cfg.num_gpus else "CPU",
        dataset.folder,
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    written = json.loads((out / HISTORY_NAME).read_text())  # by rank 0, epoch by epoch
    history = [EpochRecord(**record) for record in written["epochs"]]
    best = min(history, key=lambda record: record.validation_loss)
    plot_training_curve(
        [asdict(record) for record in history],
        out / CURVE_NAME,
        f"BC on {dataset.manifest.env_id} ({cfg.bc.num_workers} workers)",
    )
    validation_count = int(np.isin(episode_ids, validation_ids).sum())
    return epochs_result(
        "bc",
        out,
        history,
        best.epoch,
        len(episode_ids) - validation_count,
        validation_count,
        f"ray-train x{cfg.bc.num_workers} ({'cuda' if cfg.num_gpus else 'cpu'})",
    )
