"""`adamllm status`: every dataset of a run with its rows and quarantine by reason, training
runs, and for a stage whose writer was interrupted the shards and rows done and left."""

import json
import shutil
from pathlib import Path

import pytest
from corpus import hand_triplet, unparseable, write_derived
from typer.testing import CliRunner

from adamllm_cli.main import app
from adamllm_core.dataset import Dataset
from adamllm_core.executor import Shard, ShardOutput, StageOutput, run_stage
from adamllm_core.ingest import IngestConfig, ingest
from adamllm_core.schemas import TRIPLETS
from adamllm_core.status import run_status

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "biomed_pairs"
runner = CliRunner()


class Synthesizing:
    """A synthesize stage's process function: a triplet per pair but every sixth, which is
    quarantined as unparseable; raises at shard `fail_at` (the writer is interrupted)."""

    def __init__(self, fail_at: int | None = None):
        self.fail_at = fail_at

    def __call__(self, rows: list[dict], shard: Shard) -> ShardOutput:
        if shard.index == self.fail_at:
            raise RuntimeError(f"killed at shard {shard.index}")
        output = ShardOutput(rows={"triplets": []})
        for position, row in enumerate(rows):
            if (shard.offset + position) % 6 == 5:
                output.quarantine.append(unparseable(row["id"], shard.offset + position))
            else:
                output.rows["triplets"].append(hand_triplet(row, "What is shown? v2"))
        return output


def interrupted_synthesize(pairs: str, out: str, *, overwrite: bool = False) -> None:
    with pytest.raises(RuntimeError, match="killed at shard 2"):
        synthesize_like(pairs, out, Synthesizing(fail_at=2), overwrite=overwrite)
    # the failed stage gave its lease back (ShardedExecutor.give_back_leases)


