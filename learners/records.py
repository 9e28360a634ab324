"""TensorBoard event files for a training stage: `<out_dir>/tensorboard/`.

tensorboard --logdir artifacts/<run>/learner
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

from torch.utils.tensorboard import SummaryWriter

TENSORBOARD_DIR = "tensorboard"


class TrainingRecorder:
    """Scalars of one stage (`loss/...`, `eval/return`, `throughput/...`), by step."""

    def __init__(self, out_dir: Path, algorithm: str) -> None:
        self.algorithm = algorithm
        self._writer = SummaryWriter(log_dir=str(Path(out_dir) / TENSORBOARD_DIR))

    def scalars(self, step: int, values: Mapping[str, float | None]) -> None:
        """Write every finite value of `values` (tag: value) at `step`; None and NaN are skipped."""
        for tag, value in values.items():
            if value is not None and math.isfinite(value):
                self._writer.add_scalar(tag, float(value), step)

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()
