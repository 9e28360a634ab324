"""`harvest dagger`: the run's demonstrations and a first behaviour cloning, then DAgger's
rounds of play → label → aggregate → retrain (`learners/dagger.py`); `<run>/dagger/` holds the
rounds, `rounds.json` and `rounds.png`, and a table shows whether the corrections helped."""

from __future__ import annotations

from rich.table import Table

from harvest.cluster.config import RunConfig
from harvest.cluster.logging import console
from harvest.cluster.pipeline import RunSummary, collect_and_compact
from harvest.cluster.run_folder import RunPaths
from harvest.cluster.stages.train import train
from harvest.learners.dagger import DaggerRound, DaggerSetup, dagger_rounds


def dagger(cfg: RunConfig, run_id: str, paths: RunPaths) -> list[DaggerRound]:
    """Demonstrations, BC, then `dagger.rounds` rounds of corrections; the rounds' scores."""
    setup = DaggerSetup(
        cfg.env,
        cfg.rollout,
        cfg.replay,
        cfg.aggregation,
        cfg.watchdog,
        cfg.learner,
        cfg.dagger,
        cfg.human,
        deterministic=cfg.eval.deterministic,
        eval_workers=cfg.eval.num_workers,
        seed=cfg.run.seed,
        run_id=run_id,
    )
    collect_and_compact(cfg, run_id, paths, RunSummary(run_id, str(paths.root)))
    checkpoint = train(cfg, paths, run_id).best_checkpoint
    rounds = dagger_rounds(setup, paths.dataset, checkpoint, paths.root / "dagger")
    console.print(rounds_table(rounds))
    return rounds


def rounds_table(rounds: list[DaggerRound]) -> Table:
    table = Table(title="DAgger", title_justify="left")
    for column in ("round", "corrections", "training rows", "return mean ± std", "time"):
        table.add_column(column, justify="right")
    for r in rounds:
        table.add_row(
            "clone" if r.round == 0 else str(r.round),
            f"{r.corrections:,}",
            f"{r.training_rows:,}",
            f"{r.mean_return:.1f} ± {r.std_return:.1f}",
            f"{r.seconds:.0f} s",
        )
    return table
