"""One namespace: the repository's folders envs/, rollout/, aggregation/, learners/ and cluster/
are `harvest.envs`, `harvest.rollout`, ... and nothing else; the wheel holds `harvest` alone."""

import ast
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("envs", "rollout", "aggregation", "learners", "cluster")
BARE = re.compile(rf"^({'|'.join(SUBPACKAGES)})(\.|$)")


def python_files() -> list[Path]:
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=True)
    return [REPO / name for name in tracked.stdout.split() if not name.startswith("harvest/")]


def test_every_subpackage_is_the_repository_folder_of_its_name():
    import harvest

    for name in SUBPACKAGES:
        module = __import__(f"harvest.{name}", fromlist=["_"])
        assert Path(module.__file__).resolve() == REPO / name / "__init__.py", name
    assert Path(harvest.__file__).resolve() == REPO / "harvest" / "__init__.py"


def test_no_code_imports_harvests_packages_by_their_bare_names():
    # A bare `import envs` would load a second copy of the module (or a user's own `envs/`).
    found = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                else []
            )
            found += [f"{path.relative_to(REPO)}:{node.lineno}: {name}" for name in names if BARE.match(name)]
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and re.fullmatch(rf"({'|'.join(SUBPACKAGES)})(\.\w+)+:\w+", node.value)
            ):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: entry point {node.value!r}")
    assert not found, "\n".join(found)


def test_the_wheel_lists_every_package_under_harvest_only():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    folders = sorted(
        "harvest." + str(init.parent.relative_to(REPO)).replace("/", ".")
        for name in SUBPACKAGES
        for init in (REPO / name).rglob("__init__.py")
    )
    assert sorted(declared) == sorted(["harvest", *folders])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_built_wheel_holds_harvest_alone(tmp_path):
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = tmp_path.glob("harvest_rl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")} == {"harvest"}
    for expected in (
        "harvest/__init__.py",
        "harvest/__main__.py",
        "harvest/cluster/cli.py",
        "harvest/envs/robocode/java/HarvestBridge.java",
        "harvest/rollout/replay/shard.py",
        "harvest/examples/cartpole_bc.yaml",
        "harvest/examples/robocode_bc.yaml",
    ):
        assert expected in names, expected
    entry_points = next(name for name in names if name.endswith(".dist-info/entry_points.txt"))
    assert "harvest = harvest.cluster.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_harvest_imports_from_a_checkout_without_installation(tmp_path):
    # What `ray job submit --working-dir .` relies on: the repo root on sys.path is enough.
    code = "import harvest.cluster.cli, harvest.cluster.pipeline, harvest.learners.bc; print('ok')"
    result = subprocess.run(
        [sys.executable, "-S", "-c", f"import sys; sys.path[:0] = {[str(REPO)]!r}; import site; site.main(); " + code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.strip() == "ok", result.stderr


def test_a_users_folders_named_like_harvests_subpackages_shadow_nothing(tmp_path):
    # A script beside a user's own `envs/` (common in RL projects) uses Harvest's envs and sees
    # harvest/Robocode-v0 registered; `python -m harvest` from there parses its config.
    for package in SUBPACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text(f"raise ImportError('the user\\'s own {package}')\n")
    script = (
        "import gymnasium as gym\nimport harvest.envs.spaces, harvest.envs.robocode, harvest.cluster.config\n"
        "assert 'harvest/Robocode-v0' in gym.registry\nprint('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr[-3000:]
    config = subprocess.run(
        [sys.executable, "-m", "harvest", "config", "--set", "env.num_envs=3"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert config.returncode == 0 and "num_envs: 3" in config.stdout, config.stderr[-3000:]


def test_harvest_has_a_version():
    import harvest

    assert re.fullmatch(r"\d+\.\d+\.\d+.*", harvest.__version__), harvest.__version__
    result = subprocess.run([sys.executable, "-m", "harvest", "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.split() == ["harvest", harvest.__version__], result
