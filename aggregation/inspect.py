"""`harvest inspect`: what is in a dataset, and what is wrong with it.

One streaming pass over the episodes gathers the overview (rows, episodes, sources,
collectors, time span), per-column statistics (mean, std, min, max), action histograms,
episode length and return distributions, and runs the checks:

| check | severity | what |
| --- | --- | --- |
| `nan_inf` | error | NaN or Inf in a float column |
| `action_space` | error | an action outside the action space |
| `step_gap` | error | steps of an episode not 0, 1, 2, ... |
| `next_obs` | error | `next_obs` of a step is not the next step's `obs` |
| `missing_file` | error | a path column (`*_path`, `screenshot`) names a file that is not there |
| `timestamp_gap` | warning | consecutive steps further apart than `gap_factor` × the median step time |
| `stuck_action` | warning | the same action for `stuck_steps` steps or more |
| `jerky_action` | warning | continuous actions jumping by more than `jerk_fraction` of their range between steps |
| `short_episode` | warning | episodes shorter than `min_episode_length` |
| `integrity` | error | files of another size or sha256 than the manifest says, unreadable, missing, listed twice |

Open the dataset with `Dataset.open(where, skip_damaged=True)` so that damaged files are left
out and every one of them is named here, while the rest of the report covers the good files
(`verify=False` skips sizes and hashes; the structural checks stay).

The report prints as terminal tables and is written as HTML with PNG plots; errors make the
command exit non-zero, so it can gate a pipeline.
"""

from __future__ import annotations

import html
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import gymnasium as gym
import numpy as np

from harvest.aggregation.dataset import Dataset
from harvest.cluster.logging import column_rows, track

PATH_SUFFIXES = ("_path", "screenshot", "image_file")


@dataclass(frozen=True)
class Thresholds:
    min_episode_length: int = 2
    stuck_steps: int = 200
    jerk_fraction: float = 0.5
    gap_factor: float = 5.0
    examples: int = 5


@dataclass
class Finding:
    check: str
    severity: str
    message: str
    count: int = 0
    examples: list[str] = field(default_factory=list)


