"""`ShadowLearner`: behaviour cloning from a person's rows while they are still playing.

Every `human.shadow.interval_s` seconds the learner reads the rows inserted into the replay
since its last look (each shard's cursor), keeps the person's (`source: human`, not driven by
the shadow itself) in a bounded in-memory window, runs `updates_per_round` BC minibatch
updates on it (the `learner:` section's model, batch size, learning rate and augmentation)
and publishes the weights through the object store with a new version. The session's
collector plays those weights beside the person (`shadow_action` on every row) and can hand
them the controls.

It answers the learners' contract (`learners.learner.Learner`): `train()` runs the rounds until
`stop()` is called from another call (the actor runs calls concurrently), then writes the same
outputs as every learner (`LearnerOutputs`: final and best checkpoints - the last version -,
history, curve, TensorBoard) and returns a `TrainResult`; `progress()` reports versions and samples.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import ray
import torch
from loguru import logger

from harvest.learners.augment import augment_images
from harvest.learners.checkpoint import save_checkpoint
from harvest.learners.config import LearnerConfig
from harvest.learners.learner import BEST_NAME, FINAL_NAME, LearnerOutputs, LearnerProgress, TrainProgress, TrainResult
from harvest.learners.losses import bc_loss
from harvest.learners.models import build_policy_model, image_column, resolve_model_spec
from harvest.rollout.batch import BatchSchema
from harvest.rollout.human.config import ShadowConfig
from harvest.rollout.replay.replay import Replay
from harvest.rollout.replay.row_filter import RowFilter

INITIAL_NAME = "initial.safetensors"


@dataclass
class ShadowRound:
    version: int
    seconds: float
    """Since the learner started."""
    rows: int
    """The person's rows in the window it trained on."""
    loss: float


