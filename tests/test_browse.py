"""`adamllm browse`: static HTML sites of datasets, checked as files and in a real browser."""

import itertools
import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import pytest
from corpus import changed, encode, file_states, hand_triplet, write_dataset, write_derived
from PIL import Image
from typer.testing import CliRunner

from adamllm_cli.main import app
from adamllm_core.browse import build_site
from adamllm_core.dataset import Dataset, DatasetError, DatasetNotFinishedError, ParentRef
from adamllm_core.engines import EngineConfig
from adamllm_core.filtering import FilterConfig
from adamllm_core.hashing import pair_id
from adamllm_core.ingest import IngestConfig, ingest
from adamllm_core.pipeline import AssembleConfig, assemble, filter_triplets
from adamllm_core.schemas import (
    JUDGED,
    PAIRS,
    PREDICTIONS,
    TRIPLETS,
    ImageCaptionPair,
    JudgedTriplet,
    Prediction,
)

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "biomed_pairs"
HOSTILE_CAPTION = '<script>alert("caption")</script> & "quoted" <b>bold</b>'
runner = CliRunner()


# --- datasets ----------------------------------------------------------------------------


def png(seed: int, size: tuple[int, int] = (120, 90)) -> bytes:
    colour = ((seed * 37) % 256, (seed * 91) % 256, (seed * 13) % 256)
    return encode(Image.new("RGB", size, colour), "PNG")


def generated_pair(n: int, caption: str) -> ImageCaptionPair:
    sha = f"{n:064x}"
    return ImageCaptionPair(
        id=pair_id(sha, caption),
        image=png(n),
        image_format="png",
        width=120,
        height=90,
        image_sha256=sha,
        caption=caption,
        domain="test",
        source="generated",
        source_ref=f"row {n}",
    )


def write_pairs(out: str, shards: list[int], caption=lambda n: f"generated pair {n}") -> str:
    """A pairs dataset of generated images, `shards[k]` rows in shard k."""
    starts = [sum(shards[:k]) for k in range(len(shards))]
    return write_dataset(
        out,
        PAIRS,
        (
            ([generated_pair(n, caption(n)) for n in range(start, start + rows)], [])
            for start, rows in zip(starts, shards, strict=True)
        ),
        parents=[ParentRef(uri="generated", fingerprint="generated", kind="source")],
    )


def write_triplets(pairs_uri: str, out: str) -> str:
    """A task per pair, shard k from pairs shard k, as synthesize writes them (the tiny
    synthesizer is untuned: its outputs do not parse)."""
    questions = ["Which imaging modality is used?", "In which plane is the image taken?"]

    def tasks(_: int, pairs: list[dict]) -> tuple[list, list]:
        rows = [
            hand_triplet(
                pair,
                questions[n % 2],
                "CT" if "CT" in pair["caption"] else "MRI",
                f"The caption reads: {pair['caption'][:80]}",
                synthesizer="hand",
            )
            for n, pair in enumerate(pairs)
        ]
        return rows, []

    return write_derived(pairs_uri, out, TRIPLETS, tasks, columns=["id", "domain", "caption"])


def relabel(judged_uri: str, out: str) -> str:
    """The judged rows with labels Yes / No / Open in turn: the untuned tiny judge says No
    to everything, and a filter needs several values to show that it hides rows."""
    labels = ("Yes", "No", "Open")
    numbers = itertools.count()  # over the whole dataset

    def relabelled(_: int, judged: list[dict]) -> tuple[list, list]:
        rows = []
        for row, n in zip(judged, numbers):
            label = labels[n % 3]
            scores = {f"score_{x.lower()}": -1.0 if x == label else -3.0 - n / 100 for x in labels}
            rows.append(JudgedTriplet(**{**row, **scores, "label": label}))
        return rows, []

    return write_derived(judged_uri, out, JUDGED, relabelled, stage="filter")


def write_predictions(out: str) -> str:
    rows = [
        Prediction(
            id=f"{n:032x}",
            benchmark=["vqa_rad", "slake"][n % 2],
            domain="biomed",
            qid=str(n),
            model="tiny",
            prompt=f"Question {n}: is there a <lesion>?",
            raw_output=f"raw answer {n}",
            parsed=["yes", "no"][n % 2],
            gold="yes",
            answer_type="closed",
            group="closed",
            score=[1.0, 0.0, 0.5][n % 3],
            score_corrected=None,
            fallback=n == 4,
            prompt_tokens=3,
            completion_tokens=2,
            source=f"bench.jsonl:{n}",
        )
        for n in range(9)
    ]
    return write_dataset(
        out,
        PREDICTIONS,
        [(rows, [])],
        parents=[ParentRef(uri="bench", fingerprint="bench", kind="source")],
    )


