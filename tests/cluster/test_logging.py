"""Long dataset commands show a bar with a rate (compact's is checked with the staged run in
tests/cluster/test_cli.py): on a terminal it moves; elsewhere its last state is printed once."""

import re
from pathlib import Path

import pytest

from harvest.aggregation.compact import write_dataset
from harvest.aggregation.config import AggregationConfig
from harvest.cluster.cli import main
from harvest.cluster.logging import progress_bar, track
from tests.aggregation.test_dataset import episodes_batch

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bars") / "d"
    schema, batch = episodes_batch([30, 5, 70, 12, 40, 7], seed=2)
    write_dataset([batch], schema, folder, AggregationConfig(formats=["parquet"], rows_per_file=25), "t", "x")
    return folder


@pytest.mark.parametrize(
    "command, bar",
    [
        ("inspect {d} --json {tmp}/r.json", "inspect .* 164/164 [\\d,]+ rows/s"),
        ("export {d} --to offline-rl --out {tmp}/x.npz", "export .* 164/164 [\\d,]+ rows/s"),
        ("export {d} --to offline-rl --out {tmp}/x.hdf5", "export .* 164/164 [\\d,]+ rows/s"),
        ("export {d} --to teacher-student --out {tmp}/x.safetensors", "export .* 164/164 [\\d,]+ rows/s"),
        ("edit filter {d} --out {tmp}/f --min-length 10", "filter .* 164/164 [\\d,]+ rows/s"),
        ("edit split {d} --out {tmp}/s --fractions train=0.5,test=0.5", "split .* 164/164 [\\d,]+ rows/s"),
        ("import parquet {data}/parquet --out {tmp}/i", "import .* 5/5 [\\d,]+ files/s"),
        ("import offline-rl {data}/offline --out {tmp}/o", "import .* \\d+/\\d+ [\\d,]+ files/s"),
    ],
)
def test_dataset_commands_show_a_bar_with_a_rate(dataset, tmp_path, capsys, command, bar):
    argv = command.format(d=dataset, tmp=tmp_path, data=DATA).split()
    assert main(argv) in (0, 1)  # (1: quality flags or files left out; the bar is shown either way)
    err = capsys.readouterr().err
    assert re.search(bar, err), err[-2000:]


def test_a_bar_inside_another_still_gives_every_item(capsys):
    """(rich >= 14 nests live displays; before, a second one raises LiveError: then no inner bar)"""
    with progress_bar("rows") as outer:
        outer.add_task("outer", total=3)
        assert list(track(range(3), "inner", "rows")) == [0, 1, 2]
    assert list(track(iter([1, 2]), "alone", "rows")) == [1, 2]
    assert "alone" in capsys.readouterr().err
