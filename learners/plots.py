"""Training curves as PNG (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_training_curve(epochs: Sequence[dict], path: Path, title: str) -> Path:
    """Train and validation loss per epoch (and validation accuracy when there is one)."""
    numbers = [record["epoch"] for record in epochs]
    figure, loss_axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    loss_axis.plot(numbers, [r["train_loss"] for r in epochs], marker="o", label="train loss")
    loss_axis.plot(numbers, [r["validation_loss"] for r in epochs], marker="o", label="validation loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("loss")
    loss_axis.set_yscale("log")
    handles, labels = loss_axis.get_legend_handles_labels()
    if all(r.get("validation_accuracy") is not None for r in epochs):
        accuracy_axis = loss_axis.twinx()
        accuracy_axis.plot(numbers, [r["validation_accuracy"] for r in epochs], color="tab:green", marker="s",
                           label="validation accuracy")
        accuracy_axis.set_ylabel("accuracy")
        more_handles, more_labels = accuracy_axis.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    loss_axis.legend(handles, labels, loc="center right")
    loss_axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
