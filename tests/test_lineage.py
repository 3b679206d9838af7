"""`adamllm lineage`: from a mixture record, a judged row, a triplet or a prediction back to
the original image bytes and caption (or benchmark question), and forward from a pair to
every row made from it, on the MedPix sample run built here with the tiny models."""

import hashlib
import itertools
import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from corpus import hand_triplet, unparseable, write_derived
from typer.testing import CliRunner

from adamllm_cli.main import app
from adamllm_core.dataset import Dataset
from adamllm_core.engines import EngineConfig
from adamllm_core.evaluation.run import EvalConfig, evaluate
from adamllm_core.filtering import FilterConfig
from adamllm_core.ingest import IngestConfig, ingest
from adamllm_core.lineage import LineageError, lineage
from adamllm_core.pipeline import AssembleConfig, assemble, filter_triplets
from adamllm_core.schemas import TRIPLETS
from adamllm_core.training.trainer import preset, train_to

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "biomed_pairs"
BENCHMARK = REPO / "samples" / "eval_demo" / "vqa_rad"
runner = CliRunner()


def source_lines(folder: Path) -> dict[str, dict]:
    """Each annotation line of a sample folder with its image bytes and the id a pair of it
    has (sha256 of the image bytes' sha256, a NUL and the caption), computed here."""
    lines = {}
    for number, line in enumerate((folder / "data.jsonl").read_text().splitlines(), start=1):
        record = json.loads(line)
        image = (folder / record["image"]).read_bytes()
        digest = hashlib.sha256(image).hexdigest()
        pair = hashlib.sha256(f"{digest}\0{record['caption']}".encode()).hexdigest()[:32]
        lines[pair] = {**record, "path": record["image"], "line": number}
        lines[pair].update(image=image, sha256=digest)
    return lines


def write_triplets(pairs_uri: str, out: str, n: int) -> str:
    """Triplets for the first n pairs, shard k from pairs shard k with the pairs as parent,
    as synthesize writes them (what a tuned synthesizer would give); the next pair's output
    is quarantined as unparseable."""
    numbers = itertools.count()  # over the whole dataset

    def tasks(_: int, pairs: list[dict]) -> tuple[list, list]:
        rows, quarantined = [], []
        for (position, pair), made in zip(enumerate(pairs), numbers):
            if made < n:
                instruction = f"Which imaging modality is used in case {made}?"
                precise = ["CT", "MRI", "X-ray"][made % 3]
                rows.append(hand_triplet(pair, instruction, precise))
            elif made == n:
                quarantined.append(unparseable(pair["id"], position))
        return rows, quarantined

    return write_derived(
        pairs_uri, out, TRIPLETS, tasks, columns=["id", "domain"], config={"by": "hand"}
    )


