"""The data plane: shards, manifest written last, resume, conflicts, readers."""

import hashlib
import json
import re
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.dataset as pads
import pytest
from corpus import changed, file_states

from adamllm_core.dataset import (
    Dataset,
    DatasetConflictError,
    DatasetError,
    DatasetNotFinishedError,
    DatasetWriter,
    ParentRef,
    manifest_identity,
    read_manifest,
)
from adamllm_core.schemas import (
    PAIRS,
    QUARANTINE,
    ImageCaptionPair,
    QuarantineRow,
    arrow_schema_for,
    register_schema,
)


def pair(n: int) -> ImageCaptionPair:
    return ImageCaptionPair(
        id=f"id{n:03d}",
        image=b"\xff\xd8" + bytes([n]),
        image_format="jpeg",
        width=8,
        height=8,
        image_sha256=f"sha{n}",
        caption=f"caption {n}",
        domain="test",
        source="mem",
        source_ref=f"row {n}",
        metadata={"n": n, "nested": {"k": [1, 2]}},
    )


def quarantined(n: int, reason: str = "bad") -> QuarantineRow:
    return QuarantineRow(
        stage="test", input_index=n, source_ref=f"row {n}", reason=reason, detail="why"
    )


def writer(uri: str, config: dict | None = None, overwrite: bool = False) -> DatasetWriter:
    return DatasetWriter(
        uri,
        schema=PAIRS,
        stage="test",
        parents=[ParentRef(uri="mem://source", fingerprint="f1", kind="source")],
        config=config or {"a": 1},
        config_hash=json.dumps(config or {"a": 1}),
        overwrite=overwrite,
    )


def write_all(uri: str, shards: int = 3, **kwargs) -> None:
    w = writer(uri, **kwargs)
    assert w.prepare() is None
    for k in range(shards):
        w.write_shard(
            k,
            PAIRS.to_table([pair(2 * k), pair(2 * k + 1)]),
            QUARANTINE.to_table([quarantined(k)] if k == 1 else []),
            rows_in=3 if k == 1 else 2,
        )
    w.commit(shards)


def test_manifest_fields_and_readers(tmp_path: Path) -> None:
    uri = str(tmp_path / "ds")
    write_all(uri)
    manifest = read_manifest(uri)
    raw = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    for key in (
        "rows",
        "shards",
        "schema",
        "parents",
        "config_hash",
        "code_version",
        "created_at",
        "quarantine",
    ):
        assert key in raw
    assert raw["schema"] == {"name": "pairs", "version": 1}
    assert manifest.rows == 6 and [s.rows for s in manifest.shards] == [2, 2, 2]
    assert manifest.quarantine.rows == 1 and manifest.quarantine.reasons == {"bad": 1}
    assert manifest.stats.rows_in == 7 == manifest.stats.rows_out + manifest.stats.quarantined_total
    assert not (tmp_path / "ds" / "_work").exists()

    frame = pl.scan_parquet(uri + "/*.parquet").collect()
    assert pl.scan_parquet(Dataset(uri).shard_uris()).collect().equals(frame)
    assert sorted(frame["id"]) == [f"id{n:03d}" for n in range(6)]
    assert json.loads(frame["metadata"][0]) == {"n": 0, "nested": {"k": [1, 2]}}
    assert duckdb.sql(f"select count(*) from '{uri}/*.parquet'").fetchall() == [(6,)]
    folder = pads.dataset(uri, format="parquet", ignore_prefixes=[".", "_", "manifest"])
    assert folder.to_table().num_rows == 6
    assert Dataset(uri).to_table().num_rows == 6
    assert Dataset(uri).quarantine().to_table().column("reason").to_pylist() == ["bad"]
    Dataset(uri).verify()
    assert PAIRS.from_arrow_row(next(Dataset(uri).iter_rows())) == pair(0)


def test_unfinished_dataset_is_refused_and_hidden(tmp_path: Path) -> None:
    uri = str(tmp_path / "ds")
    w = writer(uri)
    w.prepare()
    w.write_shard(0, PAIRS.to_table([pair(0)]), QUARANTINE.to_table([]), rows_in=1)
    with pytest.raises(DatasetNotFinishedError, match="unfinished"):
        read_manifest(uri)
    # the shard is where it will stay, named with the writer's identity; no manifest yet
    assert [p.name for p in (tmp_path / "ds").glob("*.parquet")] == [
        f"part-00000-{w.identity[:12]}.parquet"
    ]
    with pytest.raises(DatasetNotFinishedError, match="not a dataset"):
        read_manifest(str(tmp_path / "nothing-here"))