@pytest.fixture(scope="module")
def run(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The MedPix sample with a broken image, a missing one and a hostile caption added,
    taken through ingest, (hand) triplets, the tiny judge and assembly: a run folder."""
    root = tmp_path_factory.mktemp("browse-run")
    source = root / "source"
    shutil.copytree(SAMPLE, source)
    first = json.loads((source / "data.jsonl").read_text().splitlines()[0])
    (source / "images" / "broken.png").write_bytes(png(1, (400, 400))[:300])
    extra = [
        {"image": "images/broken.png", "caption": "a truncated image"},
        {"image": "images/absent.png", "caption": "an image that is not there"},
        {"image": first["image"], "caption": HOSTILE_CAPTION},
    ]
    with (source / "data.jsonl").open("a") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in extra)
    out = root / "run"
    ingest(str(source), str(out / "pairs"), IngestConfig(domain="biomed", rows_per_shard=10))
    write_triplets(str(out / "pairs"), str(out / "triplets"))
    filter_triplets(
        str(out / "triplets"),
        str(out / "filtered"),
        str(out / "rejected"),
        FilterConfig(engine=EngineConfig(model="tiny:lm"), keep=("Yes",)),
    )
    relabel(str(out / "rejected"), str(out / "judged"))
    assemble(
        str(out / "pairs"),
        str(out / "filtered"),
        {"single_stage": str(out / "mixture")},
        AssembleConfig(target_model="tiny:vlm"),
    )
    return out


# --- files -------------------------------------------------------------------------------


def pages(site: Path) -> list[Path]:
    return sorted(site.glob("page-*.html"))


def visible_text(html: str) -> str:
    return re.sub(r"<[^>]+>", " ", html)


def test_pages_per_shard_bounded_by_rows_per_page(tmp_path: Path) -> None:
    shards = [25, 7, 0, 30, 1, 25, 25, 25, 12, 25, 25, 3]
    uri = write_pairs(str(tmp_path / "pairs"), shards)
    site = tmp_path / "site"
    summary = build_site(uri, str(site), rows_per_page=10)
    expected = sum(-(-rows // 10) for rows in shards)
    assert summary.pages == expected == len(pages(site)) == 26
    assert summary.rows == summary.dataset_rows == sum(shards)
    # a page never spans shards, and together the pages hold every row once, in order
    numbers = []
    for page in pages(site):
        html = page.read_text()
        first, last = map(int, re.search(r"rows (\d+)–(\d+) of", html).groups())
        assert last - first + 1 == html.count('<article class="row') <= 10
        numbers.extend(int(n) for n in re.findall(r"<span>#(\d+)</span>", html))
    assert numbers == list(range(1, sum(shards) + 1))
    index = (site / "index.html").read_text()
    assert all(f'href="{page.name}"' in index for page in pages(site))
    assert "shard 2" not in index  # an empty shard has no page

    # fewer rows into the same folder: the pages of the larger site are removed
    smaller = build_site(uri, str(site), rows_per_page=10, max_rows=30)
    assert smaller.pages == len(pages(site)) == 4 and smaller.rows == 30
    assert "the first 30 are on these pages" in (site / "index.html").read_text()


def test_thumbnails_are_made_once_and_reused(run: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    pairs = Dataset(str(run / "pairs"))
    first = build_site(str(run / "pairs"), str(site), thumbnail_px=64)
    assert (first.thumbnails_written, first.thumbnails_reused) == (len(pairs), 0)
    thumbs = sorted((site / "thumbs" / "64").glob("*/*.jpg"))
    assert len(thumbs) == len(pairs)
    for thumb in thumbs:
        with Image.open(thumb) as image:
            assert image.format == "JPEG" and max(image.size) <= 64
    stamps = file_states(thumbs)

    again = build_site(str(run / "pairs"), str(site), thumbnail_px=64)
    assert (again.thumbnails_written, again.thumbnails_reused) == (0, len(pairs))
    # a second dataset into the same folder takes its images from the pairs' thumbnails
    triplets = build_site(str(run / "triplets"), str(site), thumbnail_px=64)
    assert triplets.thumbnails_written == 0 and triplets.rows == len(Dataset(str(run / "triplets")))
    assert changed(stamps) == []
    # images are referenced relative to the page, so the site can be moved
    html = (site / "page-00000.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert sources and all(s.startswith("thumbs/64/") for s in sources)
    assert all((site / s).is_file() for s in sources)


def test_text_from_the_data_is_escaped(run: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    build_site(str(run / "pairs"), str(site))
    html = "".join(p.read_text() for p in pages(site))
    assert "&lt;script&gt;alert(&#34;caption&#34;)&lt;/script&gt; &amp; &#34;quoted&#34;" in html
    assert "<script>alert" not in html and "<b>bold" not in html
    for page in pages(site):  # the page's own two scripts and nothing else
        assert page.read_text().count("<script") == 2
    triplets = tmp_path / "triplets"  # the caption again, beside its task
    build_site(str(run / "triplets"), str(triplets))
    html = "".join(p.read_text() for p in pages(triplets))
    assert '<dt>Caption</dt><dd class="muted">&lt;script&gt;alert' in html
    assert "<script>alert" not in html and "<b>bold" not in html
    mixture = tmp_path / "mixture"
    build_site(str(run / "mixture"), str(mixture))
    html = (mixture / "page-00000.html").read_text()
    assert "&lt;image&gt;Provide a caption" in html  # the image slot in a turn is text


def test_judged_rows_show_label_scores_and_why_rejected(run: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    summary = build_site(str(run / "rejected"), str(site))
    rows = list(Dataset(str(run / "rejected")).iter_rows())
    assert summary.rows == len(rows) > 0
    text = " ".join(visible_text(p.read_text()) for p in pages(site))
    row = rows[0]
    for shown in (row["instruction"], row["precise"], f"{row['score_no']:.3f}", "filter keeps Yes"):
        assert shown in text
    # sorted over the whole dataset, beside the pages
    lowest = (site / "sorted-score_yes-asc.html").read_text()
    scores = [float(s) for s in re.findall(r'data-s-score_yes="([-0-9.e]+)"', lowest)]
    assert scores == sorted(r["score_yes"] for r in rows)
    index = (site / "index.html").read_text()
    assert f'No</td><td class="n">{len(rows)}' in index.replace("\n", "")


def test_predictions_show_gold_prediction_and_score(tmp_path: Path) -> None:
    uri = write_predictions(str(tmp_path / "predictions"))
    site = tmp_path / "site"
    build_site(uri, str(site), rows_per_page=4)
    assert len(pages(site)) == 3
    text = visible_text((site / "page-00000.html").read_text())
    for shown in (
        "Question 0: is there a &lt;lesion&gt;?",
        "Gold",
        "yes",
        "score 1.000",
        "vqa_rad",
    ):
        assert shown in text
    assert "fallback: random option" in visible_text((site / "page-00001.html").read_text())
    worst = (site / "sorted-score-asc.html").read_text()
    assert re.findall(r'data-s-score="([0-9.]+)"', worst)[:3] == ["0.0", "0.0", "0.0"]
    assert "<img" not in worst  # predictions carry no image
    facets = (site / "facets.js").read_text()
    data = json.loads(facets.removeprefix("window.SITE_FACETS = ").rstrip(";\n"))
    assert data["benchmark"] == {"vqa_rad": [[0, 2]], "slake": [[0, 1]]}
    assert data["fallback"]["true"] == [[1, 1]]


def test_a_run_folder_gets_a_site_per_dataset(run: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    summary = build_site(str(run), str(site))
    names = {Path(s.uri).name for s in summary.datasets}
    assert names == {"pairs", "triplets", "filtered", "rejected", "judged", "mixture"}
    pairs = Dataset(str(run / "pairs"))
    # thumbnails are made from the pairs once; every other site reuses them
    assert summary.thumbnails_written == len(pairs)
    written = {Path(sub.uri).name: sub.thumbnails_written for sub in summary.datasets}
    assert written == {name: len(pairs) if name == "pairs" else 0 for name in names}
    top = (site / "index.html").read_text()
    for name in names:
        assert f'href="{name}/index.html"' in top
    html = (site / "triplets" / "page-00000.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert sources and all(s.startswith("../thumbs/") for s in sources)
    assert all((site / "triplets" / s).resolve().is_file() for s in sources)
    # the quarantine has its own pages, its reasons counted on the dataset's index
    quarantine = pairs.quarantine()
    assert quarantine is not None
    reasons = Counter(r["reason"] for r in quarantine.iter_rows(["reason"]))
    assert set(reasons) == {"truncated", "missing_image"}
    index = (site / "pairs" / "index.html").read_text()
    for reason in reasons:
        assert f"#reason={reason}" in index
    assert (site / "pairs" / "quarantine" / "page-00000.html").is_file()


def test_bad_uris_are_clear_errors(run: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFinishedError, match="not a dataset: no manifest.json"):
        build_site(str(tmp_path / "nothing-here"), str(tmp_path / "site"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="neither a dataset"):
        build_site(str(tmp_path / "empty"), str(tmp_path / "site"))
    unfinished = tmp_path / "unfinished"
    (unfinished / "_work").mkdir(parents=True)
    with pytest.raises(DatasetNotFinishedError, match="unfinished"):
        build_site(str(unfinished), str(tmp_path / "site"))
    result = runner.invoke(app, ["browse", str(tmp_path / "nothing-here"), "--out", "x"])
    assert result.exit_code == 2 and "error:" in result.output
    assert "Traceback" not in result.output
    inside = runner.invoke(app, ["browse", str(run / "pairs"), "--out", str(run / "pairs/site")])
    assert inside.exit_code == 2 and "write the site elsewhere" in inside.output


def test_a_manifest_promising_rows_a_shard_lacks_is_a_clear_error(tmp_path: Path) -> None:
    uri = write_pairs(str(tmp_path / "pairs"), [3])
    manifest_path = tmp_path / "pairs" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["rows"] = manifest["shards"][0]["rows"] = 5
    manifest_path.write_text(json.dumps(manifest))
    shard = manifest["shards"][0]["path"]
    with pytest.raises(DatasetError, match=f"{shard} holds 3 rows, its manifest says 5"):
        build_site(uri, str(tmp_path / "site"), rows_per_page=2)


def test_run_folder_names_are_links_and_unfinished_datasets_are_named(tmp_path: Path) -> None:
    run = tmp_path / "run"
    odd = "javascript:alert(1) #x"  # a folder name is data: it must stay a relative path
    write_pairs(str(run / "pairs"), [2])
    write_pairs(str(run / odd), [3])
    (run / "broken" / "_work").mkdir(parents=True)  # a stage writing it was interrupted
    site = tmp_path / "site"
    summary = build_site(str(run), str(site))
    assert sorted(Path(s.uri).name for s in summary.datasets) == sorted(["pairs", odd])
    assert list(summary.skipped) == ["broken"] and "unfinished" in summary.skipped["broken"]
    top = (site / "index.html").read_text()
    links = re.findall(r'<a href="([^"]+)"', top)
    assert "javascript%3Aalert%281%29%20%23x/index.html" in links
    assert not any(link.startswith("javascript:") for link in links)
    assert all((site / unquote(link)).is_file() for link in links)
    assert "broken cannot be read" in visible_text(top)
    result = runner.invoke(app, ["browse", str(run), "--out", str(tmp_path / "again")])
    assert result.exit_code == 0, result.output
    assert "no site for broken" in " ".join(result.output.split())
    (run / "pairs" / "manifest.json").unlink()
    (run / odd / "manifest.json").unlink()
    with pytest.raises(DatasetError, match="nor a folder holding finished datasets; broken: "):
        build_site(str(run), str(site))


def test_cli_prints_where_the_site_is(run: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = runner.invoke(
        app, ["browse", str(run / "pairs"), "--out", str(site), "--rows-per-page", "5"]
    )
    assert result.exit_code == 0, result.output
    rows = len(Dataset(str(run / "pairs")))
    assert f"{rows} written, 0 reused" in result.output
    assert str(site / "index.html") in result.output.replace("\n", "")
    shards = Dataset(str(run / "pairs")).manifest.shards
    assert len(pages(site)) == sum(-(-s.rows // 5) for s in shards)


def test_a_site_on_object_storage(s3_bucket: str, tmp_path: Path) -> None:
    import s3fs

    uri = write_pairs(f"{s3_bucket}/pairs", [5, 4])
    summary = build_site(uri, f"{s3_bucket}/site", rows_per_page=3)
    assert summary.index == f"{s3_bucket}/site/index.html" and summary.pages == 4
    assert summary.thumbnails_written == 9
    fs = s3fs.S3FileSystem(endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    bucket = s3_bucket.removeprefix("s3://")
    names = {p.removeprefix(f"{bucket}/site/") for p in fs.find(f"{bucket}/site")}
    assert {"index.html", "facets.js", "page-00000.html", "page-00003.html"} <= names
    assert sum(n.endswith(".jpg") for n in names) == 9
    again = build_site(uri, f"{s3_bucket}/site", rows_per_page=3)
    assert (again.thumbnails_written, again.thumbnails_reused) == (0, 9)
    # the site copied down opens as it is: every image it names is there
    local = tmp_path / "copy"
    fs.get(f"{bucket}/site", str(local), recursive=True)
    html = (local / "page-00000.html").read_text()
    assert all((local / s).is_file() for s in re.findall(r'<img src="([^"]+)"', html))


# --- in a browser ------------------------------------------------------------------------


def load_all_images(page) -> list[int]:
    """Scroll every (lazily loaded) image into view; their natural widths once loaded."""
    for image in page.locator("img").all():
        image.scroll_into_view_if_needed()
    page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=15_000)
    return page.evaluate("Array.from(document.images).map(i => i.naturalWidth)")


def test_site_in_a_browser(run: Path, tmp_path: Path, browser) -> None:
    site = tmp_path / "site"
    build_site(str(run), str(site))
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    # every triplet's image loads, beside its task
    triplets = Dataset(str(run / "triplets"))
    shown = 0
    for index, shard in enumerate(triplets.manifest.shards):
        page.goto((site / "triplets" / f"page-{index:05d}.html").as_uri())
        widths = load_all_images(page)
        assert len(widths) == shard.rows and all(w > 0 for w in widths), widths
        shown += len(widths)
    assert shown == len(triplets)

    # the label filter: on each page, the rows with that label in its shard's Parquet
    judged = Dataset(str(run / "judged"))
    for index in range(len(judged.manifest.shards)):
        labels = Counter(r["label"] for r in judged.read_shard(index, ["label"]))
        page.goto((site / "judged" / f"page-{index:05d}.html").as_uri())
        for label, count in labels.items():
            page.select_option("select[data-facet=label]", label)
            assert page.locator("article.row:visible").count() == count
            assert (
                page.locator("#shown").inner_text()
                == f"{count} of {sum(labels.values())} rows shown"
            )
        page.select_option("select[data-facet=label]", "")
        assert page.locator("article.row:visible").count() == sum(labels.values())

    # a filter travels with "next page with matches" and sorting orders by score
    page.goto((site / "judged" / "page-00000.html").as_uri())
    page.select_option("select[data-facet=label]", "Open")
    page.select_option("#sort", "score_open:desc")
    page.locator("#jump a").last.click()
    assert page.url.endswith("page-00001.html#label=Open&sort=score_open%3Adesc")
    assert page.locator("select[data-facet=label]").input_value() == "Open"
    expected = sum(r["label"] == "Open" for r in judged.read_shard(1, ["label"]))
    assert page.locator("article.row:visible").count() == expected
    scores = page.eval_on_selector_all(
        "article.row:visible",
        "rows => rows.map(r => parseFloat(r.getAttribute('data-s-score_open')))",
    )
    assert scores == sorted(scores, reverse=True)

    # the quarantine's page lists its reasons, and its filter shows one reason's rows
    page.goto((site / "pairs" / "quarantine" / "page-00000.html").as_uri())
    options = page.eval_on_selector_all(
        "select[data-facet=reason] option", "options => options.map(o => o.value)"
    )
    assert set(options) == {"", "truncated", "missing_image"}
    page.select_option("select[data-facet=reason]", "truncated")
    assert page.locator("article.row:visible").count() == 1
    assert "a truncated image" in page.locator("article.row:visible").inner_text()

    # one screenshot, to look at: the judged page with its images and filter
    page.goto((site / "judged" / "page-00000.html").as_uri())
    load_all_images(page)
    page.evaluate("window.scrollTo(0, 0)")
    shot = tmp_path / "judged-page.png"
    page.screenshot(path=str(shot))
    shutil.copyfile(shot, "/tmp/browse-screenshot.png")
    assert errors == []
    page.close()
