"""After a person's session: its episodes' quality table and the ones to leave out."""

from __future__ import annotations

import sys
from typing import Any

from loguru import logger
from rich.table import Table

from harvest.cluster.config import RunConfig
from harvest.cluster.logging import console


def review_sessions(cfg: RunConfig, sessions: list[dict[str, Any]]) -> list[int]:
    """Show each session's quality checks per episode; the episode ids to leave out of the
    dataset (`human.discard`)."""
    discarded: list[int] = []
    for session in sessions:
        episodes = session["episodes"]
        console.print(quality_table(session))
        flagged = [e["episode_id"] for e in episodes if e["quality"]["errors"]]
        assert cfg.human is not None  # sessions are played only under a `human:` section
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
