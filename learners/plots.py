"""Training curves as PNG (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_training_curve(
    epochs: Sequence[dict],
    path: Path,
    title: str,
    x_label: str = "epoch",
    labels: tuple[str, str] = ("train loss", "validation loss"),
    extra: tuple[str, Sequence[float | None]] | None = None,
) -> Path:
    """Two losses per epoch (or update), log scale, and on a second axis validation accuracy
    when every record has one, or `extra` = (label, values) (None values are skipped)."""
    numbers = [record["epoch"] for record in epochs]
    figure, loss_axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    loss_axis.plot(numbers, [r["train_loss"] for r in epochs], marker="o", label=labels[0])
    validated = all(r.get("validation_loss") is not None for r in epochs)  # the shadow learner has no split
    if validated:
        loss_axis.plot(numbers, [r["validation_loss"] for r in epochs], marker="o", label=labels[1])
    loss_axis.set_xlabel(x_label)
    loss_axis.set_ylabel("loss")
    if all(r["train_loss"] > 0 and (not validated or r["validation_loss"] > 0) for r in epochs):
        loss_axis.set_yscale("log")
    handles, labels_ = loss_axis.get_legend_handles_labels()
    if extra is None and all(r.get("validation_accuracy") is not None for r in epochs):
        extra = ("validation accuracy", [r["validation_accuracy"] for r in epochs])
    if extra is not None and any(value is not None for value in extra[1]):
        points = [(x, value) for x, value in zip(numbers, extra[1]) if value is not None]
        second = loss_axis.twinx()
        second.plot([x for x, _ in points], [v for _, v in points], color="tab:green", marker="s", label=extra[0])
        second.set_ylabel(extra[0])
        more_handles, more_labels = second.get_legend_handles_labels()
        handles, labels_ = handles + more_handles, labels_ + more_labels
    loss_axis.legend(handles, labels_, loc="center right")
    loss_axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def plot_shadow_session(path: Path, rounds: Sequence[dict], agreement: Sequence[dict], title: str) -> Path:
    """Shadow training beside a session: the agreement with the person over the session's
    frames (with the shadow's weights version) above the training loss of each round."""
    figure, (agree_axis, loss_axis) = plt.subplots(2, 1, figsize=(7, 5), dpi=100)
    frames = [point["frame"] for point in agreement]
    agree_axis.plot(frames, [point["agreement"] for point in agreement], color="tab:green", label="agreement")
    agree_axis.set_ylabel("agreement")
    agree_axis.set_xlabel("frame")
    version_axis = agree_axis.twinx()
    version_axis.step(
        frames, [point["version"] for point in agreement], where="post", color="tab:gray", label="weights version"
    )
    version_axis.set_ylabel("version")
    agree_axis.set_title(title)
    if rounds:
        loss_axis.plot([r["version"] for r in rounds], [r["loss"] for r in rounds], marker="o", label="BC loss")
    loss_axis.set_xlabel("weights version")
    loss_axis.set_ylabel("training loss")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def plot_rounds(path: Path, rounds: Sequence[tuple[int, float, float]], title: str) -> Path:
    """Evaluation return (mean ± std) after each round (0: before any, e.g. the first BC)."""
    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    numbers = [r[0] for r in rounds]
    axis.errorbar(numbers, [r[1] for r in rounds], yerr=[r[2] for r in rounds], marker="o", capsize=4)
    axis.set_xticks(numbers, ["BC" if n == 0 else str(n) for n in numbers])
    axis.set_xlabel("round")
    axis.set_ylabel("evaluation return")
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