def test_resume_keeps_finished_shards(tmp_path: Path) -> None:
    uri = str(tmp_path / "ds")
    w = writer(uri)
    w.prepare()
    w.write_shard(0, PAIRS.to_table([pair(0)]), QUARANTINE.to_table([]), rows_in=1)
    shard = tmp_path / "ds" / f"part-00000-{w.identity[:12]}.parquet"
    written = file_states([shard])

    again = writer(uri)
    assert again.prepare() is None
    assert again.done_shards == [0] and list(again.done_column("id")) == ["id000"]
    again.write_shard(1, PAIRS.to_table([pair(1)]), QUARANTINE.to_table([]), rows_in=1)
    manifest = again.commit(2)
    assert manifest.rows == 2
    # shard 0 was published as written the first time, not redone
    assert changed(written) == [] and manifest.shards[0].path == shard.name


def test_work_of_another_config_is_discarded(tmp_path: Path) -> None:
    uri = str(tmp_path / "ds")
    w = writer(uri, config={"a": 1})
    w.prepare()
    w.write_shard(0, PAIRS.to_table([pair(0)]), QUARANTINE.to_table([]), rows_in=1)
    other = writer(uri, config={"a": 2})
    assert other.prepare() is None and other.done_shards == []


def test_identical_dataset_is_reused_and_different_one_conflicts(tmp_path: Path) -> None:
    uri = str(tmp_path / "ds")
    write_all(uri)
    first = read_manifest(uri)
    assert writer(uri).prepare() == first
    with pytest.raises(DatasetConflictError, match="already holds a different"):
        writer(uri, config={"a": 2}).prepare()
    replaced = writer(uri, config={"a": 2}, overwrite=True)
    assert replaced.prepare() is None
    # replaced only at its commit: until then the finished dataset is whole and readable
    assert read_manifest(uri) == first
    replaced.write_shard(0, PAIRS.to_table([pair(9)]), QUARANTINE.to_table([]), rows_in=1)
    assert read_manifest(uri) == first and Dataset(uri).to_table().num_rows == 6
    Dataset(uri).verify()
    replaced.commit(1)
    assert [r["id"] for r in Dataset(uri).iter_rows(["id"])] == ["id009"]
    # the old shards and quarantine are gone after the switch
    assert len(list((tmp_path / "ds").glob("*.parquet"))) == 1
    assert not (tmp_path / "ds" / "_quarantine").exists()


def test_foreign_files_are_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "precious.txt").write_text("keep me")
    with pytest.raises(DatasetConflictError, match="not a dataset"):
        writer(str(tmp_path / "ds")).prepare()
    assert (tmp_path / "ds" / "precious.txt").exists()


def test_equal_content_gives_equal_fingerprint_and_bytes(tmp_path: Path) -> None:
    write_all(str(tmp_path / "a"))
    write_all(str(tmp_path / "b"))
    a, b = read_manifest(str(tmp_path / "a")), read_manifest(str(tmp_path / "b"))
    assert a.fingerprint == b.fingerprint and a.shards == b.shards
    assert (tmp_path / "a" / a.shards[1].path).read_bytes() == (
        tmp_path / "b" / b.shards[1].path
    ).read_bytes()


def write_pairs(
    uri: str,
    shards: list[list[ImageCaptionPair]],
    config: dict | None = None,
    quarantined_in: tuple[int, ...] = (1,),
    reason: str = "bad",
) -> None:
    """Like write_all, with each shard's pairs given; `quarantined_in`: the shards with a
    quarantined row, for `reason`."""
    w = writer(uri, config=config)
    w.prepare()
    for k, rows in enumerate(shards):
        bad = [quarantined(k, reason)] if k in quarantined_in else []
        w.write_shard(
            k, PAIRS.to_table(rows), QUARANTINE.to_table(bad), rows_in=len(rows) + len(bad)
        )
    w.commit(len(shards))


def test_different_content_or_config_gives_a_different_fingerprint(tmp_path: Path) -> None:
    """A fingerprint is equal for equal content (above) and differs when anything a child
    reads differs: one caption, one row fewer, another config, a quarantined row more, or
    as many quarantined rows for another reason."""
    base = [[pair(0), pair(1)], [pair(2), pair(3)], [pair(4), pair(5)]]
    recaptioned = [list(rows) for rows in base]
    recaptioned[1][1] = pair(3).model_copy(update={"caption": "caption 3, edited"})
    variants = {
        "base": (base, None, (1,)),
        "same": (base, None, (1,)),
        "caption": (recaptioned, None, (1,)),
        "row_removed": ([base[0], base[1], [pair(4)]], None, (1,)),
        "config": (base, {"a": 2}, (1,)),
        "quarantine": (base, None, (1, 2)),
        "quarantine_reason": (base, None, (1,), "worse"),
    }
    fingerprints = {}
    for name, (shards, config, quarantined_in, *reason) in variants.items():
        write_pairs(str(tmp_path / name), shards, config, quarantined_in, *reason)
        fingerprints[name] = read_manifest(str(tmp_path / name)).fingerprint
    assert fingerprints["same"] == fingerprints["base"]
    changed = ("caption", "row_removed", "config", "quarantine", "quarantine_reason")
    others = [fingerprints[k] for k in changed]
    assert fingerprints["base"] not in others and len(set(others)) == len(others)
    # the caption's and the removed row's datasets were made from the same inputs, config
    # and code: their fingerprints differ by the content alone
    identities = {k: manifest_identity(read_manifest(str(tmp_path / k))) for k in variants}
    assert identities["caption"] == identities["row_removed"] == identities["base"]
    assert identities["config"] != identities["base"]


