"""README promises, each test written from the README sentence its docstring quotes (issue 15,
item 3): evaluation at a used place, image re-encoding, ingest inputs and the config file,
`over_length: keep`, the Table 10 presets, length-grouped batches within windows of 512 rows,
the vision tower's learning rate, credentials in Prefect logs and artifacts, and the OpenAI
engine's retries and concurrency bound."""

import http.server
import io
import json
import logging
import math
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Self

import pytest
from corpus import IMAGE_CASES, FlakyServer, encode, gradient, write_derived
from PIL import Image
from typer.testing import CliRunner

from adamllm_core.dataset import Dataset, DatasetError, read_manifest
from adamllm_core.engines import ChatRequest, EngineConfig, SamplingConfig, make_engine
from adamllm_core.engines.base import RequestRejected
from adamllm_core.evaluation.run import EvalConfig, evaluate
from adamllm_core.ingest import IngestConfig, ingest
from adamllm_core.pipeline import AssembleConfig, assemble
from adamllm_core.schemas import JUDGED

runner = CliRunner()


def invoke(*args: str) -> Any:
    """`adamllm ARGS` through CliRunner (Prefect's logging is configured by conftest)."""
    from adamllm_cli.main import app

    return runner.invoke(app, list(args))


def rows_of(uri: str) -> list[dict[str, Any]]:
    rows = list(Dataset(uri).iter_rows())
    for row in rows:
        row["metadata"] = json.loads(row["metadata"] or "{}") if "metadata" in row else {}
    return rows


def quarantine_reasons(uri: str) -> Counter[str]:
    quarantine = Dataset(uri).quarantine()
    return (
        Counter(r["reason"] for r in quarantine.iter_rows(["reason"])) if quarantine else Counter()
    )


# -- Evaluation ------------------------------------------------------------------------------