def synthesize_like(pairs: str, out: str, process: Synthesizing, overwrite: bool = False) -> None:
    run_stage(
        stage="synthesize",
        input_uri=pairs,
        outputs={"triplets": StageOutput(out, TRIPLETS)},
        config={"by": "test", "version": 2},
        process=process,
        code="test",
        columns=["id", "domain"],
        overwrite=overwrite,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OUT/biomed/: pairs (4 shards of 6), hand triplets with a quarantine of two reasons,
    triplets-v2 whose synthesize was interrupted after two shards, a finished training run
    and an interrupted one."""
    out = tmp_path_factory.mktemp("status") / "out"
    domain = out / "biomed"
    pairs = str(domain / "pairs")
    ingest(str(SAMPLE), pairs, IngestConfig(domain="biomed", rows_per_shard=6))
    reasons = ["unparseable", "missing_hint", "unparseable"]

    def tasks(k: int, rows: list[dict]) -> tuple[list, list]:
        """The first pair of shards 0-2 quarantined, for one of two reasons."""
        bad = [unparseable(rows[0]["id"], k * 6, reasons[k])] if k < len(reasons) else []
        return [hand_triplet(r, "What is shown?") for r in rows[len(bad) :]], bad

    write_derived(
        pairs,
        str(domain / "triplets"),
        TRIPLETS,
        tasks,
        columns=["id", "domain"],
        config={"by": "hand"},
    )
    interrupted_synthesize(pairs, str(domain / "triplets-v2"))

    model = domain / "model"
    model.mkdir()
    (model / "train_summary.json").write_text(
        json.dumps({"steps": 30, "examples": 24, "train_loss": 1.25, "identity": "abc"})
    )
    stage1 = domain / "model-stage1"
    (stage1 / "checkpoint-10").mkdir(parents=True)
    (stage1 / "checkpoint-10" / "run_identity").write_text("abc")
    (stage1 / "run_identity").write_text("abc")
    (stage1 / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 13))
    )
    return out


def manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_a_finished_run_lists_every_dataset_as_its_manifest_says(run: Path) -> None:
    status = run_status(str(run))
    entries = {e.name: e for e in status.entries}
    assert sorted(entries) == [
        "biomed/model",
        "biomed/model-stage1",
        "biomed/pairs",
        "biomed/triplets",
        "biomed/triplets-v2",
    ]
    for name in ("biomed/pairs", "biomed/triplets"):
        expected = manifest(run / name)
        entry = entries[name]
        assert entry.finished and entry.progress is None and entry.changed_parents == []
        assert (entry.schema_name, entry.stage) == (
            expected["schema"]["name"],
            expected["stats"]["stage"],
        )
        assert (entry.rows, entry.shards) == (expected["rows"], len(expected["shards"]))
        quarantine = expected["quarantine"] or {"rows": 0, "reasons": {}}
        assert entry.quarantined == quarantine["rows"]
        assert entry.quarantine_reasons == quarantine["reasons"]
        assert entry.fingerprint == expected["fingerprint"]
    assert entries["biomed/triplets"].quarantine_reasons == {"missing_hint": 1, "unparseable": 2}
    assert entries["biomed/pairs"].rows == 24 and entries["biomed/pairs"].shards == 4
    # training runs: finished (its summary), and one with checkpoints and logged steps only
    model, stage1 = entries["biomed/model"], entries["biomed/model-stage1"]
    assert (model.kind, model.finished, model.detail["steps"]) == ("training", True, 30)
    assert (stage1.finished, stage1.detail) == (
        False,
        {"last_checkpoint": 10, "last_logged_step": 12},
    )
    # the domain folder itself is a run folder too
    assert len(run_status(str(run / "biomed")).entries) == 5


def test_an_interrupted_stage_reports_shards_done_and_how_many_are_left(
    run: Path,
) -> None:
    entry = next(e for e in run_status(str(run)).entries if e.name == "biomed/triplets-v2")
    assert not entry.finished and entry.rows is None
    progress = entry.progress
    assert progress.stage == "synthesize" and not progress.replacing
    # shards 0 and 1 of 6 pairs each: a sixth of the pairs quarantined
    assert (progress.shards_done, progress.rows_done, progress.quarantined_done) == (2, 10, 2)
    assert progress.inputs_done == 12
    assert progress.input_uri == str(run / "biomed" / "pairs")
    assert (progress.input_rows, progress.input_shards) == (24, 4)
    assert (progress.shards_left, progress.inputs_left) == (2, 12)
    assert progress.writing_now is None


def test_a_resumed_stage_is_finished_and_a_replacement_in_progress_is_reported(
    tmp_path: Path,
) -> None:
    domain = tmp_path / "out" / "biomed"
    pairs = str(domain / "pairs")
    ingest(str(SAMPLE), pairs, IngestConfig(domain="biomed", rows_per_shard=6))
    interrupted_synthesize(pairs, str(domain / "triplets"))
    synthesize_like(pairs, str(domain / "triplets"), Synthesizing())
    entry = next(e for e in run_status(str(tmp_path)).entries if e.name.endswith("triplets"))
    assert entry.finished and entry.progress is None
    assert (entry.rows, entry.quarantined) == (20, 4)
    assert entry.quarantine_reasons == {"unparseable": 4}

    # the pairs are replaced (another shard size): the triplets' parent changed since
    ingest(str(SAMPLE), pairs, IngestConfig(domain="biomed", rows_per_shard=8), overwrite=True)
    entry = next(e for e in run_status(str(tmp_path)).entries if e.name.endswith("triplets"))
    (changed,) = entry.changed_parents
    assert changed.uri == pairs and changed.current == Dataset(pairs).manifest.fingerprint
    assert changed.recorded == manifest(domain / "triplets")["parents"][0]["fingerprint"]

    # a re-run on the new pairs, interrupted: written beside the finished triplets
    interrupted_synthesize(pairs, str(domain / "triplets"), overwrite=True)
    entry = next(e for e in run_status(str(tmp_path)).entries if e.name.endswith("triplets"))
    assert entry.finished and entry.rows == 20  # readers still see the old one
    progress = entry.progress
    assert progress.replacing and progress.shards_done == 2 and progress.inputs_done == 16
    assert (progress.input_uri, progress.input_shards, progress.shards_left) == (pairs, 3, 1)
    assert progress.inputs_left == 8


def test_cli_status_json_and_text(run: Path) -> None:
    result = runner.invoke(app, ["status", str(run), "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown == json.loads(run_status(str(run)).model_dump_json())
    entries = {e["name"]: e for e in shown["entries"]}
    assert entries["biomed/triplets"]["quarantine_reasons"] == {"missing_hint": 1, "unparseable": 2}
    assert entries["biomed/triplets-v2"]["progress"]["inputs_left"] == 12

    text = runner.invoke(app, ["status", str(run)])
    assert text.exit_code == 0, text.output
    for part in (
        "triplets-v2",
        "unfinished",
        "left: 2 of 4 shards, 12 of 24 input rows",
        "quarantined missing_hint 1, unparseable 2",
        "30 steps",
    ):
        assert part in text.output, text.output

    missing = runner.invoke(app, ["status", str(run / "nowhere")])
    assert missing.exit_code == 2 and "is not a folder" in missing.output


def test_status_and_lineage_on_object_storage(s3_bucket: str) -> None:
    from adamllm_core.lineage import lineage

    pairs = f"{s3_bucket}/out/biomed/pairs"
    ingest(str(SAMPLE), pairs, IngestConfig(domain="biomed", rows_per_shard=6))
    interrupted_synthesize(pairs, f"{s3_bucket}/out/biomed/triplets")
    entries = {e.name: e for e in run_status(f"{s3_bucket}/out").entries}
    assert sorted(entries) == ["biomed/pairs", "biomed/triplets"]
    assert entries["biomed/pairs"].rows == 24
    progress = entries["biomed/triplets"].progress
    assert (progress.shards_done, progress.shards_left, progress.inputs_left) == (2, 2, 12)
    assert progress.input_uri == pairs

    synthesize_like(pairs, f"{s3_bucket}/out/biomed/triplets", Synthesizing())
    first = Dataset(f"{s3_bucket}/out/biomed/triplets").read_shard(0, ["id", "pair_id"])[0]
    found = lineage(first["id"], f"{s3_bucket}/out")
    assert found.problems == [] and found.origins[0].verified
    assert [n.id for n in found.nodes if n.what == "pairs row"] == [first["pair_id"]]


def test_a_manifest_that_cannot_be_read_is_reported_not_taken_for_unfinished(
    tmp_path: Path,
) -> None:
    domain = tmp_path / "out" / "biomed"
    ingest(str(SAMPLE), str(domain / "pairs"), IngestConfig(domain="biomed", rows_per_shard=12))
    shutil.copytree(domain / "pairs", domain / "newer")
    newer = manifest(domain / "newer")
    newer["schema"]["name"] = "made-by-a-newer-version"
    (domain / "newer" / "manifest.json").write_text(json.dumps(newer))
    shutil.copytree(domain / "pairs", domain / "torn")
    (domain / "torn" / "manifest.json").write_text('{"format": "adamllm-dataset/1", "ro')
    entries = {e.name: e for e in run_status(str(tmp_path / "out")).entries}
    # a schema this code does not know: its manifest still says all status needs
    assert entries["biomed/newer"].finished and entries["biomed/newer"].rows == 24
    assert entries["biomed/newer"].schema_name == "made-by-a-newer-version"
    torn = entries["biomed/torn"]
    assert not torn.finished and torn.progress is None and torn.rows is None
    assert "is not a valid manifest" in torn.problem
    text = runner.invoke(app, ["status", str(tmp_path / "out")])
    assert text.exit_code == 0, text.output
    assert "unreadable" in text.output and "is not a valid manifest" in text.output
    assert "no shard done yet" not in text.output