class _Running:
    """Count, mean, variance (Welford's merge), min and max of a column's values."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0
        self.low, self.high = np.inf, -np.inf

    def add(self, values: np.ndarray) -> None:
        values = (
            values[np.isfinite(values)].astype(np.float64) if values.dtype.kind == "f" else values.astype(np.float64)
        )
        if values.size == 0:
            return
        n, mean = values.size, float(values.mean())
        delta = mean - self.mean
        total = self.n + n
        self.m2 += float(((values - mean) ** 2).sum()) + delta * delta * self.n * n / total
        self.mean += delta * n / total
        self.n = total
        self.low, self.high = min(self.low, float(values.min())), max(self.high, float(values.max()))

    def result(self) -> dict[str, float | int | None]:
        if self.n == 0:
            return {"count": 0, "mean": None, "std": None, "min": None, "max": None}
        return {"count": self.n, "mean": self.mean, "std": (self.m2 / self.n) ** 0.5, "min": self.low, "max": self.high}


@dataclass
class Report:
    dataset: str
    overview: dict[str, Any]
    columns: dict[str, dict[str, Any]]
    actions: dict[str, Any]
    episode_lengths: list[int]
    episode_returns: list[float]
    findings: list[Finding]

    @property
    def errors(self) -> int:
        return sum(1 for f in self.findings if f.severity == "error")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "errors": self.errors}


class _Checks:
    def __init__(self, thresholds: Thresholds) -> None:
        self.t = thresholds
        self.found: dict[str, Finding] = {}

    def flag(self, check: str, severity: str, message: str, count: int, example: str) -> None:
        finding = self.found.setdefault(check, Finding(check, severity, message))
        finding.count += count
        if len(finding.examples) < self.t.examples:
            finding.examples.append(example)


def _action_bounds(space: gym.Space) -> tuple[np.ndarray, np.ndarray] | None:
    if isinstance(space, gym.spaces.Discrete):
        return np.array(space.start), np.array(space.start + space.n - 1)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return space.start, space.start + space.nvec - 1
    if isinstance(space, gym.spaces.Box):
        return space.low, space.high
    if isinstance(space, gym.spaces.MultiBinary):
        return np.zeros(space.shape), np.ones(space.shape)
    return None


def inspect_dataset(dataset: Dataset, thresholds: Thresholds = Thresholds()) -> Report:
    schema, t = dataset.schema, thresholds
    checks = _Checks(t)
    floats = [n for n, c in schema.columns.items() if np.dtype(c.dtype).kind == "f"]
    numeric = [n for n, c in schema.columns.items() if np.dtype(c.dtype).kind in "fiub" and n != "episode_id"]
    paths = [n for n, c in schema.columns.items() if np.dtype(c.dtype).kind in "USO" and n.endswith(PATH_SUFFIXES)]
    stats = {name: _Running() for name in numeric}
    space = schema.action_space
    bounds = _action_bounds(space)
    discrete = isinstance(space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary))
    action_counts: dict[int, int] = {}
    box_values: list[np.ndarray] = []
    lengths: list[int] = []
    returns: list[float] = []
    sources: dict[str, int] = {}
    collectors: set[int] = set()
    first_time, last_time = None, None
    obs_names = [n for n in schema.obs_columns if "next_" + n in schema.columns]
    for episode in track(dataset.iter_episodes(), "inspect", "rows", sum(e.rows for e in dataset.entries), column_rows):
        episode_id, length = int(episode["episode_id"][0]), int(episode["episode_id"].size)
        where = f"episode {episode_id}"
        lengths.append(length)
        returns.append(float(np.nansum(episode["reward"])))
        for name in numeric:
            stats[name].add(np.asarray(episode[name]).reshape(-1))
        collectors.add(int(episode["collector_id"][0]))
        if "source" in episode:
            for value in np.unique(episode["source"]):
                sources[str(value)] = sources.get(str(value), 0) + int((episode["source"] == value).sum())
        for name in floats:
            bad = ~np.isfinite(episode[name].reshape(length, -1)).all(axis=1)
            if bad.any():
                checks.flag(
                    "nan_inf",
                    "error",
                    "NaN or Inf values",
                    int(bad.sum()),
                    f"{name}, {where}, step {int(episode['step'][np.argmax(bad)])}",
                )
        action = np.asarray(episode["action"])
        if bounds is not None:
            flat = action.reshape(length, -1).astype(np.float64)
            low, high = (np.broadcast_to(b, action.shape[1:]).reshape(-1) for b in bounds)
            tolerance = 1e-6 * np.maximum(1.0, np.abs(np.where(np.isfinite(high), high, 0)))
            outside = ((flat < low - tolerance) | (flat > high + tolerance)).any(axis=1)
            if outside.any():
                checks.flag(
                    "action_space",
                    "error",
                    f"actions outside {space}",
                    int(outside.sum()),
                    f"{where}, step {int(episode['step'][np.argmax(outside)])}: {action[np.argmax(outside)]}",
                )
        if isinstance(space, gym.spaces.Discrete):
            for value, count in zip(*np.unique(action, return_counts=True)):
                action_counts[int(value)] = action_counts.get(int(value), 0) + int(count)
        elif isinstance(space, gym.spaces.Box) and len(box_values) < 200_000:
            box_values.append(action.reshape(length, -1)[:10_000])
        steps = episode["step"]
        if not np.array_equal(steps, np.arange(steps[0], steps[0] + length)) or steps[0] != 0:
            wrong = int(np.argmax(np.r_[steps[0] != 0, np.diff(steps) != 1]))
            checks.flag(
                "step_gap",
                "error",
                "steps of an episode are not 0, 1, 2, ...",
                1,
                f"{where}: step {int(steps[wrong - 1]) if wrong else '-'} then {int(steps[wrong])}",
            )
        for name in obs_names:
            current, following = episode["next_" + name][:-1], episode[name][1:]
            if length > 1 and not np.array_equal(current, following):
                mismatch = ~(current.reshape(length - 1, -1) == following.reshape(length - 1, -1)).all(axis=1)
                checks.flag(
                    "next_obs",
                    "error",
                    "next_obs differs from the next step's obs",
                    int(mismatch.sum()),
                    f"{name}, {where}, step {int(steps[np.argmax(mismatch)])}",
                )
        times = episode["timestamp"].astype("datetime64[ns]").astype(np.int64)
        first_time = times.min() if first_time is None else min(first_time, times.min())
        last_time = times.max() if last_time is None else max(last_time, times.max())
        if length > 2:
            deltas = np.diff(times)
            median = float(np.median(deltas))
            gaps = deltas > t.gap_factor * median if median > 0 else np.zeros(deltas.size, bool)
            if gaps.any():
                at = int(np.argmax(gaps))
                checks.flag(
                    "timestamp_gap",
                    "warning",
                    f"steps more than {t.gap_factor:g}x the median step time apart",
                    int(gaps.sum()),
                    f"{where}: {deltas[at] / 1e9:.3f} s before step {int(steps[at + 1])} (median {median / 1e9:.3f} s)",
                )
        flat_actions = action.reshape(length, -1)
        if length >= t.stuck_steps:
            changes = np.r_[True, (flat_actions[1:] != flat_actions[:-1]).any(axis=1)]
            run_starts = np.flatnonzero(changes)
            runs = np.diff(np.r_[run_starts, length])
            if (runs >= t.stuck_steps).any():
                longest = int(np.argmax(runs))
                checks.flag(
                    "stuck_action",
                    "warning",
                    f"the same action for {t.stuck_steps}+ steps",
                    int((runs >= t.stuck_steps).sum()),
                    f"{where}: {int(runs[longest])} steps of {action[run_starts[longest]]} from step "
                    f"{int(steps[run_starts[longest]])}",
                )
        if isinstance(space, gym.spaces.Box) and length > 1:
            span = np.where(np.isfinite(space.high - space.low), space.high - space.low, np.nan).reshape(-1)
            jumps = np.abs(np.diff(flat_actions.astype(np.float64), axis=0)) / span
            jerky = (np.nan_to_num(jumps) > t.jerk_fraction).any(axis=1)
            if jerky.any():
                checks.flag(
                    "jerky_action",
                    "warning",
                    f"continuous actions jumping by more than {t.jerk_fraction:.0%} of their range in one step",
                    int(jerky.sum()),
                    f"{where}, step {int(steps[np.argmax(jerky) + 1])}",
                )
        if length < t.min_episode_length:
            checks.flag(
                "short_episode",
                "warning",
                f"episodes shorter than {t.min_episode_length} steps",
                1,
                f"{where}: {length} steps",
            )
        for name in paths:
            for value in np.unique(episode[name]):
                if value and not dataset.folder.join(str(value)).exists():
                    checks.flag(
                        "missing_file",
                        "error",
                        "files named in the dataset are missing",
                        1,
                        f"{name}: {value} ({where})",
                    )
    actions: dict[str, Any] = {"space": str(space)}
    if isinstance(space, gym.spaces.Discrete):
        actions["histogram"] = {str(k): v for k, v in sorted(action_counts.items())}
    elif box_values:
        values = np.concatenate(box_values)
        actions["histogram"] = {
            f"dim {d}": np.histogram(values[:, d], bins=20)[0].tolist() for d in range(values.shape[1])
        }
        actions["edges"] = {f"dim {d}": np.histogram(values[:, d], bins=20)[1].tolist() for d in range(values.shape[1])}
    manifest = dataset.manifest
    overview = {
        "env_id": manifest.env_id,
        "run_id": manifest.run_id,
        "rows": int(sum(lengths)),
        "episodes": len(lengths),
        "files": len(manifest.files),
        "bytes": sum(entry.bytes for entry in manifest.files),
        "collectors": sorted(collectors),
        "sources": sources,
        "discrete_actions": discrete,
        "first_timestamp": None if first_time is None else str(np.datetime64(int(first_time), "ns")),
        "last_timestamp": None if last_time is None else str(np.datetime64(int(last_time), "ns")),
        "duration_s": None if first_time is None else (last_time - first_time) / 1e9,
        "episode_length": _percentiles(lengths),
        "episode_return": _percentiles(returns),
    }
    if dataset.problems:  # every one named, not a sample: each is a file to look at
        checks.found["integrity"] = Finding(
            "integrity",
            "error",
            "files that differ from the manifest or cannot be read (left out of this report)",
            len(dataset.problems),
            list(dataset.problems),
        )
    elif manifest.rows != overview["rows"]:
        checks.flag(
            "manifest_rows",
            "error",
            "the manifest's row count differs from the rows in the files",
            1,
            f"manifest {manifest.rows}, files {overview['rows']}",
        )
    order = {"error": 0, "warning": 1, "info": 2}
    findings = sorted(checks.found.values(), key=lambda f: (order[f.severity], f.check))
    return Report(
        str(dataset.folder),
        overview,
        {name: s.result() for name, s in stats.items()},
        actions,
        lengths,
        returns,
        findings,
    )


def _percentiles(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    array = np.asarray(values, np.float64)
    return {
        "mean": float(array.mean()),
        "std": float(array.std()),
        "min": float(array.min()),
        "p50": float(np.median(array)),
        "p90": float(np.percentile(array, 90)),
        "max": float(array.max()),
    }


def print_report(report: Report) -> None:
    """Readable terminal tables (rich)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(stderr=True)
    overview = Table(title=f"Dataset {report.dataset}", title_justify="left", show_header=False)
    o = report.overview
    for key, value in (
        ("env", o["env_id"]),
        ("rows", f"{o['rows']:,}"),
        ("episodes", f"{o['episodes']:,}"),
        ("files", f"{o['files']} ({o['bytes'] / 1e6:.1f} MB)"),
        ("collectors", o["collectors"]),
        ("sources", o["sources"] or "-"),
        ("time", f"{o['first_timestamp']} .. {o['last_timestamp']}"),
        ("episode length", _fmt(o["episode_length"])),
        ("episode return", _fmt(o["episode_return"])),
    ):
        overview.add_row(key, str(value))
    console.print(overview)
    columns = Table(title="Columns", title_justify="left")
    for header in ("column", "mean", "std", "min", "max"):
        columns.add_column(header, justify="left" if header == "column" else "right")
    for name, s in report.columns.items():
        columns.add_row(name, *(f"{s[k]:.4g}" if s[k] is not None else "-" for k in ("mean", "std", "min", "max")))
    console.print(columns)
    checks = Table(title="Checks", title_justify="left")
    for header in ("severity", "check", "count", "what", "e.g."):
        checks.add_column(header)
    for f in report.findings:
        style = "red" if f.severity == "error" else "yellow"
        checks.add_row(f"[{style}]{f.severity}[/]", f.check, str(f.count), f.message, "; ".join(f.examples[:2]))
    if not report.findings:
        checks.add_row("[green]ok[/]", "all", "0", "no problems found", "")
    console.print(checks)
    for finding in report.findings:
        if finding.check == "integrity":
            for problem in finding.examples:
                console.print(Text.assemble(("integrity ", "red"), problem), soft_wrap=True)