def write_questions(folder: Path, answers: tuple[str, ...] = ("yes", "no", "liver")) -> Path:
    """A benchmark in the evaluation's generic form: data.jsonl with image, question, answer."""
    (folder / "images").mkdir(parents=True)
    lines = []
    for i, answer in enumerate(answers):
        (folder / "images" / f"{i}.png").write_bytes(encode(gradient().rotate(i * 40), "PNG"))
        closed = answer in ("yes", "no")
        question = f"Is scan {i} normal?" if closed else f"Which organ is in scan {i}?"
        record = {"image": f"images/{i}.png", "qid": i, "question": question, "answer": answer}
        lines.append(json.dumps({**record, "answer_type": "CLOSED" if closed else "OPEN"}))
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_evaluation_at_a_used_place_is_an_error_unless_overwrite(
    tiny_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README, Evaluation: "Re-running a finished evaluation does no work; predictions made
    with other settings, data or code at the same place are an error unless `--overwrite`
    (or evaluate under another `--name`)." """
    data = write_questions(tmp_path / "bench")
    config = EvalConfig(
        benchmark="vqa_rad", data=str(data), engine=EngineConfig(model="tiny:vlm"), max_new_tokens=2
    )
    run = tmp_path / "eval" / "base"
    predictions = str(run / "vqa_rad" / "predictions")
    evaluate(config, str(run))
    first = read_manifest(predictions)
    evaluate(config, str(run))  # the same: no work
    assert read_manifest(predictions).created_at == first.created_at

    def refused(config: EvalConfig) -> None:
        with pytest.raises(DatasetError, match="--overwrite"):
            evaluate(config, str(run))
        assert read_manifest(predictions).to_json() == first.to_json()  # left as it was

    refused(config.model_copy(update={"max_new_tokens": 3}))  # other settings
    with monkeypatch.context() as patched:  # other code
        patched.setattr("adamllm_core.evaluation.run.code_version", lambda name: "edited")
        refused(config)
    lines = (data / "data.jsonl").read_text().replace('"answer": "liver"', '"answer": "lung"')
    (data / "data.jsonl").write_text(lines)  # other data, at the same path
    refused(config)

    # under another name: no error; with overwrite: replaced
    evaluate(config, str(tmp_path / "eval" / "other"))
    assert read_manifest(str(tmp_path / "eval" / "other" / "vqa_rad" / "predictions")).rows == 3
    summary = evaluate(config, str(run), overwrite=True)
    replaced = read_manifest(predictions)
    assert replaced.fingerprint != first.fingerprint and summary["questions"] == 3
    assert "lung" in {r["gold"] for r in Dataset(predictions).iter_rows(["gold"])}


def test_eval_command_refuses_a_used_place_until_overwrite(
    prefect_server: str, tiny_models, tmp_path: Path
) -> None:
    """README, Evaluation: "predictions made with other settings, data or code at the same
    place are an error unless `--overwrite`" (the command, through the flow `evaluate`)."""
    data = write_questions(tmp_path / "bench", answers=("yes", "no"))
    common = ["eval", "--benchmark", "vqa_rad", "--data", str(data), "--model", "tiny:vlm"]
    common += ["--name", "base", "--out", str(tmp_path / "eval")]
    first = invoke(*common, "--max-new-tokens", "2")
    assert first.exit_code == 0, first.output
    again = invoke(*common, "--max-new-tokens", "3")
    assert again.exit_code != 0 and "--overwrite" in again.output, again.output
    replaced = invoke(*common, "--max-new-tokens", "3", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    manifest = read_manifest(str(tmp_path / "eval" / "base" / "vqa_rad" / "predictions"))
    assert manifest.config["max_new_tokens"] == 3


# -- Ingest ----------------------------------------------------------------------------------

# file -> (bytes, the stored format the README's rule gives: JPEG for lossy sources, PNG
# otherwise)
REENCODED = {
    "cmyk.jpg": (IMAGE_CASES["cmyk.jpg"][0], "jpeg"),  # a CMYK JPEG
    "rotated.jpg": (IMAGE_CASES["rotated.jpg"][0], "jpeg"),  # an EXIF-rotated JPEG
    "scan.tif": (IMAGE_CASES["scan.tif"][0], "png"),  # TIFF
    "rgba.png": (IMAGE_CASES["rgba.png"][0], "png"),  # alpha
    "palette.png": (IMAGE_CASES["palette.png"][0], "png"),
    "sixteen_bit.png": (IMAGE_CASES["sixteen_bit.png"][0], "png"),
    "bitmap.bmp": (IMAGE_CASES["bitmap.bmp"][0], "png"),
    "animated.gif": (IMAGE_CASES["animated.gif"][0], "png"),
}
KEPT = {name: IMAGE_CASES[name][0] for name in ("ok_rgb.jpg", "ok_gray.png", "ok.webp")}


def write_images_source(root: Path, files: dict[str, bytes]) -> Path:
    (root / "images").mkdir(parents=True)
    lines = []
    for name, data in files.items():
        (root / "images" / name).write_bytes(data)
        lines.append(json.dumps({"image": f"images/{name}", "caption": f"an image called {name}"}))
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_reencoded_images_are_jpeg_for_lossy_sources_png_otherwise(tmp_path: Path) -> None:
    """README, Ingest (table of outcomes): "CMYK, palette, 16-bit, float, 1-bit, alpha
    (composited on white), TIFF, BMP, GIF, EXIF-rotated | normalised to 8-bit RGB or L (gray
    stays gray), JPEG for lossy sources, PNG otherwise; the change is recorded in
    `metadata.image_normalisation`", and "JPEG/PNG/WebP in RGB or L | stored byte for byte"."""
    files = {name: data for name, (data, _) in REENCODED.items()} | KEPT
    source = write_images_source(tmp_path / "src", files)
    ingest(str(source), str(tmp_path / "pairs"), IngestConfig(domain="test"))
    rows = {
        r["caption"].removeprefix("an image called "): r for r in rows_of(str(tmp_path / "pairs"))
    }
    assert set(rows) == set(files)
    for name, (original, expected) in REENCODED.items():
        row = rows[name]
        stored = Image.open(io.BytesIO(row["image"]))
        assert (row["image_format"], stored.format.lower()) == (expected, expected), name
        assert stored.mode in ("RGB", "L") and row["image"] != original, name
        normalisation = row["metadata"].get("image_normalisation")
        assert normalisation, f"{name}: no metadata.image_normalisation"
    # the change recorded names what the source was
    assert "cmyk" in json.dumps(rows["cmyk.jpg"]["metadata"]["image_normalisation"]).lower()
    assert "tif" in json.dumps(rows["scan.tif"]["metadata"]["image_normalisation"]).lower()
    assert "rgba" in json.dumps(rows["rgba.png"]["metadata"]["image_normalisation"]).lower()
    for name, original in KEPT.items():
        assert rows[name]["image"] == original, name
        assert "image_normalisation" not in rows[name]["metadata"], name


def test_a_reencoded_lossy_webp_stays_lossy(tmp_path: Path) -> None:
    """README, Ingest: "alpha (composited on white) ... normalised to 8-bit RGB or L ...,
    JPEG for lossy sources, PNG otherwise". A lossy WebP with alpha is a lossy source."""
    photo = gradient("RGBA")
    photo.putalpha(gradient("L").rotate(90))  # see-through in places
    lossy = encode(photo, "WEBP", quality=60, lossless=False)
    assert Image.open(io.BytesIO(lossy)).mode == "RGBA"
    source = write_images_source(tmp_path / "src", {"photo.webp": lossy})
    ingest(str(source), str(tmp_path / "pairs"), IngestConfig(domain="test"))
    (row,) = rows_of(str(tmp_path / "pairs"))
    assert row["metadata"]["image_normalisation"]
    assert row["image_format"] == "jpeg"


def test_annotation_files_caption_lists_and_tsv(tmp_path: Path) -> None:
    """README, Ingest: "a folder with an annotation file (`data.jsonl`, `metadata.jsonl`,
    `metadata.csv`, or the only `.jsonl/.json/.csv/.tsv` there) ... each record names an image
    (`image`, `file_name`, `image_path`, ...; relative to the file, or `--image-root`) and a
    `caption` string or `captions` list. With a list, one pair comes from the first usable
    caption and the others stay in metadata (`--captions all`: one pair per caption)." """
    # metadata.jsonl beside another .jsonl file: metadata.jsonl is the annotation file
    folder = tmp_path / "hf"
    (folder / "img").mkdir(parents=True)
    for i in range(2):
        (folder / "img" / f"{i}.png").write_bytes(encode(gradient().rotate(i * 90), "PNG"))
    records = [
        {"file_name": "img/0.png", "captions": ["  ", "A chest film.", "Frontal radiograph."]},
        {"file_name": "img/1.png", "captions": ["Axial CT.", "CT of the abdomen."]},
    ]
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "notes.jsonl").write_text('{"note": "not an annotation file"}\n')
    ingest(str(folder), str(tmp_path / "first"), IngestConfig(domain="test"))
    first = rows_of(str(tmp_path / "first"))
    assert [r["caption"] for r in first] == ["A chest film.", "Axial CT."]
    assert "Frontal radiograph." in first[0]["metadata"]["other_captions"]
    assert "A chest film." not in first[0]["metadata"]["other_captions"]
    assert first[1]["metadata"]["other_captions"] == ["CT of the abdomen."]

    every = IngestConfig.model_validate({"domain": "test", "source": {"captions": "all"}})
    ingest(str(folder), str(tmp_path / "all"), every)
    assert sorted(r["caption"] for r in rows_of(str(tmp_path / "all"))) == sorted(
        ["A chest film.", "Frontal radiograph.", "Axial CT.", "CT of the abdomen."]
    )

    # a .tsv, the only annotation file of its folder, naming images by image_path
    folder = tmp_path / "tsv"
    (folder / "pics").mkdir(parents=True)
    for i in range(3):
        (folder / "pics" / f"{i}.png").write_bytes(encode(gradient().rotate(i * 30), "PNG"))
    (folder / "pairs.tsv").write_text(
        "image_path\tcaption\n" + "".join(f"pics/{i}.png\tA scan, number {i}.\n" for i in range(3))
    )
    manifest = ingest(str(folder), str(tmp_path / "from-tsv"), IngestConfig(domain="test"))
    assert manifest.rows == 3 and quarantine_reasons(str(tmp_path / "from-tsv")) == Counter()
    assert [r["caption"] for r in rows_of(str(tmp_path / "from-tsv"))] == [
        f"A scan, number {i}." for i in range(3)
    ]


def test_ingest_flags_override_the_config_file_and_image_root(
    prefect_server: str, tmp_path: Path
) -> None:
    """README, Ingest: "Settings can also come from a YAML file (`--config ingest.yaml`, keys
    as in `IngestConfig`: `domain`, `source.*`, `image.*`, `caption.*`, `rows_per_shard`,
    `workers`); flags override it", and image paths are "relative to the file, or
    `--image-root`"."""
    images = tmp_path / "pictures"
    images.mkdir()
    for i in range(5):
        (images / f"{i}.png").write_bytes(encode(gradient().rotate(i * 20), "PNG"))
    annotations = tmp_path / "annotations"
    annotations.mkdir()  # no images here: they are under --image-root
    (annotations / "data.jsonl").write_text(
        "".join(
            json.dumps({"image": f"{i}.png", "caption": f"picture {i}"}) + "\n" for i in range(5)
        )
    )
    config = tmp_path / "ingest.yaml"
    config.write_text(
        "domain: food\n"
        "rows_per_shard: 2\n"
        f"source:\n  image_root: {tmp_path / 'elsewhere'}\n"
        "image:\n  max_aspect_ratio: 50\n"
    )
    out = tmp_path / "pairs"
    result = invoke(
        "ingest",
        str(annotations),
        "--config",
        str(config),
        "--domain",
        "biomed",
        "--image-root",
        str(images),
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    manifest = read_manifest(str(out))
    assert manifest.rows == 5 and quarantine_reasons(str(out)) == Counter()
    assert manifest.config["domain"] == "biomed"  # the flag, over the file's food
    assert manifest.config["source"]["image_root"] == str(images)  # the flag
    assert manifest.config["rows_per_shard"] == 2  # the file's, no flag given
    assert manifest.config["image"]["max_aspect_ratio"] == 50
    assert len(manifest.shards) == math.ceil(5 / 2)
    assert {r["domain"] for r in rows_of(str(out))} == {"biomed"}


# -- Assembly and training -------------------------------------------------------------------

LONG_CAPTION = " ".join(
    f"Slice {i} shows the liver, the spleen and both kidneys without a focal lesion."
    for i in range(30)
)
CAPTIONS = ["A chest film.", "Axial CT.", LONG_CAPTION, "A hand radiograph."]


@pytest.fixture(scope="module")
def pairs_and_nothing_kept(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Four pairs, one with a long caption, and a filter output that kept no triplet (so
    every record is a caption task)."""
    root = tmp_path_factory.mktemp("mixture")
    (root / "src" / "img").mkdir(parents=True)
    lines = []
    for i, caption in enumerate(CAPTIONS):
        (root / "src" / "img" / f"{i}.png").write_bytes(encode(gradient().rotate(i * 45), "PNG"))
        lines.append(json.dumps({"image": f"img/{i}.png", "caption": caption}))
    (root / "src" / "data.jsonl").write_text("\n".join(lines) + "\n")
    pairs = str(root / "pairs")
    ingest(str(root / "src"), pairs, IngestConfig(domain="biomed"))
    kept = write_derived(
        pairs, str(root / "kept"), JUDGED, lambda k, rows: ([], []), columns=["id"], stage="filter"
    )
    return pairs, kept


def test_over_length_keep_keeps_records_over_max_seq_len(
    tiny_models, pairs_and_nothing_kept: tuple[str, str], tmp_path: Path
) -> None:
    """README, the synthesis pipeline (assemble): "records over `max_seq_len` are dropped to
    the quarantine (`too_long`) or kept (`over_length: keep`)"."""
    pairs, kept = pairs_and_nothing_kept
    config = AssembleConfig(target_model="tiny:vlm", variants=("caption_only",))
    assemble(pairs, kept, {"caption_only": str(tmp_path / "full")}, config)
    tokens = {r["pair_id"]: r["tokens"] for r in Dataset(str(tmp_path / "full")).iter_rows()}
    assert len(tokens) == 4
    limit = (min(tokens.values()) + max(tokens.values())) // 2
    over = {pair for pair, n in tokens.items() if n > limit}
    assert len(over) == 1  # the long caption's record

    dropped = assemble(
        pairs,
        kept,
        {"caption_only": str(tmp_path / "drop")},
        config.model_copy(update={"max_seq_len": limit}),
    )["caption_only"]
    assert dropped.rows == 3 and quarantine_reasons(str(tmp_path / "drop")) == {"too_long": 1}

    keep = config.model_copy(update={"max_seq_len": limit, "over_length": "keep"})
    kept_all = assemble(pairs, kept, {"caption_only": str(tmp_path / "keep")}, keep)["caption_only"]
    rows = list(Dataset(str(tmp_path / "keep")).iter_rows())
    assert kept_all.rows == 4 and quarantine_reasons(str(tmp_path / "keep")) == Counter()
    assert {r["pair_id"]: r["tokens"] for r in rows} == tokens  # its true length, over the limit
    assert [r["pair_id"] for r in rows if r["tokens"] > limit] == sorted(over)


def test_presets_carry_table_10_as_the_readme_lists_them() -> None:
    """README, Training: "`train.yaml` holds `TrainConfig` keys, or `preset: NAME` plus
    overrides. Presets carry Table 10 (`qwen2-vl-2b`: lr 1e-5, ZeRO-2; `llava-v1.6-8b`: lr
    2e-5, vision 2e-6, ZeRO-3; `llama-3.2-11b`: lr 5e-6, ZeRO-3; all cosine, global batch 128,
    max length 6144), Table 9 (`synthesizer-llava-v1.6-8b`, 2 epochs) and `tiny`. ... The real
    presets turn on `gradient_checkpointing` and 4 `dataloader_workers` per rank."""
    from adamllm_core.training.trainer import load_train_config

    table_10 = {
        "qwen2-vl-2b": {"learning_rate": 1e-5, "deepspeed": "zero2"},
        "llava-v1.6-8b": {
            "learning_rate": 2e-5,
            "vision_learning_rate": 2e-6,
            "deepspeed": "zero3",
        },
        "llama-3.2-11b": {"learning_rate": 5e-6, "deepspeed": "zero3"},
    }
    for name, values in table_10.items():
        config = load_train_config({"preset": name})
        for key, value in {
            **values,
            "lr_scheduler": "cosine",
            "global_batch_size": 128,
            "max_seq_len": 6144,
            "gradient_checkpointing": True,
            "dataloader_workers": 4,
        }.items():
            assert getattr(config, key) == value, (name, key)
    synthesizer = load_train_config({"preset": "synthesizer-llava-v1.6-8b"})
    assert synthesizer.epochs == 2 and synthesizer.task == "synthesizer"
    assert synthesizer.gradient_checkpointing and synthesizer.dataloader_workers == 4
    assert load_train_config({"preset": "tiny"}).model == "tiny:vlm"
    # plus overrides
    overridden = load_train_config({"preset": "llava-v1.6-8b", "learning_rate": 1e-4})
    assert overridden.learning_rate == 1e-4 and overridden.vision_learning_rate == 2e-6
    with pytest.raises(ValueError, match="unknown preset"):
        load_train_config({"preset": "llava-v1.6-7b"})


def test_length_grouped_batches_stay_within_windows_of_512_rows() -> None:
    """README, Training: "The epoch's order is planned from each row's length alone ..., with
    row groups (64 rows) dealt to each reader ...; within a window of 512 of its rows the order
    is shuffled and cut into batches of similar length".

    One reader, one shard of 1,024 rows whose two halves (its two windows) hold the same 512
    lengths: grouped over a larger window, rows of equal length from both halves would share
    batches."""
    from adamllm_core.training.data import training_order

    lengths = [i % 512 + 1 for i in range(1024)]

    def batches(group_by_length: bool) -> list[list[int]]:
        order = training_order(
            [1024],
            64,
            lengths,
            batch_size=8,
            world=1,
            workers=0,
            seed=0,
            group_by_length=group_by_length,
        ).order
        assert sorted(order) == list(range(1024))  # every row once
        return [order[i : i + 8] for i in range(0, len(order), 8)]

    grouped = batches(True)
    for batch in grouped:
        assert len({i // 512 for i in batch}) == 1, batch  # one window's rows
        spread = max(lengths[i] for i in batch) - min(lengths[i] for i in batch)
        assert spread == 7, batch  # 8 neighbouring lengths of the window's 512
    for window in (0, 1):  # the window's batches come shuffled, not longest first
        longest = [max(lengths[i] for i in b) for b in grouped if b[0] // 512 == window]
        assert longest != sorted(longest) and longest != sorted(longest, reverse=True)

    def padding(batches: list[list[int]]) -> float:
        slots = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)
        return 1 - sum(lengths) / slots

    assert padding(grouped) < 0.02 and padding(batches(False)) > 0.2  # less padding


def test_the_vision_tower_trains_at_its_own_learning_rate(
    tiny_models, pairs_and_nothing_kept: tuple[str, str], tmp_path: Path
) -> None:
    """README, Training: "Separate learning rates for the vision tower and the rest."

    One AdamW step at a constant rate, no warm-up and no weight decay moves each weight by
    about its learning rate (Adam's first step is the rate times the gradient's sign), so
    the largest change of the vision tower's weights is its rate, the rest's theirs."""
    from safetensors.torch import load_file

    from adamllm_core.training.trainer import preset, train_to

    pairs, kept = pairs_and_nothing_kept
    mixture = str(tmp_path / "mixture")
    config = AssembleConfig(target_model="tiny:vlm", variants=("caption_only",))
    assemble(pairs, kept, {"caption_only": mixture}, config)
    rest, vision = 1e-3, 1e-5
    train_to(
        preset(
            "tiny",
            learning_rate=rest,
            vision_learning_rate=vision,
            warmup_ratio=0.0,
            lr_scheduler="constant",
            weight_decay=0.0,
            max_steps=1,
            global_batch_size=4,
            per_device_batch_size=4,
        ),
        mixture,
        str(tmp_path / "run"),
    )
    before = load_file(str(Path(tiny_models["vlm"]) / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "final" / "model.safetensors"))
    assert set(before) == set(after)
    largest: dict[str, float] = defaultdict(float)
    for name, weights in before.items():
        part = (
            "vision"
            if "vision_tower" in name
            else "projector"
            if "multi_modal_projector" in name
            else "language"
        )
        change = float((after[name] - weights).abs().max())
        largest[part] = max(largest[part], change)
    assert set(largest) == {"vision", "projector", "language"}
    # (a weight near 1.0 moves by a whole number of float32 steps: up to 0.6% off the rate)
    assert 0.5 * vision < largest["vision"] <= 1.02 * vision, dict(largest)
    assert 0.5 * rest < largest["projector"] <= 1.02 * rest, dict(largest)
    assert 0.5 * rest < largest["language"] <= 1.02 * rest, dict(largest)


# -- Credentials -----------------------------------------------------------------------------


def run_logs_and_artifacts(flow_run_id: Any) -> tuple[list[str], list[str]]:
    """Every log message of a flow run (its tasks' included) and every artifact it made, as
    the Prefect API gives them (artifacts as their full JSON)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)  # logs go to the API in batches
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200
        )
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])),
            limit=200,
        )
    return [log.message for log in logs], [a.model_dump_json() for a in artifacts]


@pytest.mark.integration
def test_credentials_never_enter_prefect_logs_or_artifacts(
    prefect_server: str, s3_server: dict[str, str], s3_bucket: str, tmp_path: Path
) -> None:
    """README, Object storage: "Credentials never enter manifests, logs or artifacts."

    An ingest flow from and to the bucket, with Prefect's run loggers at DEBUG (the suite
    runs at WARNING, which would hide what a run logs at INFO), and one that fails (a bucket
    that does not exist: its error is logged)."""
    import s3fs

    from flows.ingest import ingest_flow

    secrets = [s3_server["AWS_SECRET_ACCESS_KEY"], s3_server["AWS_ACCESS_KEY_ID"]]
    fs = s3fs.S3FileSystem(endpoint_url=s3_server["AWS_ENDPOINT_URL"])
    source = write_images_source(
        tmp_path / "src",
        {"a.png": KEPT["ok_gray.png"]}
        | {name: data for name, (data, _) in REENCODED.items() if name.endswith(".png")},
    )
    fs.put(str(source) + "/", f"{s3_bucket}/raw/", recursive=True)
    loggers = [logging.getLogger(name) for name in ("prefect.flow_runs", "prefect.task_runs")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    # A console handler Prefect configured inside an earlier test's CliRunner.invoke writes
    # to that call's closed stderr: its error report would recurse through the run's
    # logged prints. Left out meanwhile; the API handler, which this test reads, stays.
    root = logging.getLogger()
    closed = [h for h in root.handlers if getattr(getattr(h, "stream", None), "closed", False)]
    for handler in closed:
        root.removeHandler(handler)
    try:
        done = ingest_flow(
            source=f"{s3_bucket}/raw",
            out=f"{s3_bucket}/pairs",
            config=IngestConfig(domain="test", rows_per_shard=2),
            return_state=True,
        )
        failed = ingest_flow(
            source=f"{s3_bucket}/raw",
            out="s3://no-such-bucket-for-this-test/pairs",
            config=IngestConfig(domain="test"),
            return_state=True,
        )
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        for handler in closed:
            root.addHandler(handler)
    assert done.is_completed() and failed.is_failed()
    logs, artifacts = run_logs_and_artifacts(done.state_details.flow_run_id)
    assert any(f"{s3_bucket}/pairs" in message for message in logs), logs  # it did log
    assert any('"ingest-stats"' in artifact for artifact in artifacts), artifacts
    failed_logs, failed_artifacts = run_logs_and_artifacts(failed.state_details.flow_run_id)
    assert any("Traceback" in message for message in failed_logs), failed_logs  # the error
    for text in [*logs, *artifacts, *failed_logs, *failed_artifacts]:
        for secret in secrets:
            assert secret not in text, text


# -- The OpenAI-compatible engine ------------------------------------------------------------


class CountingServer(FlakyServer):
    """test_engines' loopback server (port 0, its own state behind its own lock) with a
    handler that counts the requests in flight at once and each prompt's attempts, and
    answers by the prompt: "429 ..." 429 at the first attempt, "drop ..." the connection
    closed unanswered at the first attempt, "slow ..." an answer after `slow_s` at the first
    attempt, "always 429 ...", "bad ..." 400; else a completion echoing the prompt after
    `hold_s`."""

    def __init__(self, hold_s: float = 0.0, slow_s: float = 0.0) -> None:
        super().__init__()
        self.RequestHandlerClass = CountingHandler
        self.hold_s, self.slow_s = hold_s, slow_s
        self.in_flight = 0
        self.most_in_flight = 0
        self.attempts: Counter[str] = Counter()
        self.times: dict[str, list[float]] = defaultdict(list)

    def __enter__(self) -> Self:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class CountingHandler(http.server.BaseHTTPRequestHandler):
    server: CountingServer

    def do_POST(self) -> None:
        prompt = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["prompt"]
        server = self.server
        with server.lock:
            server.in_flight += 1
            server.most_in_flight = max(server.most_in_flight, server.in_flight)
            server.attempts[prompt] += 1
            attempt = server.attempts[prompt]
            server.times[prompt].append(time.monotonic())
        try:
            time.sleep(
                server.slow_s if prompt.startswith("slow") and attempt == 1 else server.hold_s
            )
        finally:
            with server.lock:  # before answering: the client may send its next request then
                server.in_flight -= 1
        if prompt.startswith("drop") and attempt == 1:
            self.close_connection = True  # closed without a response: a transport error
            return
        status = 200
        if prompt.startswith("always 429") or (prompt.startswith("429") and attempt == 1):
            status = 429
        elif prompt.startswith("bad"):
            status = 400
        body = (
            json.dumps(
                {
                    "choices": [{"text": f"re: {prompt}", "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 2, "completion_tokens": 1},
                }
            ).encode()
            if status == 200
            else b'{"error": "no"}'
        )
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # "slow": the client timed out and left

    def log_message(self, *args: object) -> None:
        pass


def completion(prompt: str) -> ChatRequest:
    return ChatRequest(prompt=prompt, sampling=SamplingConfig(max_new_tokens=1))


def test_openai_engine_retries_429_transport_errors_and_timeouts_not_400() -> None:
    """README, Engines: "`openai`: any OpenAI-compatible server (`vllm serve`, ...), bounded
    concurrency, retries with backoff on 429/5xx/transport errors, timeouts"; and "One
    request the engine refuses for its own content (an HTTP 4xx other than 429 ...) is one
    quarantine row with that reason (`request_refused` ...) ... Transient errors (5xx, 429,
    timeouts) are retried and then fail the shard"."""
    with CountingServer(slow_s=5.0) as server:
        engine = make_engine(
            EngineConfig(
                kind="openai", model="m", base_url=server.url, max_retries=3, timeout_s=1.5
            )
        )
        prompts = ["429 once", "drop once", "slow once", "bad request", "fine"]
        results = engine.run([completion(p) for p in prompts])
        for prompt, result in zip(prompts, results, strict=True):
            if prompt == "bad request":
                assert result.error_reason == "request_refused", result
            else:
                assert result.error_reason is None and result.text == f"re: {prompt}", result
        assert server.attempts == {
            "429 once": 2,
            "drop once": 2,
            "slow once": 2,
            "bad request": 1,  # a 400 is not retried
            "fine": 1,
        }
        first, second = server.times["429 once"]
        assert second - first >= 0.25  # with backoff, not at once

    with CountingServer() as server:  # retries run out: the call fails, no quarantine row
        engine = make_engine(
            EngineConfig(kind="openai", model="m", base_url=server.url, max_retries=2)
        )
        with pytest.raises(Exception) as caught:  # any error but a refusal
            engine.run([completion("always 429"), completion("fine")])
        assert not isinstance(caught.value, RequestRejected)
        assert server.attempts["always 429"] == 2


def test_openai_engine_never_exceeds_max_concurrency() -> None:
    """README, Engines: "`openai`: ... bounded concurrency" (`engine.max_concurrency`)."""
    with CountingServer(hold_s=0.3) as server:
        engine = make_engine(
            EngineConfig(kind="openai", model="m", base_url=server.url, max_concurrency=3)
        )
        prompts = [f"question {i}" for i in range(12)]
        results = engine.run([completion(p) for p in prompts])
        assert [r.text for r in results] == [f"re: {p}" for p in prompts]  # in order
        assert server.most_in_flight == 3  # the bound is used, and never passed
        assert sum(server.attempts.values()) == 12