def corrupt_shard(tmp_path: Path, how: str) -> str:
    """A finished dataset of three shards whose shard 1 (or its manifest entry) is damaged
    `how`; returns that shard's file name."""
    uri = str(tmp_path / "ds")
    write_all(uri)
    Dataset(uri).verify()  # intact: passes
    manifest_file = tmp_path / "ds" / "manifest.json"
    raw = json.loads(manifest_file.read_text())
    name = raw["shards"][1]["path"]
    shard = tmp_path / "ds" / name
    data = shard.read_bytes()
    if how == "flipped":  # same length, some bytes inside the file inverted
        middle = len(data) // 2
        shard.write_bytes(
            data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 8]) + data[middle + 8 :]
        )
    elif how == "truncated":
        shard.write_bytes(data[: len(data) - 100])
    elif how == "manifest_sha256":  # the shard is intact; its recorded hash is not
        recorded = raw["shards"][1]["sha256"]
        raw["shards"][1]["sha256"] = ("0" if recorded[0] != "0" else "1") + recorded[1:]
        manifest_file.write_text(json.dumps(raw))
    else:
        raise ValueError(how)
    return name


@pytest.mark.parametrize("how", ["flipped", "truncated", "manifest_sha256"])
def test_verify_names_the_damaged_shard(tmp_path: Path, how: str) -> None:
    name = corrupt_shard(tmp_path, how)
    dataset = Dataset(str(tmp_path / "ds"))  # the manifest still reads: only verify can tell
    with pytest.raises(DatasetError, match=re.escape(f"/{name}: sha256 differs")) as caught:
        dataset.verify()
    assert type(caught.value) is DatasetError
    assert name.startswith("part-00001-")  # the second shard: verify read past the first


