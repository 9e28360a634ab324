"""A Grafana dashboard for Harvest's metrics, for Ray's Grafana integration.

`harvest dashboard --out harvest.json` writes it; import it in Grafana (or drop it in the
folder Ray's Grafana provisioning reads) with the Prometheus data source that scrapes Ray.
Ray exports every metric of `cluster/metrics.py` with a `ray_` prefix; each panel's queries
use those names only (a test checks them against the list).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    (
        "Collection rate per collector",
        "rows/s",
        [("sum by (collector) (rate(ray_harvest_rollout_env_steps_total[1m]))", "collector {{collector}}")],
    ),
    (
        "Human / agent mix (rows inserted)",
        "rows/s",
        [
            (
                'sum by (kind) (label_replace(rate(ray_harvest_replay_inserted_rows_total[1m]), "kind", "$1", '
                '"source", "([a-z]+).*"))',
                "{{kind}}",
            )
        ],
    ),
    ("Replay fill", "percentunit", [("ray_harvest_replay_utilization", "shard {{shard}}")]),
    (
        "Replay rows and memory",
        "short",
        [("sum(ray_harvest_replay_size_rows)", "rows"), ("sum(ray_harvest_replay_memory_bytes)", "bytes")],
    ),
    (
        "Sample / insert ratio",
        "short",
        [
            (
                "sum(rate(ray_harvest_replay_sampled_rows_total[1m])) / "
                "sum(rate(ray_harvest_replay_inserted_rows_total[1m]))",
                "samples per insert",
            )
        ],
    ),
    (
        "Backpressure: collectors waiting for acks (p50, p95)",
        "s",
        [
            ("histogram_quantile(0.5, sum by (le) (rate(ray_harvest_rollout_push_wait_seconds_bucket[5m])))", "p50"),
            ("histogram_quantile(0.95, sum by (le) (rate(ray_harvest_rollout_push_wait_seconds_bucket[5m])))", "p95"),
        ],
    ),
    (
        "Learner throughput",
        "samples/s",
        [("sum by (learner) (rate(ray_harvest_learner_samples_total[1m]))", "{{learner}}")],
    ),
    ("Learner loss", "short", [("ray_harvest_learner_loss", "{{learner}}")]),
    (
        "Episode returns finished (per minute, by bucket)",
        "short",
        [("sum by (le) (increase(ray_harvest_rollout_episode_return_bucket[1m]))", "|return| <= {{le}}")],
    ),
    ("Memory held by collectors", "bytes", [("ray_harvest_rollout_local_bytes", "collector {{collector}}")]),
    ("Stream consumers' lag", "short", [("ray_harvest_replay_consumer_lag_rows", "{{consumer}}")]),
    (
        "Collectors, stalls (watchdog) and restarts",
        "short",
        [
            ("ray_harvest_collectors", "collectors wanted"),
            (
                "sum by (component, waiting_for) (ray_harvest_stalled)",
                "stalled: {{component}} waiting for {{waiting_for}}",
            ),
            ("sum by (component) (increase(ray_harvest_stalls_total[5m]))", "stalls in 5 min: {{component}}"),
            ("sum by (component) (increase(ray_harvest_actor_restarts_total[5m]))", "restarts in 5 min: {{component}}"),
        ],
    ),
    (
        "Shadow policy agreement",
        "percentunit",
        [("ray_harvest_shadow_agreement", "{{session}}"), ("ray_harvest_shadow_version", "version {{session}}")],
    ),
]


def dashboard() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model (a `datasource` variable picks the Prometheus source)."""
    panels = []
    for index, (title, unit, queries) in enumerate(PANELS):
        panels.append(
            {
                "id": index + 1,
                "title": title,
                "type": "timeseries",
                "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "targets": [
                    {
                        "refId": chr(ord("A") + i),
                        "expr": expr,
                        "legendFormat": legend,
                        "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    }
                    for i, (expr, legend) in enumerate(queries)
                ],
            }
        )
    return {
        "title": "Harvest",
        "uid": "harvest",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-30m", "to": "now"},
        "refresh": "10s",
        "tags": ["harvest", "ray"],
        "templating": {
            "list": [{"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"}]
        },
        "panels": panels,
    }


def write_dashboard(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dashboard(), indent=2))
    return path