@pytest.fixture(scope="module")
def run(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """OUT/biomed/{pairs,triplets,filtered,rejected,mixture,model} and an evaluation of
    that model on four VQA-RAD questions at EVAL/tiny/vqa_rad/predictions."""
    root = tmp_path_factory.mktemp("lineage")
    domain = root / "out" / "biomed"
    uris = {
        name: str(domain / name)
        for name in ("pairs", "triplets", "filtered", "rejected", "mixture", "model")
    }
    ingest(str(SAMPLE), uris["pairs"], IngestConfig(domain="biomed", rows_per_shard=10))
    write_triplets(uris["pairs"], uris["triplets"], n=8)
    filter_triplets(
        uris["triplets"],
        uris["filtered"],
        uris["rejected"],
        FilterConfig(engine=EngineConfig(model="tiny:lm"), keep=("Yes", "No", "Open")),
    )
    assemble(
        uris["pairs"],
        uris["filtered"],
        {"single_stage": uris["mixture"]},
        AssembleConfig(target_model="tiny:vlm"),
    )
    train_to(preset("tiny", max_steps=2, save_steps=2), uris["mixture"], uris["model"])
    evaluate(
        EvalConfig(
            benchmark="vqa_rad",
            data=str(BENCHMARK),
            engine=EngineConfig(model=f"{uris['model']}/final", batch_size=4),
            limit=4,
            max_new_tokens=4,
        ),
        str(root / "eval" / "tiny"),
    )
    uris["predictions"] = str(root / "eval" / "tiny" / "vqa_rad" / "predictions")
    uris["out"] = str(root / "out")
    return uris


def frame(uri: str, columns: list[str]) -> pl.DataFrame:
    return pl.read_parquet(Dataset(uri).shard_uris(), columns=columns)


def test_a_mixture_record_walks_back_to_the_original_image_bytes_and_caption(run) -> None:
    record = frame(run["mixture"], ["id", "pair_id", "triplet_id"]).filter(
        pl.col("triplet_id").is_not_null()
    )[0]
    found = lineage(record["id"][0], run["mixture"])
    assert found.problems == [] and found.schema_name == "conversations"
    # mixture record → its pair, and its kept judged row → triplet → the same pair → the
    # source line: a graph, each node naming the nodes it was made from
    nodes = {n.what: n for n in found.nodes}
    assert len(nodes) == len(found.nodes) == 5
    conversation, judged, triplet, pair, record_node = (
        nodes[k]
        for k in ("conversations row", "judged row", "triplets row", "pairs row", "source record")
    )
    assert found.nodes[0] is conversation and conversation.id == record["id"][0]
    assert (judged.id, judged.via) == (record["triplet_id"][0], "triplet_id")
    assert (triplet.id, triplet.via) == (record["triplet_id"][0], "triplet_id")
    assert (pair.id, pair.via) == (record["pair_id"][0], "pair_id")
    assert sorted(conversation.parents) == sorted([pair.index, judged.index])
    assert judged.parents == [triplet.index] and triplet.parents == [pair.index]
    assert pair.parents == [record_node.index] and record_node.via == "source_ref"
    line = source_lines(SAMPLE)[record["pair_id"][0]]  # the line this pair's id comes from
    assert record_node.id == f"data.jsonl:{line['line']}"
    (origin,) = found.origins
    assert origin.verified and origin.kind == "source record"
    assert origin.image == line["image"] and origin.image_sha256 == line["sha256"]
    assert origin.caption == origin.source_caption == line["caption"]
    assert origin.image_uri == str(SAMPLE / line["path"])
    assert {c.name: c.ok for c in pair.checks} == {
        f"source {SAMPLE}": True,
        "image bytes": True,
        "caption": True,
        "pair id": True,
    }
    # every step says what made it
    walked = {"mixture": conversation, "filtered": judged, "triplets": triplet, "pairs": pair}
    assert [n.made_by.stage for n in walked.values()] == [
        "assemble",
        "filter",
        "synthesize",
        "ingest",
    ]
    for name, node in walked.items():
        manifest = json.loads((Path(run[name]) / "manifest.json").read_text())
        assert node.made_by.config_hash == manifest["config_hash"]
        assert node.made_by.code_version == manifest["code_version"]
        assert node.made_by.fingerprint == manifest["fingerprint"]
        assert node.uri == run[name]
    assert conversation.made_by.models["target model"].startswith("local:")
    assert judged.made_by.models["model"] == judged.fields["judge"]
    assert triplet.fields["synthesizer"] == "hand@1"


def test_a_judged_row_reports_its_label_and_the_judge(run) -> None:
    judged = frame(run["filtered"], ["id", "pair_id", "label", "score_yes", "judge"])[-1]
    found = lineage(judged["id"][0], run["filtered"])
    row = found.nodes[0]
    assert row.what == "judged row" and row.fields["label"] == judged["label"][0]
    assert row.fields["score_yes"] == judged["score_yes"][0]
    assert row.fields["judge"] == judged["judge"][0]
    pair = next(n for n in found.nodes if n.what == "pairs row")
    assert pair.id == judged["pair_id"][0] and found.origins[0].verified
    # searched for in the whole run: the judged row (its id is its triplet's) is where the
    # walk starts, the triplet is named as holding that id too
    whole = lineage(judged["id"][0], run["out"], forward_from=False)
    assert whole.dataset == run["filtered"] and whole.also_in == [run["triplets"]]
    assert whole.forward is None


def test_forward_from_a_pair_lists_every_row_made_from_it(run) -> None:
    triplets = frame(run["triplets"], ["id", "pair_id"])
    pair = triplets["pair_id"][0]
    found = lineage(pair, run["pairs"], back=False)
    assert [n.what for n in found.nodes] == ["pairs row"]
    made = {(f.uri, f.quarantine): {r["id"] for r in f.rows} for f in found.forward}
    expected = {}
    for name in ("triplets", "filtered", "rejected", "mixture"):
        ids = set(frame(run[name], ["id", "pair_id"]).filter(pl.col("pair_id") == pair)["id"])
        if ids:
            expected[(run[name], False)] = ids
    assert made == expected and len(expected) >= 3  # triplet, judged row, mixture record
    assert found.searched == str(Path(run["pairs"]).parent)
    # a pair whose synthesizer output was quarantined: that is what was made of it
    manifest = json.loads((Path(run["triplets"]) / "manifest.json").read_text())
    quarantine = f"{run['triplets']}/{manifest['quarantine']['path']}"
    quarantined = frame(quarantine, ["record_id"])["record_id"][0]
    forward = lineage(quarantined, run["pairs"], back=False).forward
    assert (forward[0].uri, forward[0].quarantine, forward[0].rows[0]["reason"]) == (
        run["triplets"],
        True,
        "unparseable",
    )


def test_a_prediction_walks_to_its_benchmark_image_and_the_model_that_made_it(run) -> None:
    prediction = frame(run["predictions"], ["id", "qid", "source", "model"])[2]
    found = lineage(prediction["id"][0], run["predictions"])
    assert found.problems == []
    # the question's line, read here: its image file's bytes are where the walk ends
    file, line = prediction["source"][0].rsplit(":", 1)
    question = json.loads(Path(file).read_text().splitlines()[int(line) - 1])
    (origin,) = found.origins
    assert origin.kind == "benchmark question" and origin.verified
    assert origin.image == (BENCHMARK / question["image"]).read_bytes()
    assert origin.question == question["question"] and origin.answer == question["answer"]
    assert str(question["qid"]) == prediction["qid"][0]
    # through the model identity to the model folder and its training run
    model = next(n for n in found.nodes if n.what == "model")
    assert model.id == prediction["model"][0] and model.uri == f"{run['model']}/final"
    assert [(c.name, c.ok) for c in model.checks] == [("model files", True)]
    training = next(n for n in found.nodes if n.what == "training run")
    summary = json.loads((Path(run["model"]) / "train_summary.json").read_text())
    assert training.uri == run["model"] and training.id == summary["identity"]
    assert training.fields["steps"] == summary["steps"] == 2
    # a prediction may also be named by its question id
    assert lineage(prediction["qid"][0], run["predictions"]).id == prediction["id"][0]


def test_a_parent_changed_since_is_reported_as_a_fingerprint_mismatch(
    tmp_path: Path,
) -> None:
    source = tmp_path / "source"
    shutil.copytree(SAMPLE, source)
    pairs, triplets = str(tmp_path / "pairs"), str(tmp_path / "triplets")
    ingest(str(source), pairs, IngestConfig(domain="biomed", rows_per_shard=10))
    write_triplets(pairs, triplets, n=3)
    old = Dataset(pairs).manifest.fingerprint
    rows = frame(triplets, ["id", "pair_id"])
    # the pairs are made again with another caption on the first line
    lines = (source / "data.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    changed_pair = source_lines(source)
    changed_pair = next(p for p, v in changed_pair.items() if v["line"] == 1)
    first["caption"] = "A different caption."
    (source / "data.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    ingest(str(source), pairs, IngestConfig(domain="biomed", rows_per_shard=10), overwrite=True)
    new = Dataset(pairs).manifest.fingerprint
    assert new != old

    gone = rows.filter(pl.col("pair_id") == changed_pair)["id"][0]
    found = lineage(gone, triplets, forward_from=False)
    mismatch = f"fingerprint mismatch: recorded {old}, now {new}"
    assert any(mismatch in p and "changed since" in p for p in found.problems), found.problems
    assert any(f"pair_id {changed_pair}" in p and "not found" in p for p in found.problems)
    assert found.origins == []
    # a pair that is still there: found, and the mismatch still reported
    kept = rows.filter(pl.col("pair_id") != changed_pair)["id"][0]
    found = lineage(kept, triplets, forward_from=False)
    assert any(mismatch in p for p in found.problems) and found.origins[0].verified
    result = runner.invoke(app, ["lineage", gone, "--from", triplets, "--no-forward"])
    assert result.exit_code == 1 and "fingerprint mismatch" in result.output


def test_an_unknown_id_is_a_clear_error(run) -> None:
    with pytest.raises(LineageError, match=r"no row with id 'nope' in the dataset .*mixture"):
        lineage("nope", run["mixture"])
    with pytest.raises(LineageError, match=r"any of the \d+ datasets under .*adamllm inspect"):
        lineage("nope", run["out"])
    result = runner.invoke(app, ["lineage", "nope", "--from", run["mixture"]])
    assert result.exit_code == 2
    assert "no row with id 'nope'" in result.output and "adamllm inspect" in result.output


def test_cli_lineage_json_and_text(run, tmp_path: Path) -> None:
    record = frame(run["mixture"], ["id", "pair_id"])[0]
    image = tmp_path / "image.bin"
    result = runner.invoke(
        app, ["lineage", record["id"][0], "--from", run["mixture"], "--json", "--image", str(image)]
    )
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    line = source_lines(SAMPLE)[record["pair_id"][0]]
    assert shown["origins"][0]["image_sha256"] == line["sha256"]
    assert "image" not in shown["origins"][0]  # bytes go to --image, not into the JSON
    assert image.read_bytes() == line["image"]
    assert shown["nodes"][0]["what"] == "conversations row"
    assert shown["problems"] == []

    text = runner.invoke(app, ["lineage", record["pair_id"][0], "--from", run["pairs"]])
    assert text.exit_code == 0, text.output
    for part in ("pairs row", "origin source record", "made from it", "mixture (assemble)"):
        assert part in text.output
