"""Ingest end to end on local storage: every input accounted for, on generated and real data."""

import hashlib
import io
import json
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from corpus import IMAGE_CASES, changed, encode, file_states, gradient
from PIL import Image
from pydantic import ValidationError

from adamllm_core.dataset import Dataset
from adamllm_core.errors import ConfigError
from adamllm_core.images import ImagePolicy
from adamllm_core.importers import SourceOptions
from adamllm_core.ingest import IngestConfig, ingest


def readme_pair_id(original: bytes, caption: str) -> str:
    """The README's pair id, computed here: sha256 of (the sha256 of the original image
    file's bytes, in hex), a NUL and the caption (UTF-8); its first 32 hex digits."""
    image_sha256 = hashlib.sha256(original).hexdigest()
    return hashlib.sha256(image_sha256.encode() + b"\0" + caption.encode("utf-8")).hexdigest()[:32]


def source_lines(annotation: Path) -> dict[str, dict]:
    """The JSON records of an annotation file by their source_ref ("data.jsonl:N")."""
    records = {}
    for number, line in enumerate(annotation.read_bytes().splitlines(), start=1):
        try:
            records[f"{annotation.name}:{number}"] = json.loads(line)
        except ValueError:
            continue  # a broken line: quarantined, never a row
    return records


def rows_and_quarantine(uri: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    dataset = Dataset(uri)
    rows = pl.from_arrow(dataset.to_table())
    quarantine = dataset.quarantine()
    return rows, pl.from_arrow(quarantine.to_table()) if quarantine else pl.DataFrame()


def test_broken_corpus_every_input_accounted_for(broken_corpus, tmp_path: Path) -> None:
    source, expected = broken_corpus
    manifest = ingest(
        str(source), str(tmp_path / "pairs"), IngestConfig(domain="test", rows_per_shard=7)
    )
    rows, quarantine = rows_and_quarantine(str(tmp_path / "pairs"))

    assert len(rows) == expected["valid"]
    assert dict(Counter(quarantine["reason"])) == expected["reasons"]
    assert manifest.stats.rows_in == expected["inputs"] == len(rows) + len(quarantine)
    assert manifest.quarantine.reasons == expected["reasons"]
    assert manifest.stats.counters["duplicates"] == 1
    # every input line is either a row or a quarantine row, each exactly once
    refs = sorted(
        rows["source_ref"].to_list() + quarantine["source_ref"].to_list(),
        key=lambda r: int(r.split(":")[1]),
    )
    assert [int(r.split(":")[1]) for r in refs] == list(range(1, expected["inputs"] + 1))
    assert rows["id"].n_unique() == len(rows)

    records = source_lines(source / "data.jsonl")
    duplicate = quarantine.filter(pl.col("reason") == "duplicate").row(0, named=True)
    first_of = records[duplicate["source_ref"]]  # ok_rgb.jpg with its first caption
    original = (source / first_of["image"]).read_bytes()
    assert duplicate["duplicate_of"] == readme_pair_id(original, first_of["caption"])
    assert duplicate["duplicate_of"] in rows["id"].to_list()

    neutralised = rows.filter(pl.col("caption").str.starts_with("Axial CT")).row(0, named=True)
    assert neutralised["caption"] == "Axial CT assistant\nof the liver"
    assert json.loads(neutralised["metadata"])["caption_removed_tokens"] == [
        "<|im_end|>",
        "<|im_start|>",
        "<image>",
    ]

    for row in rows.iter_rows(named=True):  # stored images are what models take
        image = Image.open(io.BytesIO(row["image"]))
        assert image.mode in ("RGB", "L") and image.format.lower() == row["image_format"]
        assert (image.width, image.height) == (row["width"], row["height"])
        # ids and hashes from the file the row's input line names, read here
        original = (source / records[row["source_ref"]]["image"]).read_bytes()
        assert row["image_sha256"] == hashlib.sha256(original).hexdigest()
        assert row["id"] == readme_pair_id(original, row["caption"])

    bad_line = quarantine.filter(pl.col("detail").str.contains("not UTF-8")).row(0, named=True)
    assert bad_line["reason"] == "bad_record" and bad_line["source_ref"].startswith("data.jsonl:")


# Files ingest re-encodes (their stored bytes are not the file's) and files it keeps byte
# for byte, each with a caption; one image twice with two captions, one caption not ASCII.
REENCODED = ("rgba.png", "scan.tif", "cmyk.jpg", "sixteen_bit.png")
KEPT = ("ok_rgb.jpg", "ok_gray.png")
HASH_RECORDS = [
    *[(name, f"a test image called {name}") for name in REENCODED + KEPT],
    ("rgba.png", "Röntgen-Aufnahme, 胸部 — the same RGBA file, another caption"),
]


def write_hash_corpus(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    for name in REENCODED + KEPT:
        (root / "images" / name).write_bytes(IMAGE_CASES[name][0])
    with (root / "data.jsonl").open("w", encoding="utf-8") as handle:
        for name, caption in HASH_RECORDS:
            record = {"image": f"images/{name}", "caption": caption}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return root


def test_pair_ids_and_image_hashes_are_of_the_original_files(tmp_path: Path) -> None:
    """README: a pair's `id` is the sha256 of its original image bytes' sha256, a NUL and
    the caption (32 hex digits), and `image_sha256` is the sha256 of the original file,
    not of the normalised image stored in the row. Both computed here with hashlib from
    the files on disk."""
    source = write_hash_corpus(tmp_path / "src")
    manifest = ingest(str(source), str(tmp_path / "pairs"), IngestConfig(domain="test"))
    rows, quarantine = rows_and_quarantine(str(tmp_path / "pairs"))
    assert manifest.rows == len(HASH_RECORDS) and len(quarantine) == 0
    assert rows["caption"].to_list() == [caption for _, caption in HASH_RECORDS]
    for row, (name, caption) in zip(rows.iter_rows(named=True), HASH_RECORDS, strict=True):
        original = (source / "images" / name).read_bytes()
        stored_sha256 = hashlib.sha256(row["image"]).hexdigest()
        assert row["image_sha256"] == hashlib.sha256(original).hexdigest(), name
        assert row["id"] == readme_pair_id(original, caption), name
        normalisation = json.loads(row["metadata"]).get("image_normalisation")
        if name in REENCODED:  # the hashes are the file's, not the stored image's
            assert normalisation and normalisation["changes"], name
            assert row["image"] != original and row["image_sha256"] != stored_sha256, name
            assert row["id"] != readme_pair_id(row["image"], caption), name
        else:
            assert name in KEPT and normalisation is None
            assert row["image"] == original and row["image_sha256"] == stored_sha256, name
    # one file, two captions: two pairs with one image hash and two ids
    rgba = rows.filter(pl.col("source_ref").is_in(["data.jsonl:1", f"data.jsonl:{len(rows)}"]))
    assert rgba["image_sha256"].n_unique() == 1 and rgba["id"].n_unique() == 2


def test_control_tokens_can_quarantine_instead(broken_corpus, tmp_path: Path) -> None:
    source, expected = broken_corpus
    config = IngestConfig.model_validate(
        {"domain": "test", "caption": {"control_tokens": "quarantine"}}
    )
    manifest = ingest(str(source), str(tmp_path / "pairs"), config)
    # the mixed one and the tokens-only one (an empty caption once its tokens are removed)
    assert manifest.quarantine.reasons == {
        **expected["reasons"],
        "control_tokens": 2,
        "empty_caption": expected["reasons"]["empty_caption"] - 1,
    }
    assert manifest.rows == expected["valid"] - 1


def test_workers_and_prefetch_give_identical_output(
    broken_corpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One or two decoding processes, reading ahead and writing behind or not: the same
    shards (byte for byte: equal sha256), the same quarantine, the same fingerprint."""
    source, _ = broken_corpus
    manifests = []
    for workers, prefetch in ((1, "0"), (1, "1"), (2, "0"), (2, "1")):
        monkeypatch.setenv("ADAMLLM_PREFETCH", prefetch)
        manifests.append(
            ingest(
                str(source),
                str(tmp_path / f"{workers}-{prefetch}"),
                IngestConfig(domain="test", rows_per_shard=9, workers=workers),
            )
        )

    def quarantine_files(run: str) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in (tmp_path / run).rglob("_quarantine/**/*.parquet")}

    first = manifests[0]
    assert len(first.shards) > 2 and len(quarantine_files("1-0")) > 2
    for other, run in zip(manifests[1:], ("1-1", "2-0", "2-1"), strict=True):
        assert other.fingerprint == first.fingerprint and other.shards == first.shards
        assert quarantine_files(run) == quarantine_files("1-0")


def test_rerun_is_a_no_op(broken_corpus, tmp_path: Path) -> None:
    source, _ = broken_corpus
    out = tmp_path / "pairs"
    first = ingest(str(source), str(out), IngestConfig(domain="test"))
    stamps = file_states(p for p in out.rglob("*") if p.is_file())
    again = ingest(str(source), str(out), IngestConfig(domain="test"))
    assert again == first
    assert changed(stamps) == []
    assert {p for p in out.rglob("*") if p.is_file()} == set(stamps)  # and nothing new


def test_changed_source_is_a_new_identity(broken_corpus, tmp_path: Path) -> None:
    source, _ = broken_corpus
    first = ingest(str(source), str(tmp_path / "a"), IngestConfig(domain="test"))
    with open(source / "data.jsonl", "a") as handle:
        handle.write(json.dumps({"image": "images/ok.webp", "caption": "appended later"}) + "\n")
    second = ingest(str(source), str(tmp_path / "b"), IngestConfig(domain="test"))
    assert second.parents[0].fingerprint != first.parents[0].fingerprint
    assert second.rows == first.rows + 1


def test_fingerprint_differs_when_content_or_config_does(tmp_path: Path) -> None:
    """Equal content, equal fingerprint; one caption changed, one record removed or another
    config (here one that changes no row): another fingerprint each."""
    source = write_hash_corpus(tmp_path / "src")
    annotation = source / "data.jsonl"
    config = IngestConfig(domain="test", rows_per_shard=3)
    runs = {"base": ingest(str(source), str(tmp_path / "base"), config)}
    runs["same"] = ingest(str(source), str(tmp_path / "same"), config)
    larger = config.model_copy(update={"image": ImagePolicy(max_pixels=40_000_000)})
    runs["config"] = ingest(str(source), str(tmp_path / "config"), larger)

    # one caption edited in place, to one of the same length, the file's stamp put back:
    # the source's listing is unchanged (and this process's scan of the annotation file is
    # cached by size and stamp), so the rows' content is what must tell them apart
    text, stat = annotation.read_text(encoding="utf-8"), annotation.stat()
    edited = text.replace("a test image called scan.tif", "a test image called SCAN.TIF")
    assert edited != text and len(edited.encode()) == len(text.encode())
    annotation.write_text(edited, encoding="utf-8")
    os.utime(annotation, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    runs["caption"] = ingest(str(source), str(tmp_path / "caption"), config)

    annotation.write_text("".join(text.splitlines(keepends=True)[:-1]), encoding="utf-8")
    runs["row_removed"] = ingest(str(source), str(tmp_path / "row_removed"), config)

    fingerprints = {name: manifest.fingerprint for name, manifest in runs.items()}
    assert fingerprints["same"] == fingerprints["base"]
    others = [fingerprints[k] for k in ("config", "caption", "row_removed")]
    assert fingerprints["base"] not in others and len(set(others)) == 3
    base = runs["base"]
    # another config with the same rows: the shards' bytes are equal, the identity is not
    assert [s.sha256 for s in runs["config"].shards] == [s.sha256 for s in base.shards]
    assert runs["config"].config_hash != base.config_hash
    assert runs["caption"].rows == base.rows and runs["row_removed"].rows == base.rows - 1


# --- the bundles in ../shared/data ------------------------------------------------------

BUNDLE_CONFIGS = {
    "medpix_captions": ({}, 120),
    "rsicd_captions": ({}, 300),
    "food101_mini": ({"caption_field": "label"}, 90),
    "vqa_rad_train": ({"caption_template": "Question: {question} Answer: {answer}"}, 1152),
}


@pytest.mark.parametrize("bundle", sorted(BUNDLE_CONFIGS))
def test_shared_bundles(bundle: str, shared_data: Path, tmp_path: Path) -> None:
    options, records = BUNDLE_CONFIGS[bundle]
    config = IngestConfig(domain="test", source=SourceOptions(**options), workers=2)
    manifest = ingest(str(shared_data / bundle), str(tmp_path / bundle), config)
    rows, quarantine = rows_and_quarantine(str(tmp_path / bundle))
    assert manifest.stats.counters["records_in"] == records
    assert len(rows) + len(quarantine) == records  # nothing lost
    reasons = set(quarantine["reason"].to_list()) if len(quarantine) else set()
    assert reasons <= {"duplicate"}  # the real bundles have no broken inputs, only repeats
    assert len(rows) == rows["id"].n_unique() == records - len(quarantine)
    n_images = len(
        {
            json.loads(line)["image"]
            for line in (shared_data / bundle / "data.jsonl").read_text().splitlines()
        }
    )
    assert rows["image_sha256"].n_unique() <= n_images
    for row in rows.head(20).iter_rows(named=True):
        assert Image.open(io.BytesIO(row["image"])).mode in ("RGB", "L")


def test_rsicd_all_captions_dedupes_repeated_captions(shared_data: Path, tmp_path: Path) -> None:
    lines = [
        json.loads(text)
        for text in (shared_data / "rsicd_captions" / "data.jsonl").read_text().splitlines()
    ]
    distinct = sum(len({c.strip() for c in line["captions"] if c.strip()}) for line in lines)
    config = IngestConfig(domain="remote-sensing", source=SourceOptions(captions="all"))
    manifest = ingest(str(shared_data / "rsicd_captions"), str(tmp_path / "all"), config)
    assert manifest.rows == distinct
    assert manifest.stats.rows_in == 5 * len(lines)
    assert manifest.quarantine.reasons == {"duplicate": 5 * len(lines) - distinct}


# --- other importers ----------------------------------------------------------------------


def _images(folder: Path, n: int) -> list[str]:
    (folder / "img").mkdir(parents=True)
    names = []
    for i in range(n):
        names.append(f"img/{i}.png")
        (folder / names[-1]).write_bytes(encode(gradient().rotate(i * 10), "PNG"))
    return names


def test_sharegpt_json(tmp_path: Path) -> None:
    names = _images(tmp_path, 3)
    records = [
        {
            "images": [names[0]],
            "messages": [
                {"role": "user", "content": "<image>Generate a recipe for this delicious food."},
                {"role": "assistant", "content": "Mix flour and water."},
            ],
        },
        {
            "image": names[1],
            "conversations": [
                {"from": "human", "value": "<image>\nDescribe the image."},
                {"from": "gpt", "value": "A gradient."},
                {"from": "human", "value": "More?"},
                {"from": "gpt", "value": "No."},
            ],
        },
        {"images": [names[2]], "messages": [{"role": "user", "content": "<image>hi"}]},
        {"images": [], "messages": [{"role": "assistant", "content": "no image"}]},
    ]
    (tmp_path / "train.json").write_text(json.dumps(records))
    manifest = ingest(
        str(tmp_path / "train.json"), str(tmp_path / "out"), IngestConfig(domain="food")
    )
    rows, quarantine = rows_and_quarantine(str(tmp_path / "out"))
    assert rows["caption"].to_list() == ["Mix flour and water.", "A gradient."]
    meta = [json.loads(m) for m in rows["metadata"]]
    assert meta[0]["caption_prompt"] == "Generate a recipe for this delicious food."
    assert meta[1]["extra_turns"] == 2
    assert sorted(quarantine["reason"].to_list()) == ["missing_caption", "missing_image"]
    assert manifest.stats.rows_in == 4


def test_hugging_face_style_parquet(tmp_path: Path) -> None:
    images = [encode(gradient().rotate(i * 30), "PNG") for i in range(5)]
    images[3] = b"not an image"
    table = pa.table(
        {
            "image": [{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(images)],
            "text": [f"caption {i}" for i in range(5)],
            "label": list(range(5)),
        }
    )
    (tmp_path / "src").mkdir()
    pq.write_table(table.slice(0, 3), tmp_path / "src" / "train-00000.parquet")
    pq.write_table(table.slice(3), tmp_path / "src" / "train-00001.parquet")
    manifest = ingest(str(tmp_path / "src"), str(tmp_path / "out"), IngestConfig(domain="test"))
    rows, quarantine = rows_and_quarantine(str(tmp_path / "out"))
    assert rows["caption"].to_list() == ["caption 0", "caption 1", "caption 2", "caption 4"]
    assert quarantine.row(0, named=True)["source_ref"] == "train-00001.parquet#row=0"
    assert quarantine["reason"].to_list() == ["not_an_image"]
    assert json.loads(rows["metadata"][0]) == {"label": 0}
    assert manifest.stats.rows_in == 5


def test_csv_with_caption_lists_and_sidecar_captions(tmp_path: Path) -> None:
    names = _images(tmp_path / "csv", 2)
    (tmp_path / "csv" / "metadata.csv").write_text(
        f'file_name,captions\n{names[0]},"[""  "", ""second caption""]"\n{names[1]},plain caption\n'
    )
    ingest(str(tmp_path / "csv"), str(tmp_path / "out_csv"), IngestConfig(domain="test"))
    rows, _ = rows_and_quarantine(str(tmp_path / "out_csv"))
    assert rows["caption"].to_list() == ["second caption", "plain caption"]

    names = _images(tmp_path / "side", 2)
    (tmp_path / "side" / "img" / "0.txt").write_text("sidecar caption\n")
    ingest(str(tmp_path / "side"), str(tmp_path / "out_side"), IngestConfig(domain="test"))
    rows, quarantine = rows_and_quarantine(str(tmp_path / "out_side"))
    assert rows["caption"].to_list() == ["sidecar caption"]
    assert quarantine["reason"].to_list() == ["missing_caption"]


def test_missing_caption_field_is_a_clear_error(
    world_sources: tuple[Path, dict], tmp_path: Path
) -> None:
    labels = str(world_sources[0] / "labels")  # a `label` field, no caption field
    with pytest.raises(ConfigError, match=r"--caption-field.*label"):
        ingest(labels, str(tmp_path / "x"), IngestConfig(domain="food"))


def test_bad_config_values_name_the_field() -> None:
    def errors(build: Callable[[], object]) -> list[tuple[tuple, str]]:
        with pytest.raises(ValidationError) as caught:
            build()
        return [(error["loc"], error["type"]) for error in caught.value.errors()]

    assert errors(lambda: IngestConfig(domain="Food Stuff")) == [
        (("domain",), "string_pattern_mismatch")
    ]
    assert errors(lambda: IngestConfig(domain="food", rows_per_shard=0)) == [
        (("rows_per_shard",), "greater_than")
    ]
    misspelt = {"domain": "food", "rows_per_shrad": 5}
    assert errors(lambda: IngestConfig.model_validate(misspelt)) == [
        (("rows_per_shrad",), "extra_forbidden")
    ]
    with pytest.raises(ValidationError, match="set caption_field or caption_template, not both"):
        SourceOptions(caption_field="a", caption_template="{b}")


def test_config_hash_ignores_workers() -> None:
    assert IngestConfig(domain="a", workers=1).hash == IngestConfig(domain="a", workers=4).hash
    assert IngestConfig(domain="a").hash != IngestConfig(domain="b").hash


def test_unused_image_cases_cover_every_reason() -> None:
    reasons = {reason for _, reason, _ in IMAGE_CASES.values() if reason}
    assert reasons == {
        "truncated",
        "empty_file",
        "not_an_image",
        "too_many_pixels",
        "too_small",
        "extreme_aspect_ratio",
    }


def test_images_outside_the_root_are_refused_unread(tmp_path: Path) -> None:
    """A record may not make ingest read a file elsewhere on the machine or fetch a URL
    (a cloud metadata address, another bucket): each is quarantined, nothing is read."""
    import http.server
    import threading

    requests: list[str] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(encode(gradient(), "PNG"))

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    outside = tmp_path / "outside.png"
    outside.write_bytes(encode(gradient(), "PNG"))
    source = tmp_path / "src"
    names = _images(source, 2)
    url = f"http://127.0.0.1:{server.server_address[1]}/x.png"
    values = [
        names[0],
        f"./{names[1]}",
        "../outside.png",
        "../../../../../../etc/hostname",
        "/etc/hostname",
        str(outside),
        f"file://{outside}",
        url,
        "s3://other-bucket/x.png",
        f"img/../../{source.name}/{names[0]}",  # leaves and comes back: inside, kept
    ]
    with (source / "data.jsonl").open("w") as handle:
        for i, value in enumerate(values):
            handle.write(json.dumps({"image": value, "caption": f"caption {i}"}) + "\n")
    try:
        ingest(str(source), str(tmp_path / "out"), IngestConfig(domain="test"))
        rows, quarantine = rows_and_quarantine(str(tmp_path / "out"))
        assert rows["caption"].to_list() == ["caption 0", "caption 1", "caption 9"]
        assert quarantine["reason"].to_list() == ["image_outside_root"] * 7
        assert "allow_image_uris" in quarantine["detail"][0]
        assert requests == []
        # Named in the allow-list, the URL and the outside folder are read.
        allowed = IngestConfig(
            domain="test",
            source=SourceOptions(
                allow_image_uris=(f"http://127.0.0.1:{server.server_address[1]}/", str(tmp_path))
            ),
        )
        ingest(str(source), str(tmp_path / "allowed"), allowed)
    finally:
        server.shutdown()
    rows, quarantine = rows_and_quarantine(str(tmp_path / "allowed"))
    assert set(rows["caption"].to_list()) == {f"caption {i}" for i in (0, 1, 2, 5, 6, 7, 9)}
    assert requests and set(requests) == {"/x.png"}  # fsspec asks for its size, then reads
    assert sorted(quarantine["reason"].to_list()) == ["image_outside_root"] * 3


def test_json_annotation_files_stream_and_hash_in_one_pass(tmp_path: Path) -> None:
    import hashlib

    from adamllm_core.importers.records import read_records, scan_record_file

    wrapped = tmp_path / "wrapped.json"
    body = {
        "info": {"tags": ["a", "b"]},  # a list one level down is not the records
        "data": [{"image": "a.png", "caption": "x", "score": 0.5}, 7],
    }
    wrapped.write_bytes(b"\xef\xbb\xbf" + json.dumps(body).encode())
    scan = scan_record_file(str(wrapped))
    assert scan.records == 2 and scan.json_prefix == "data.item"
    assert scan.sha256 == hashlib.sha256(wrapped.read_bytes()).hexdigest()
    records = list(read_records(str(wrapped)))
    assert records[0] == ("wrapped.json[0]", {"image": "a.png", "caption": "x", "score": 0.5})
    assert records[1][1].reason == "bad_record"
    two = tmp_path / "two.json"
    two.write_text(json.dumps({"train": [{}], "test": [{}]}))
    with pytest.raises(ConfigError, match="expected a JSON list of records"):
        scan_record_file(str(two))
    cut = tmp_path / "cut.json"
    cut.write_text('[{"image": "a.png", "caption": ')
    with pytest.raises(ConfigError, match=r"cut.json: invalid JSON: .*premature EOF"):
        scan_record_file(str(cut))


def test_local_listing_fingerprint_matches_fsspecs_listing(tmp_path: Path) -> None:
    """The compact local walk hashes exactly what an fsspec listing of the folder gives
    (identities of datasets made before it stay valid), and follows content changes."""
    import fsspec

    from adamllm_core.storage import listing_fingerprint

    (tmp_path / "a" / "b").mkdir(parents=True)
    for name, body in [("x.png", b"1"), ("a/y.jpg", b"22"), ("a/b/z.txt", b"333"), ("a.png", b"")]:
        (tmp_path / name).write_bytes(body)
    listing = fsspec.filesystem("file").find(str(tmp_path), detail=True)
    walked = listing_fingerprint(str(tmp_path))
    assert walked == listing_fingerprint(str(tmp_path), listing=listing)
    (tmp_path / "a" / "y.jpg").write_bytes(b"223")
    assert listing_fingerprint(str(tmp_path)) != walked


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The local files opened during the test, in order."""
    from fsspec.implementations.local import LocalFileSystem

    paths: list[str] = []
    original = LocalFileSystem._open
    monkeypatch.setattr(
        LocalFileSystem,
        "_open",
        lambda self, p, *a, **k: paths.append(p) or original(self, p, *a, **k),
    )
    return paths


def test_a_csv_file_is_counted_and_hashed_in_one_read(tmp_path: Path, opened: list[str]) -> None:
    import hashlib

    from adamllm_core.importers.records import scan_record_file

    path = tmp_path / "metadata.csv"
    path.write_bytes(b'\xef\xbb\xbfimage,caption\na.png,"two\nlines"\nb.png,x\n')
    scan = scan_record_file(str(path))
    assert scan.records == 2  # a quoted line break is inside one record
    assert scan.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()  # BOM included
    assert opened == [str(path)]


def test_an_annotation_file_rewritten_in_place_is_scanned_again(
    tmp_path: Path, opened: list[str]
) -> None:
    """The scan cache must not serve an old hash for new content of the same size whose
    mtime was put back (a copy tool keeping timestamps), nor for a file changed so lately
    that its timestamps may not have moved yet; an unchanged file is read once."""
    import hashlib
    import time

    from adamllm_core.importers.records import scan_record_file

    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"image": "a.png", "caption": "red"}\n')
    before = path.stat()
    assert scan_record_file(str(path)).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert scan_record_file(str(path)).sha256 and len(opened) == 2  # just written: not cached
    time.sleep(2.1)
    scan_record_file(str(path))
    scan_record_file(str(path))
    assert len(opened) == 3  # settled: read once, then served from the cache
    with open(path, "r+b") as handle:  # in place: same inode, same size
        handle.write(b'{"image": "b.png", "caption": "tan"}\n')
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    time.sleep(2.1)  # settled again: only the changed ctime tells
    assert scan_record_file(str(path)).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
