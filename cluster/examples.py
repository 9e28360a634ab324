"""The example configs (`examples/*.yaml` of the repository), installed with Harvest as package
data (`harvest/examples/`), so `harvest example NAME > my.yaml` works from a wheel too."""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable


class UnknownExampleError(ValueError):
    """No example config of that name (the message lists the ones there are)."""


def _folder() -> Traversable:
    return resources.files("harvest") / "examples"


def example_names() -> list[str]:
    """The examples' names (file names without `.yaml`), sorted."""
    return sorted(entry.name.removesuffix(".yaml") for entry in _folder().iterdir() if entry.name.endswith(".yaml"))


def example_text(name: str) -> str:
    """The YAML of the example `name` (`cartpole_bc` or `cartpole_bc.yaml`).

    Raises:
        UnknownExampleError: naming the examples there are.
    """
    stem = name.removesuffix(".yaml").removeprefix("examples/")
    if stem not in example_names():
        raise UnknownExampleError(f"no example {name!r}; the examples are: {', '.join(example_names())}")
    return (_folder() / f"{stem}.yaml").read_text()


def example_summary(name: str) -> str:
    """What the example does: the first sentence of its leading comment."""
    comment = []
    for line in example_text(name).splitlines():
        if not line.startswith("#"):
            break
        comment.append(line.lstrip("# ").strip())
    text = " ".join(comment).split(". ")[0].split(" Run it with")[0].rstrip(".")
    return text if len(text) <= 100 else text[:99].rsplit(" ", 1)[0] + " …"