def test_verify_names_a_missing_shard_and_checks_the_quarantine(tmp_path: Path) -> None:
    write_all(str(tmp_path / "ds"))
    dataset = Dataset(str(tmp_path / "ds"))
    quarantine_shard = next((tmp_path / "ds" / "_quarantine").rglob("part-*.parquet"))
    intact_quarantine = quarantine_shard.read_bytes()
    quarantine_shard.write_bytes(intact_quarantine[:-50])
    with pytest.raises(DatasetError, match=re.escape(f"/{quarantine_shard.name}: sha256 differs")):
        dataset.verify()

    quarantine_shard.write_bytes(intact_quarantine)
    dataset.verify()  # whole again

    # a manifest edited by hand: each fingerprint no longer matches what it records
    manifest_file = tmp_path / "ds" / "manifest.json"
    intact = manifest_file.read_text()
    raw = json.loads(intact)
    raw["quarantine"]["reasons"] = {"bad": 1}  # not hashed: a reader's summary only
    raw["rows"] = 6
    raw["shards"][0]["rows"] = 3  # hashed: the shard's row count changed
    manifest_file.write_text(json.dumps(raw))
    with pytest.raises(DatasetError, match="manifest fingerprint differs from its content"):
        Dataset(str(tmp_path / "ds")).verify()
    raw = json.loads(intact)
    raw["quarantine"]["fingerprint"] = "0" * 32
    manifest_file.write_text(json.dumps(raw))
    with pytest.raises(DatasetError, match="manifest fingerprint differs"):
        Dataset(str(tmp_path / "ds")).verify()  # the recorded one is hashed in
    # a manifest written before the quarantine's fingerprint was recorded still verifies
    raw = json.loads(intact)
    del raw["quarantine"]["fingerprint"]
    identity = manifest_identity(read_manifest(str(tmp_path / "ds")))
    old_content = {
        "identity": identity,
        "shards": [[s["path"], s["rows"], s["sha256"]] for s in raw["shards"]],
        "quarantine": raw["quarantine"]["rows"],
    }
    raw["fingerprint"] = hashlib.sha256(
        json.dumps(old_content, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()[:32]
    manifest_file.write_text(json.dumps(raw))
    Dataset(str(tmp_path / "ds")).verify()
    manifest_file.write_text(intact)
    quarantine_manifest = quarantine_shard.parent / "manifest.json"
    intact_quarantine_manifest = quarantine_manifest.read_text()
    raw = json.loads(intact_quarantine_manifest)
    raw["fingerprint"] = "0" * 32
    quarantine_manifest.write_text(json.dumps(raw))
    with pytest.raises(DatasetError, match="quarantine manifest differs from the one recorded"):
        Dataset(str(tmp_path / "ds")).verify()
    quarantine_manifest.unlink()
    with pytest.raises(DatasetError, match="its quarantine cannot be read"):
        Dataset(str(tmp_path / "ds")).verify()
    quarantine_manifest.write_text(intact_quarantine_manifest)
    Dataset(str(tmp_path / "ds")).verify()

    name = dataset.manifest.shards[2].path
    (tmp_path / "ds" / name).unlink()
    with pytest.raises(
        DatasetError, match=re.escape(f"/{name}: shard listed in the manifest is missing")
    ) as caught:
        dataset.verify()
    assert type(caught.value) is DatasetError  # not FileNotFoundError


def test_commit_refuses_missing_shards(tmp_path: Path) -> None:
    w = writer(str(tmp_path / "ds"))
    w.prepare()
    w.write_shard(0, PAIRS.to_table([pair(0)]), QUARANTINE.to_table([]), rows_in=1)
    with pytest.raises(DatasetError, match=r"shards \[1\] not written") as caught:
        w.commit(2)
    assert type(caught.value) is DatasetError  # not "unfinished" nor "conflict": a bad commit
    assert not (tmp_path / "ds" / "manifest.json").exists()


def test_schema_registry_rejects_duplicates_and_derives_arrow() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_schema(PAIRS)
    schema = arrow_schema_for(QuarantineRow)
    assert str(schema.field("record_id").type) == "string" and schema.field("record_id").nullable
    assert not schema.field("reason").nullable


def test_credentials_in_parent_uris_never_reach_the_manifest(tmp_path: Path) -> None:
    uri = str(tmp_path / "ds")
    w = DatasetWriter(
        uri,
        schema=PAIRS,
        stage="test",
        parents=[ParentRef(uri="s3://AKIAEXAMPLE:s3cr3t@bucket/src", fingerprint="f1")],
        config={"a": 1},
        config_hash="h",
    )
    w.write_shard(0, PAIRS.to_table([pair(0)]), QUARANTINE.to_table([]), rows_in=1)
    w.commit(1)
    text = (tmp_path / "ds" / "manifest.json").read_text()
    assert "s3cr3t" not in text and "AKIAEXAMPLE" not in text
    assert read_manifest(uri).parents[0].uri == "s3://bucket/src"


def test_editing_one_stage_module_leaves_other_stages_identities(tmp_path: Path) -> None:
    """Each stage's code version hashes its own module and what it imports: an edit to the
    evaluation code must not invalidate ingested or synthesized data, and an edit to the
    synthesis code must invalidate synthesized data but not ingested data."""
    import shutil
    import subprocess
    import sys

    import adamllm_core

    stages = {
        "ingest": "adamllm_core.ingest",
        "synth": "adamllm_core.pipeline",
        "evaluate": "adamllm_core.evaluation.run",
        "seed": "adamllm_core.training.seed",
    }

    def versions(tree: Path) -> dict[str, str]:
        script = (
            "import json; from adamllm_core.version import code_version;"
            f"print(json.dumps({{k: code_version(m) for k, m in {stages!r}.items()}}))"
        )
        out = subprocess.run(
            [sys.executable, "-c", script], cwd=tree, capture_output=True, text=True, check=True
        )
        return json.loads(out.stdout)

    package = Path(adamllm_core.__file__).parent
    trees = {}
    for name, edited in (
        ("same", None),
        ("eval", "evaluation/metrics.py"),
        ("synth", "synthesis.py"),
    ):
        tree = tmp_path / name
        shutil.copytree(
            package, tree / "adamllm_core", ignore=shutil.ignore_patterns("__pycache__")
        )
        if edited:
            with (tree / "adamllm_core" / edited).open("a") as handle:
                handle.write("\n# an edit\n")
        trees[name] = versions(tree)
    same, evaluation, synthesis = trees["same"], trees["eval"], trees["synth"]
    assert evaluation["evaluate"] != same["evaluate"]
    assert {k: evaluation[k] for k in ("ingest", "synth", "seed")} == {
        k: same[k] for k in ("ingest", "synth", "seed")
    }
    assert synthesis["synth"] != same["synth"]
    assert synthesis["ingest"] == same["ingest"] and synthesis["seed"] == same["seed"]
