"""Integrity on read: every reader checks a dataset's files against the manifest's sizes and
sha256, refuses paths outside the folder and files listed twice, and names each damaged file in
one line; a failed write leaves nothing behind, and a dataset is never written over another.

The damaged datasets are made here from good ones (derived binary inputs): a byte
appended, rewards rewritten with pyarrow, a faked hash, a truncated file, a file listed twice,
a path outside the folder."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harvest.aggregation.compact import DatasetExistsError, compact_replay, write_dataset
from harvest.aggregation.config import AggregationConfig
from harvest.aggregation.dataset import Dataset, DatasetError, DatasetIntegrityError
from harvest.aggregation.edit import filter_dataset
from harvest.aggregation.export import export_offline_rl
from harvest.aggregation.inspect import inspect_dataset
from harvest.aggregation.storage import TMP_MARK, location, staged_folder
from harvest.aggregation.windows import count_windows, windows
from harvest.rollout.episode_filter import EpisodeFilter
from tests.aggregation.test_dataset import bucket, episodes_batch, object_names, s3_endpoint  # noqa: F401 (fixtures)

LENGTHS = [20, 20, 20, 20, 20, 20]


def make_dataset(folder: Path) -> Dataset:
    """Six episodes of 20 rows, two per file: three files."""
    schema, batch = episodes_batch(LENGTHS)
    batch.columns["action"] = batch["action"] % 4  # in Discrete(4), for the learner
    write_dataset([batch], schema, folder, AggregationConfig(formats=["parquet"], rows_per_file=40), "integrity", "x")
    dataset = Dataset.open(folder)
    assert len(dataset.files) == 3
    return dataset


def edit_manifest(folder: Path, change) -> None:
    manifest = json.loads((folder / "_manifest.json").read_text())
    change(manifest)
    (folder / "_manifest.json").write_text(json.dumps(manifest))


def file_path(folder: Path, index: int) -> Path:
    return folder / json.loads((folder / "_manifest.json").read_text())["files"][index]["path"]


def append_byte(folder: Path, index: int) -> None:
    with file_path(folder, index).open("ab") as handle:
        handle.write(b"\0")


def truncate(folder: Path, index: int) -> None:
    path = file_path(folder, index)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def rewrite_rewards(folder: Path, index: int, keep_size: bool = False) -> None:
    """Rows rewritten with pyarrow, rewards x100; with `keep_size`, the manifest's size is
    mended too, so that only the hash can tell."""
    path = file_path(folder, index)
    table = pq.read_table(path)
    index_of_reward = table.schema.get_field_index("reward")
    table = table.set_column(
        index_of_reward,
        table.schema.field(index_of_reward),  # same field, not null
        pa.compute.multiply(table["reward"], pa.scalar(100, table["reward"].type)),
    )
    pq.write_table(table, path, compression="zstd")
    if keep_size:
        edit_manifest(folder, lambda m: m["files"][index].update(bytes=path.stat().st_size))


def fake_hash(folder: Path, index: int) -> None:
    edit_manifest(folder, lambda m: m["files"][index].update(sha256="0" * 64))


def list_twice(folder: Path, index: int) -> None:
    edit_manifest(folder, lambda m: m["files"].append(dict(m["files"][index])))


def path_outside(folder: Path, index: int) -> None:
    (folder.parent / "other").mkdir(exist_ok=True)
    shutil.copy(file_path(folder, index), folder.parent / "other" / "x.parquet")
    edit_manifest(folder, lambda m: m["files"][index].update(path="../other/x.parquet"))


def absolute_path(folder: Path, index: int) -> None:
    edit_manifest(folder, lambda m: m["files"][index].update(path=str(file_path(folder, index))))


# damage, what the one line says, whether `Dataset.open` already sees it (else the first read does)
DAMAGES = {
    "a byte appended": (append_byte, r"[\d,]+ bytes, the manifest says [\d,]+", True),
    "truncated": (truncate, r"[\d,]+ bytes, the manifest says [\d,]+", True),
    "rewards x100 rewritten with pyarrow": (
        rewrite_rewards,
        r"([\d,]+ bytes|sha256 [0-9a-f]{64}), the manifest says",
        True,
    ),
    "rewritten, the size mended": (
        lambda f, i: rewrite_rewards(f, i, keep_size=True),
        r"sha256 [0-9a-f]{64}, the manifest says [0-9a-f]{64}",
        False,
    ),
    "a faked hash": (fake_hash, r"sha256 [0-9a-f]{64}, the manifest says 0{64}", False),
    "listed twice": (list_twice, r"listed twice in _manifest.json \(files 1 and 3\)", True),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_each_damage_is_one_line_naming_the_file_and_what_differs(tmp_path, damage):
    make_dataset(tmp_path / "d")
    named = str(file_path(tmp_path / "d", 1))
    tamper, says, at_open = DAMAGES[damage]
    tamper(tmp_path / "d", 1)
    with pytest.raises(DatasetIntegrityError) as raised:
        Dataset.open(tmp_path / "d").read_columns(["reward"])
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"{named}: "), message
    assert raised.match(says)
    if not at_open:
        Dataset.open(tmp_path / "d")  # found by the read, not before


@pytest.mark.parametrize("tamper", [path_outside, absolute_path])
def test_paths_outside_the_dataset_folder_are_refused_even_without_verification(tmp_path, tamper):
    make_dataset(tmp_path / "d")
    tamper(tmp_path / "d", 0)
    for verify in (True, False):
        with pytest.raises(
            DatasetIntegrityError,
            match=r"_manifest.json: file 0 has the path .*outside the dataset "
            r"folder",
        ):
            Dataset.open(tmp_path / "d", verify=verify)
    list_twice(tmp_path / "d", 1)
    with pytest.raises(DatasetIntegrityError, match="listed twice"):
        Dataset.open(tmp_path / "d", verify=False)


def read_with(reader: str, dataset: Dataset, tmp_path: Path) -> None:
    if reader == "iter_batches":
        list(dataset.iter_batches())
    elif reader == "read_columns":
        dataset.read_columns(["obs", "action"])
    elif reader == "read_columns max_rows":
        dataset.read_columns(["episode_id"], max_rows=50)
    elif reader == "to_pyarrow":
        dataset.to_pyarrow().to_table(columns=["reward"])
    elif reader == "export":
        export_offline_rl(dataset, tmp_path / "out.npz")
    elif reader == "edit filter":
        filter_dataset(dataset, tmp_path / "filtered", EpisodeFilter(min_length=1))
    elif reader == "count windows":
        count_windows(dataset, history=4)
    elif reader == "windows (Ray Data)":
        windows(dataset, history=4).count()
    elif reader == "to_ray":
        dataset.to_ray(columns=["reward"]).materialize()


READERS = [
    "iter_batches",
    "read_columns",
    "read_columns max_rows",
    "to_pyarrow",
    "export",
    "edit filter",
    "count windows",
    "windows (Ray Data)",
    "to_ray",
]


@pytest.mark.parametrize("reader", READERS)
def test_every_reader_checks_the_hash_and_verify_false_reads_the_file_as_it_is(ray_cluster, tmp_path, reader):
    make_dataset(tmp_path / "d")
    rewrite_rewards(tmp_path / "d", 0, keep_size=True)  # the first file: every reader reaches it
    named = str(file_path(tmp_path / "d", 0))
    with pytest.raises(Exception) as raised:
        read_with(reader, Dataset.open(tmp_path / "d"), tmp_path)
    assert f"{named}: sha256 " in str(raised.value)  # through Ray Data too, whose error wraps ours
    assert not (tmp_path / "filtered").exists() and not (tmp_path / "out.npz").exists()
    read_with(reader, Dataset.open(tmp_path / "d", verify=False), tmp_path)
    rewards = Dataset.open(tmp_path / "d", verify=False).read_columns(["reward", "episode_id"])
    assert np.abs(rewards["reward"][rewards["episode_id"] < 2]).max() > 10  # rewards x100 read as they are


def test_a_truncated_file_read_without_verification_is_named_not_a_raw_arrow_error(tmp_path):
    make_dataset(tmp_path / "d")
    truncate(tmp_path / "d", 2)
    with pytest.raises(
        DatasetIntegrityError,
        match=rf"^{file_path(tmp_path / 'd', 2)}: cannot be read as Parquet "
        r"\(Parquet magic bytes not found",
    ):
        list(Dataset.open(tmp_path / "d", verify=False).iter_batches())


def test_inspect_names_every_damaged_file_and_reports_on_the_good_ones(tmp_path):
    make_dataset(tmp_path / "d")
    rewrite_rewards(tmp_path / "d", 0, keep_size=True)  # tampered: only the hash tells
    truncate(tmp_path / "d", 1)
    list_twice(tmp_path / "d", 2)
    names = [str(file_path(tmp_path / "d", index)) for index in range(3)]
    dataset = Dataset.open(tmp_path / "d", skip_damaged=True)
    report = inspect_dataset(dataset)
    [integrity] = [finding for finding in report.findings if finding.check == "integrity"]
    assert integrity.severity == "error" and integrity.count == 3
    assert any(line.startswith(f"{names[0]}: sha256 ") for line in integrity.examples)
    assert any(line.startswith(f"{names[1]}: ") and "bytes, the manifest says" in line for line in integrity.examples)
    assert any(line.startswith(f"{names[2]}: listed twice") for line in integrity.examples)
    assert report.overview["rows"] == 40 and report.overview["episodes"] == 2  # the good file, read once

    unverified = inspect_dataset(Dataset.open(tmp_path / "d", verify=False, skip_damaged=True))
    [integrity] = [finding for finding in unverified.findings if finding.check == "integrity"]
    assert integrity.count == 2  # the hashes skipped: the tampered file is read as it is
    assert any(line.startswith(f"{names[1]}: cannot be read as Parquet") for line in integrity.examples)
    assert any(line.startswith(f"{names[2]}: listed twice") for line in integrity.examples)
    assert unverified.overview["rows"] == 80 and unverified.columns["reward"]["max"] > 10


def test_a_dataset_on_s3_is_verified_as_it_is_read(bucket):
    schema, batch = episodes_batch(LENGTHS)
    uri = f"s3://{bucket}/d"
    write_dataset([batch], schema, uri, AggregationConfig(formats=["parquet"], rows_per_file=40), "s3", "x")
    manifest = json.loads(location(f"{uri}/_manifest.json").read_text())
    manifest["files"][1]["sha256"] = "0" * 64
    location(f"{uri}/_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetIntegrityError, match=rf"^{uri}/{manifest['files'][1]['path']}: sha256 "):
        Dataset.open(uri).read_columns(["reward"])
    assert Dataset.open(uri, verify=False).read_columns(["reward"])["reward"].size == sum(LENGTHS)
    with pytest.raises(DatasetExistsError, match=f"{uri}: a dataset is already there"):
        write_dataset([batch], schema, uri, AggregationConfig(formats=["parquet"]), "again", "x")
    names = object_names(bucket)
    with (
        pytest.raises(RuntimeError, match="failed on purpose"),
        staged_folder(location(f"{uri}-2"), "manifest.json") as staging,
    ):
        staging.join("part.parquet").write_bytes(b"x")
        raise RuntimeError("failed on purpose")
    assert object_names(bucket) == names  # the object written before the failure is gone


def test_a_failed_write_leaves_nothing_and_an_existing_folder_keeps_its_files(tmp_path):
    with (
        pytest.raises(RuntimeError, match="failed on purpose"),
        staged_folder(location(tmp_path / "new"), "manifest.json") as staging,
    ):
        staging.join("year=2026/part-0.parquet").write_bytes(b"rows")
        raise RuntimeError("failed on purpose")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "screenshot.png").write_bytes(b"png")
    with staged_folder(location(tmp_path / "kept"), "manifest.json") as staging:
        staging.join("part-0.parquet").write_bytes(b"rows")
        staging.join("manifest.json").write_text("{}")
        assert not (tmp_path / "kept" / "part-0.parquet").exists()  # nothing shows before the end
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == [
        "manifest.json",
        "part-0.parquet",
        "screenshot.png",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]


def test_a_failed_edit_leaves_no_orphan_files(tmp_path):
    make_dataset(tmp_path / "d")
    fake_hash(tmp_path / "d", 2)  # the last file: the first two are written before it is read
    with pytest.raises(DatasetIntegrityError, match="sha256"):
        filter_dataset(Dataset.open(tmp_path / "d"), tmp_path / "filtered", EpisodeFilter(min_length=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def write_snapshot(path: Path, batch, schema) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema.arrow_schema()) as writer:
        for record_batch in pa.Table.from_batches([batch.to_arrow(schema)]).to_batches(max_chunksize=30):
            writer.write_batch(record_batch)


def test_compacting_a_truncated_snapshot_names_it_and_leaves_no_dataset(ray_cluster, tmp_path):
    schema, batch = episodes_batch(LENGTHS)
    snapshots = tmp_path / "replay"
    snapshots.mkdir()
    for index in range(2):
        write_snapshot(snapshots / f"shard-{index:03d}.arrow", batch, schema)
    cut = snapshots / "shard-001.arrow"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size - 100])
    cfg = AggregationConfig(formats=["parquet"], num_cpus=0.25)
    sources = [str(path) for path in sorted(snapshots.glob("shard-*.arrow"))]
    with pytest.raises(
        DatasetIntegrityError, match=rf"^{cut}: not a whole Arrow IPC stream, cut off or damaged"
    ) as raised:
        compact_replay(sources, schema, tmp_path / "dataset", cfg, "snap", "x")
    assert "\n" not in str(raised.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["replay"]  # no dataset/, no temporary folder
    with pytest.raises(DatasetError, match="no such replay snapshot"):
        compact_replay([str(snapshots / "shard-009.arrow")], schema, tmp_path / "dataset", cfg, "snap", "x")


def test_a_dataset_is_never_written_over_another(tmp_path):
    dataset = make_dataset(tmp_path / "d")
    before = {path.name: path.read_bytes() for path in (tmp_path / "d").rglob("*") if path.is_file()}
    schema, batch = episodes_batch([5])
    with pytest.raises(
        DatasetExistsError, match=f"^{tmp_path / 'd'}: a dataset is already there; choose a new folder$"
    ):
        write_dataset([batch], schema, tmp_path / "d", AggregationConfig(formats=["parquet"]), "import", "x")
    with pytest.raises(DatasetExistsError, match="a dataset is already there"):
        compact_replay([], schema, tmp_path / "d", AggregationConfig(formats=["parquet"]), "compact", "x")
    with pytest.raises(FileExistsError, match="a dataset is already there"):  # edits: the same rule
        filter_dataset(dataset, tmp_path / "d", EpisodeFilter(min_length=1))
    assert {path.name: path.read_bytes() for path in (tmp_path / "d").rglob("*") if path.is_file()} == before
    assert not [path for path in tmp_path.iterdir() if TMP_MARK in path.name]


def test_a_learner_refuses_a_tampered_dataset_unless_told_not_to_verify(tmp_path):
    from harvest.learners.bc import BCLearner
    from harvest.learners.config import BCConfig, LearnerConfig

    make_dataset(tmp_path / "d")
    fake_hash(tmp_path / "d", 1)
    cfg = LearnerConfig(batch_size=32, hidden_sizes=[8], bc=BCConfig(epochs=1))
    with pytest.raises(DatasetIntegrityError, match=rf"^{file_path(tmp_path / 'd', 1)}: sha256 "):
        BCLearner(cfg, str(tmp_path / "d"), str(tmp_path / "learner")).train()
    unverified = LearnerConfig(batch_size=32, hidden_sizes=[8], verify_dataset=False, bc=BCConfig(epochs=1))
    assert BCLearner(unverified, str(tmp_path / "d"), str(tmp_path / "learner")).train().trained_on > 0


# --- the same through the `harvest` command: exit 1 for damaged files, one line each; --no-verify


def harvest_in_process(capfd, *argv: str) -> tuple[int, str]:
    from harvest.cluster.cli import main

    code = main([str(arg) for arg in argv])
    return code, capfd.readouterr().err


def test_harvest_inspect_exits_1_naming_the_tampered_the_truncated_and_the_duplicated_file(tmp_path):
    import subprocess
    import sys

    make_dataset(tmp_path / "d")
    rewrite_rewards(tmp_path / "d", 0, keep_size=True)
    truncate(tmp_path / "d", 1)
    list_twice(tmp_path / "d", 2)
    names = [str(file_path(tmp_path / "d", index)) for index in range(3)]
    result = subprocess.run(
        [sys.executable, "-m", "harvest", "inspect", str(tmp_path / "d"), "--json", str(tmp_path / "report.json")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "Traceback" not in output
    assert f"{names[0]}: sha256 " in output and f"{names[1]}: " in output and f"{names[2]}: listed twice" in output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["overview"]["rows"] == 40, "the good file is still inspected"
    assert (tmp_path / "d" / "_report" / "index.html").is_file()


def test_harvest_inspect_no_verify_reads_the_tampered_file_as_it_is(tmp_path, capfd):
    make_dataset(tmp_path / "d")
    rewrite_rewards(tmp_path / "d", 0, keep_size=True)
    harvest_in_process(capfd, "inspect", tmp_path / "d", "--no-verify", "--json", tmp_path / "r.json")
    report = json.loads((tmp_path / "r.json").read_text())  # (the toy rows fail the next_obs check: exit 1)
    assert report["overview"]["rows"] == 120 and report["columns"]["reward"]["max"] > 10
    assert "integrity" not in [finding["check"] for finding in report["findings"]]


@pytest.mark.parametrize(
    "command",
    [
        ["export", "{d}", "--to", "offline-rl", "--out", "{tmp}/out.npz"],
        ["edit", "filter", "{d}", "--out", "{tmp}/filtered", "--min-length", "1"],
        ["windows", "{d}", "--history", "4"],
    ],
    ids=["export", "edit filter", "windows"],
)
def test_dataset_commands_exit_1_on_a_tampered_file_and_read_it_with_no_verify(tmp_path, capfd, command):
    make_dataset(tmp_path / "d")
    fake_hash(tmp_path / "d", 1)
    argv = [part.format(d=tmp_path / "d", tmp=tmp_path) for part in command]
    code, err = harvest_in_process(capfd, *argv)
    assert code == 1, err[-3000:]
    [line] = [line for line in err.splitlines() if "ERROR" in line]
    assert f"{file_path(tmp_path / 'd', 1)}: sha256 " in line and "the manifest says 000" in line
    assert not (tmp_path / "out.npz").exists() and not (tmp_path / "filtered").exists()
    code, err = harvest_in_process(capfd, *argv, "--no-verify")
    assert code == 0, err[-3000:]


def test_harvest_export_refuses_an_existing_file_unless_overwrite(tmp_path, capfd):
    make_dataset(tmp_path / "d")
    (tmp_path / "out.h5").write_bytes(b"mine")
    argv = ["export", tmp_path / "d", "--to", "offline-rl", "--out", tmp_path / "out.h5"]
    code, err = harvest_in_process(capfd, *argv)
    assert code == 2 and "--overwrite" in err and str(tmp_path / "out.h5") in err, err[-3000:]
    assert (tmp_path / "out.h5").read_bytes() == b"mine"
    code, err = harvest_in_process(capfd, *argv, "--overwrite")
    assert code == 0, err[-3000:]
    import h5py

    with h5py.File(tmp_path / "out.h5") as written:
        assert written["rewards"].shape == (120,)


def test_a_missing_dataset_is_a_usage_error_not_a_data_error(tmp_path, capfd):
    code, err = harvest_in_process(capfd, "inspect", tmp_path / "nothing")
    assert code == 2 and "no _manifest.json" in err, err[-3000:]


def test_harvest_train_no_verify_tells_the_learner_not_to_verify(tmp_path):
    from harvest.cluster.cli import _config_for, _parser

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("env: {id: CartPole-v1}\n")
    args = _parser().parse_args(["train", str(tmp_path / "run"), "--no-verify"])
    assert _config_for(args).learner.verify_dataset is False
    args = _parser().parse_args(["train", str(tmp_path / "run")])
    assert _config_for(args).learner.verify_dataset is True


def test_harvest_inspect_of_a_dataset_it_may_not_write_in_puts_the_report_in_the_current_folder(
    tmp_path, capfd, monkeypatch
):
    import subprocess

    make_dataset(tmp_path / "d")
    # read-only even for root (the suite runs as root in CI): the immutable attribute
    if subprocess.run(["chattr", "+i", str(tmp_path / "d")], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available on this file system")
    try:
        (tmp_path / "cwd").mkdir()
        monkeypatch.chdir(tmp_path / "cwd")
        code, err = harvest_in_process(capfd, "inspect", tmp_path / "d", "--json", tmp_path / "r.json")
        assert code in (0, 1) and "Traceback" not in err, err[-3000:]
        assert (tmp_path / "cwd" / "report-integrity" / "index.html").is_file(), err[-3000:]
        assert "cannot write the report there" in err and not (tmp_path / "d" / "_report").exists()
        assert json.loads((tmp_path / "r.json").read_text())["overview"]["rows"] == 120
    finally:
        subprocess.run(["chattr", "-i", str(tmp_path / "d")], check=True)


@pytest.mark.parametrize("hash_first", [True, False])
def test_a_files_batches_all_come_whether_its_hash_or_its_parsing_finishes_first(tmp_path, monkeypatch, hash_first):
    # The reader parses while the hash runs and holds batches until it matches. When parsing ends
    # first, the loop has used up pyarrow's batch generator: going on with it must end cleanly (a
    # `yield from` over it raised "generator raised StopIteration" in CI, on a busy machine).
    from harvest.aggregation.integrity import FileReader, _PendingCheck

    dataset = make_dataset(tmp_path / "d")
    monkeypatch.setattr(_PendingCheck, "done", lambda self: hash_first)  # which finished first, made certain
    reader = FileReader(dataset.folder)
    for entry in dataset.manifest.files:
        batches = list(reader.iter_batches(entry, batch_rows=7))
        assert sum(batch.num_rows for batch in batches) == entry.rows and len(batches) == -(-entry.rows // 7)
