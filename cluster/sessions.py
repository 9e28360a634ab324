"""After a person's session: its episodes' quality table and the ones to leave out, and the
shadow learner stopped, its checkpoint written and its agreement plotted."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import ray
from loguru import logger
from rich.table import Table

from harvest.cluster.config import RunConfig
from harvest.cluster.logging import console
from harvest.learners.plots import plot_shadow_session
from harvest.rollout.human.collector import HumanSessionResult


def review_sessions(cfg: RunConfig, sessions: list[dict[str, Any]]) -> list[int]:
    """Show each session's quality checks per episode; the episode ids to leave out of the
    dataset (`human.discard`)."""
    discarded: list[int] = []
    for session in sessions:
        episodes = session["episodes"]
        console.print(quality_table(session))
        flagged = [e["episode_id"] for e in episodes if e["quality"]["errors"]]
        if cfg.human.discard == "errors":
            discarded += flagged
        elif cfg.human.discard == "ask":
            if not sys.stdin.isatty():
                logger.info(
                    "not at a terminal: every episode of {} is kept ({} with errors); human.discard: errors "
                    "leaves those out",
                    session["session_id"],
                    len(flagged),
                )
                continue
            answer = console.input("Episodes to discard (numbers, comma separated; Enter keeps all): ")
            by_number = {e["number"]: e["episode_id"] for e in episodes}
            chosen = [int(part) for part in answer.replace(" ", "").split(",") if part.isdigit()]
            unknown = [number for number in chosen if number not in by_number]
            if unknown:
                logger.warning("no episodes numbered {} in this session; ignored", unknown)
            discarded += [by_number[number] for number in chosen if number in by_number]
    if discarded:
        logger.info("discarding {} episode(s) from the dataset (the replay keeps them): {}", len(discarded), discarded)
    return discarded


def quality_table(session: dict[str, Any]) -> Table:
    """A session's episodes with the seed 002 quality checks' findings."""
    table = Table(title=f"Session {session['session_id']} ({session['operator']}): quality", title_justify="left")
    for column in ("episode", "frames", "return", "ended", "findings"):
        table.add_column(column, justify="left" if column == "findings" else "right")
    for episode in session["episodes"]:
        findings = episode["quality"]["findings"]
        text = (
            "; ".join(
                f"[{'red' if f['severity'] == 'error' else 'yellow'}]{f['check']}[/]: {f['message']}" for f in findings
            )
            or "[green]clean[/]"
        )
        table.add_row(
            str(episode["number"]), f"{episode['length']:,}", f"{episode['return']:.1f}", episode["ended"], text
        )
    return table


def stopped_shadow(shadow: ray.actor.ActorHandle, played: HumanSessionResult | None, run_root: Path) -> dict:
    """Stop the shadow learner (its checkpoint and history are written) and plot its session."""
    result = ray.get(shadow.stop.remote(), timeout=900)
    if played is not None:
        result["agreement_plot"] = str(
            plot_shadow_session(
                run_root / "shadow" / "agreement.png",
                result["rounds"],
                played.shadow_agreement,
                f"shadow policy beside {played.operator} ({played.session_id})",
            )
        )
        agreement = [point["agreement"] for point in played.shadow_agreement]
        logger.info(
            "shadow: {} versions; agreement with {} from {:.2f} to {:.2f}; plot {}",
            result["versions"],
            played.operator,
            agreement[0] if agreement else float("nan"),
            agreement[-1] if agreement else float("nan"),
            result["agreement_plot"],
        )
    return result