def _fmt(stats: dict[str, float] | None) -> str:
    if not stats:
        return "-"
    return (
        f"mean {stats['mean']:.3g} ± {stats['std']:.3g}, min {stats['min']:.3g}, median {stats['p50']:.3g}, "
        f"max {stats['max']:.3g}"
    )


def write_html(report: Report, folder: str | Path) -> Path:
    """`folder/index.html` with PNG plots beside it (episode lengths, returns, actions)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plots = []

    def save(name: str, title: str, draw) -> None:
        figure, axes = plt.subplots(figsize=(6, 3.5))
        draw(axes)
        axes.set_title(title)
        figure.tight_layout()
        figure.savefig(folder / name, dpi=90)
        plt.close(figure)
        plots.append((name, title))

    if report.episode_lengths:
        save(
            "episode_lengths.png",
            "Episode length",
            lambda ax: (ax.hist(report.episode_lengths, bins=30), ax.set_xlabel("steps"), ax.set_ylabel("episodes")),
        )
        save(
            "episode_returns.png",
            "Episode return",
            lambda ax: (ax.hist(report.episode_returns, bins=30), ax.set_xlabel("return"), ax.set_ylabel("episodes")),
        )
    histogram = report.actions.get("histogram")
    if histogram and "edges" not in report.actions:
        save(
            "actions.png",
            "Actions",
            lambda ax: (
                ax.bar(list(histogram), list(histogram.values())),
                ax.set_xlabel("action"),
                ax.set_ylabel("rows"),
            ),
        )
    elif histogram:

        def draw(ax):
            for dim, counts in histogram.items():
                edges = np.asarray(report.actions["edges"][dim])
                ax.stairs(counts, edges, label=dim)
            ax.legend(fontsize=7)
            ax.set_xlabel("action value")

        save("actions.png", "Actions (per dimension)", draw)
    e = html.escape
    rows = "".join(
        f"<tr><td class='{e(f.severity)}'>{e(f.severity)}</td><td>{e(f.check)}</td><td>{f.count}</td>"
        f"<td>{e(f.message)}</td><td>{e('; '.join(f.examples))}</td></tr>"
        for f in report.findings
    )
    columns = "".join(
        f"<tr><td>{e(name)}</td>"
        + "".join(f"<td>{s[k]:.4g}</td>" if s[k] is not None else "<td>-</td>" for k in ("mean", "std", "min", "max"))
        + "</tr>"
        for name, s in report.columns.items()
    )
    overview = "".join(f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in report.overview.items())
    images = "".join(
        f"<figure><img src='{e(name)}' alt='{e(title)}'><figcaption>{e(title)}</figcaption></figure>"
        for name, title in plots
    )
    status = f"<p class='error'>{report.errors} error(s)</p>" if report.errors else "<p class='ok'>no errors</p>"
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Harvest dataset report: {e(report.dataset)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}.error{{color:#b00}}.warning{{color:#a60}}
.ok{{color:#070}}figure{{display:inline-block;margin:.5em}}</style></head><body>
<h1>Dataset report</h1><p>{e(report.dataset)}</p>{status}
<h2>Overview</h2><table>{overview}</table>
<h2>Checks</h2><table><tr><th>severity</th><th>check</th><th>count</th><th>what</th><th>examples</th></tr>{rows}</table>
<h2>Plots</h2>{images}
<h2>Columns</h2><table><tr><th>column</th><th>mean</th><th>std</th><th>min</th><th>max</th></tr>{columns}</table>
</body></html>
"""
    path = folder / "index.html"
    path.write_text(page)
    return path
