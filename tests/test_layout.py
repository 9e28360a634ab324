import importlib
from pathlib import Path


def test_top_level_packages_come_from_this_repo():
    # `envs` and `cluster` are also PyPI names; one installed beside Harvest would shadow ours.
    repo = Path(__file__).resolve().parents[1]
    for name in ("envs", "rollout", "aggregation", "learners", "cluster"):
        assert Path(importlib.import_module(name).__file__).is_relative_to(repo), name


def test_packages_import_without_installation(tmp_path):
    # What `ray job submit --working-dir .` relies on: the repo root on sys.path is enough.
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    code = "import envs, rollout, aggregation, learners, cluster.cli, cluster.pipeline; print('ok')"
    result = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path[:0] = {[str(repo)]!r}; "
                             "import site; site.main(); " + code],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr
