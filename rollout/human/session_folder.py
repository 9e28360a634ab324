"""A teleoperation session written in the driving recorder's layout (seed 002):

    sessions/session_20261125_143022/
        screenshots/episode_001_frame_000000.png    one per frame, what the model sees
        metadata/expert_data.csv                    one row per frame (DRIVING_COLUMNS)
        telemetry/episode_001.jsonl                 every telemetry value and the raw action, per frame

`harvest import driving-session` reads it back. Images are encoded and written by a thread of
their own through a bounded queue, so the game loop never waits on the disk for long; `close`
returns only when every frame is on disk. Files are written under a temporary name and
renamed, so a crash leaves no half-written file under its real name.
"""

from __future__ import annotations

import csv
import json
import os
import queue
import threading
from pathlib import Path
from typing import Any

import numpy as np

DRIVING_COLUMNS = [
    "episode",
    "frame",
    "timestamp",
    "screenshot_filename",
    "throttle",
    "brake",
    "steering",
    "gear_up",
    "gear_down",
    "clutch",
    "speed",
    "rpm",
    "gear",
    "lap_time",
]
"""The columns of `metadata/expert_data.csv`, in order."""


class SessionFolderWriter:
    """Writes frames of a session into `root/session_<stamp>/` as they are played."""

    def __init__(self, root: Path, session_id: str, max_queued_frames: int = 256) -> None:
        self.folder = Path(root) / session_id
        for sub in ("screenshots", "metadata", "telemetry"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        self._csv_path = self.folder / "metadata" / "expert_data.csv"
        self._csv_file = self._csv_path.with_suffix(".csv.partial").open("w", newline="")
        self._csv = csv.writer(self._csv_file)
        self._csv.writerow(DRIVING_COLUMNS)
        self._telemetry: dict[int, Any] = {}
        self._queue: queue.Queue = queue.Queue(maxsize=max_queued_frames)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._write_images, name="session-screenshots", daemon=True)
        self._thread.start()
        self.frames = 0

    def add(
        self,
        episode: int,
        frame: int,
        timestamp_s: float,
        image: np.ndarray,
        action: np.ndarray,
        telemetry: dict[str, float],
        extra: dict[str, Any] | None = None,
    ) -> None:
        """One frame: `action` is (steering, throttle, brake) as CarRacing orders them."""
        if self._error is not None:
            raise RuntimeError(f"{self.folder}: writing screenshots failed: {self._error}") from self._error
        name = f"episode_{episode:03d}_frame_{frame:06d}.png"
        self._queue.put((self.folder / "screenshots" / name, np.ascontiguousarray(image)))
        steering, throttle, brake = (float(value) for value in np.asarray(action, np.float64)[:3])
        self._csv.writerow(
            [
                episode,
                frame,
                f"{timestamp_s:.6f}",
                name,
                f"{throttle:.4f}",
                f"{brake:.4f}",
                f"{steering:.4f}",
                False,
                False,
                0.0,
                f"{telemetry.get('speed', 0.0):.4f}",
                f"{telemetry.get('rpm', 0.0):.1f}",
                int(telemetry.get("gear", 1)),
                f"{telemetry.get('lap_time', 0.0):.4f}",
            ]
        )
        lines = self._telemetry.get(episode)
        if lines is None:
            lines = self._telemetry[episode] = (
                self.folder / "telemetry" / f"episode_{episode:03d}.jsonl.partial"
            ).open("w")
        lines.write(
            json.dumps(
                {
                    "frame": frame,
                    "timestamp": timestamp_s,
                    "action": np.asarray(action).tolist(),
                    **telemetry,
                    **(extra or {}),
                }
            )
            + "\n"
        )
        self.frames += 1

    def _write_images(self) -> None:
        from PIL import Image

        while True:
            item = self._queue.get()
            if item is None:
                return
            path, image = item
            try:
                partial = path.with_suffix(".png.partial")
                Image.fromarray(image).save(partial, format="PNG")
                os.replace(partial, path)
            except BaseException as err:  # noqa: BLE001 - reported by the next add() or close()
                self._error = err
                return

    def close(self) -> Path:
        """Blocks until every screenshot is written; then the CSV and telemetry get their names."""
        self._queue.put(None)
        self._thread.join()
        self._csv_file.close()
        os.replace(self._csv_file.name, self._csv_path)
        for lines in self._telemetry.values():
            lines.close()
            os.replace(lines.name, lines.name.removesuffix(".partial"))
        if self._error is not None:
            raise RuntimeError(f"{self.folder}: writing screenshots failed: {self._error}") from self._error
        return self.folder
