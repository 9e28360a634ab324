"""`ShadowLearner`: behaviour cloning from a person's rows while they are still playing.

Every `human.shadow.interval_s` seconds the learner reads the rows inserted into the replay
since its last look (each shard's cursor), keeps the person's (`source: human`, not driven by
the shadow itself) in a bounded in-memory window, runs `updates_per_round` BC minibatch
updates on it (the `learner:` section's model, batch size, learning rate and augmentation)
and publishes the weights through the object store with a new version. The session's
collector plays those weights beside the person (`shadow_action` on every row) and can hand
them the controls. `stop` ends the loop and writes the checkpoint, history and curve.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from loguru import logger

from harvest.learners.augment import augment_images
from harvest.learners.checkpoint import save_checkpoint
from harvest.learners.config import LearnerConfig
from harvest.learners.losses import bc_loss
from harvest.learners.models import build_policy_model, image_column, resolve_model_spec
from harvest.rollout.batch import BatchSchema
from harvest.rollout.human.config import ShadowConfig
from harvest.rollout.replay.replay import Replay
from harvest.rollout.replay.row_filter import RowFilter

INITIAL_NAME, FINAL_NAME, HISTORY_NAME = "initial.safetensors", "final.safetensors", "training_history.json"


@dataclass
class ShadowRound:
    version: int
    seconds: float
    """Since the learner started."""
    rows: int
    """The person's rows in the window it trained on."""
    loss: float


class ShadowLearner:
    """Trains the shadow policy on the person's rows in rounds, in a thread of its own; a plain
    class made an actor where it is started."""

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
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
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
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._started = time.perf_counter()

    def get_initial_checkpoint(self) -> str:
        """The untrained model's checkpoint (what the session's shadow policy starts from)."""
        return self.initial_checkpoint

    def start(self) -> None:
        """Begin training rounds in the background."""
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._loop, name="shadow-learner", daemon=True)
        self._thread.start()

    def latest(self) -> tuple[int, list[ray.ObjectRef]]:
        """The newest weights: (version, [ref to a CPU state dict]); ([], version 0) before the first round."""
        if self._error is not None:
            raise RuntimeError(f"ShadowLearner: training failed: {self._error}") from self._error
        return self._version, [self._weights] if self._weights is not None else []

    def _loop(self) -> None:
        try:
            while not self._stop.wait(self.shadow.interval_s):
                self._take_new_rows()
                rows = len(self._window.get("action", ()))
                if rows < self.shadow.min_rows:
                    continue
                loss = self._train_round(rows)
                self._version += 1
                state = {name: tensor.detach().cpu() for name, tensor in self.model.state_dict().items()}
                self._weights = ray.put(state)
                self._history.append(ShadowRound(self._version, time.perf_counter() - self._started, rows, loss))
                self._log.info(
                    "shadow v{}: {} updates on the person's last {} rows, loss {:.4f}",
                    self._version,
                    self.shadow.updates_per_round,
                    rows,
                    loss,
                )
        except BaseException as err:  # noqa: BLE001 - reported by latest() and stop()
            self._error = err
            self._log.exception("shadow training stopped")

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

    def stop(self) -> dict[str, Any]:
        """Blocks: end the rounds; write the final checkpoint and the history; a summary."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=600)
        final = save_checkpoint(
            self.out_dir / FINAL_NAME,
            self.model,
            self.spec,
            self._version,
            {"algorithm": "shadow", "rounds": len(self._history)},
        )
        history = [asdict(record) for record in self._history]
        (self.out_dir / HISTORY_NAME).write_text(json.dumps({"rounds": history}, indent=2))
        if self._error is not None:
            raise RuntimeError(f"ShadowLearner: training failed: {self._error}") from self._error
        return {"versions": self._version, "final_checkpoint": str(final), "rounds": history}