class ShadowLearner:
    """Trains the shadow policy on the person's rows in rounds until stopped; a plain class made
    an actor (with `max_concurrency` for `latest`, `progress` and `stop` beside `train`) where it
    is started."""

    algorithm = "shadow"

    def __init__(
        self,
        cfg: LearnerConfig,
        shadow: ShadowConfig,
        replay: Replay,
        out_dir: str,
        seed: int = 0,
        collector_id: int | None = None,
    ) -> None:
        self.cfg, self.shadow, self.replay, self.out_dir = cfg, shadow, replay, Path(out_dir)
        # the session's collector: the shards send only its rows, not the simulators' beside it
        self._where = RowFilter.of(collector_id=[collector_id] if collector_id is not None else None)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._log = logger.bind(actor="ShadowLearner")
        torch.manual_seed(seed)
        if shadow.num_cpus >= 1:
            torch.set_num_threads(int(shadow.num_cpus))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        schema: BatchSchema = replay.schema
        self.schema = schema
        self.obs_names = schema.obs_columns
        self.spec = resolve_model_spec(
            cfg.model, schema.observation_space, schema.action_space, cfg.hidden_sizes, cfg.conv_channels
        )
        self.model = build_policy_model(schema.observation_space, schema.action_space, self.spec).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.bc.weight_decay)
        self.image_name = image_column(schema.observation_space)
        self.initial_checkpoint = str(
            save_checkpoint(self.out_dir / INITIAL_NAME, self.model, self.spec, 0, {"algorithm": "shadow-init"})
        )
        self._generator = torch.Generator(device=self.device).manual_seed(seed)  # augmentation, on the device
        self._sampler = torch.Generator().manual_seed(seed)  # minibatch rows, on the CPU with the window
        self._cursors = [0] * replay.num_shards
        self._window: dict[str, np.ndarray] = {}
        self._version = 0
        self._weights: ray.ObjectRef | None = None
        self._history: list[ShadowRound] = []
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._progress = LearnerProgress(0)  # open-ended: as many versions as the session lasts
        self._rows_seen = 0

    def get_initial_checkpoint(self) -> str:
        """The untrained model's checkpoint (what the session's shadow policy starts from)."""
        return self.initial_checkpoint

    def latest(self) -> tuple[int, list[ray.ObjectRef]]:
        """The newest weights: (version, [ref to a CPU state dict]); ([], version 0) before the first round."""
        if self._error is not None:
            raise RuntimeError(f"ShadowLearner: training failed: {self._error}") from self._error
        return self._version, [self._weights] if self._weights is not None else []

    def progress(self) -> TrainProgress:
        """Versions published so far (`epoch`) and minibatch samples trained on."""
        return self._progress.snapshot()

    def stop(self) -> None:
        """End the rounds: `train` returns after the round in progress."""
        self._stop.set()

    def train(self) -> TrainResult:
        """Blocks: rounds every `interval_s` until `stop`; then the outputs and the result."""
        outputs = LearnerOutputs(self.out_dir, self.algorithm)
        started = time.perf_counter()
        try:
            while not self._stop.wait(self.shadow.interval_s):
                self._take_new_rows()
                rows = len(self._window.get("action", ()))
                if rows >= self.shadow.min_rows:
                    self._publish(self._train_round(rows), rows, time.perf_counter() - started, outputs)
        except BaseException as err:  # noqa: BLE001 - reported by latest(), and raised below
            self._error = err
            self._log.exception("shadow training stopped")
        return self._finish(outputs)

    def _publish(self, loss: float, rows: int, seconds: float, outputs: LearnerOutputs) -> None:
        """A new version: its weights through the object store, its round in the history."""
        self._version += 1
        state = {name: tensor.detach().cpu() for name, tensor in self.model.state_dict().items()}
        self._weights = ray.put(state)
        self._history.append(ShadowRound(self._version, seconds, rows, loss))
        samples = self.shadow.updates_per_round * min(self.cfg.batch_size, rows)
        self._progress.update(epoch=self._version, train_loss=loss)
        self._progress.add_samples(samples)
        outputs.scalars(self._version, {"loss/train": loss, "shadow/window_rows": rows})
        self._log.info(
            "shadow v{}: {} updates on the person's last {} rows, loss {:.4f}",
            self._version,
            self.shadow.updates_per_round,
            rows,
            loss,
        )

    def _take_new_rows(self) -> None:
        """Append the person's rows inserted since the last look (bounded to `max_rows`); rows
        the shadow itself drove are left out."""
        names = [*self.obs_names, "action"]
        for index, shard in enumerate(self.replay.shards):
            result = ray.get(shard.read.remote(self._cursors[index], 1_000_000, self._where), timeout=120)
            self._cursors[index] = result.next_cursor
            batch = result.batch
            if batch.num_rows == 0:
                continue
            mine = np.asarray(batch["source"]) == "human"
            if "driver" in batch.columns:
                mine &= np.asarray(batch["driver"]) != "shadow"
            self._rows_seen += int(mine.sum())
            for name in names:
                kept = np.asarray(batch[name])[mine]
                old = self._window.get(name)
                joined = kept if old is None else np.concatenate([old, kept])
                self._window[name] = joined[-self.shadow.max_rows :]

    def _train_round(self, rows: int) -> float:
        cfg = self.cfg
        tensors = {name: torch.from_numpy(column) for name, column in self._window.items()}
        self.model.train()
        losses = []
        for _ in range(self.shadow.updates_per_round):
            index = torch.randint(0, rows, (min(cfg.batch_size, rows),), generator=self._sampler)
            obs = {name: tensors[name][index].to(self.device) for name in self.obs_names}
            if self.image_name is not None:
                obs[self.image_name] = augment_images(obs[self.image_name], cfg.augment, self._generator)
            loss = bc_loss(self.model, obs, tensors["action"][index].to(self.device))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            losses.append(float(loss))
        self.model.eval()
        return float(np.mean(losses))

    def _finish(self, outputs: LearnerOutputs) -> TrainResult:
        """The last version is the final and the best checkpoint (nothing held out to choose by)."""
        info = {"algorithm": self.algorithm, "rounds": len(self._history)}
        for name in (FINAL_NAME, BEST_NAME):
            save_checkpoint(self.out_dir / name, self.model, self.spec, self._version, info)
        rounds = [asdict(record) for record in self._history]
        curve = [{"epoch": r.version, "train_loss": r.loss} for r in self._history]
        history_path = outputs.finish({"rounds": rounds}, curve, "shadow policy", x_label="version")
        if self._error is not None:
            raise RuntimeError(f"ShadowLearner: training failed: {self._error}") from self._error
        last = self._history[-1] if self._history else None
        return TrainResult(
            self.algorithm,
            str(outputs.best),
            str(outputs.final),
            str(history_path),
            self._version,
            "version",
            last.loss if last else None,
            "train loss",
            str(self.device),
            self._rows_seen,
            self._history,
            {"versions": self._version},
        )
