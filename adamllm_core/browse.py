"""A static HTML browser for datasets: `adamllm browse URI --out DIR`.

Any finished dataset (pairs, triplets, judged, conversations, predictions, quarantine,
seed; others generically), or a run folder holding several, becomes a site of plain HTML
files that needs no server: it opens from file:// and from object storage. Layout of DIR:

    DIR/index.html               manifest summary, facet counts, page links
    DIR/page-00000.html ...      rows in dataset order; one or more pages per shard
    DIR/sorted-<col>-desc.html   the highest / lowest rows by a score, over the dataset
    DIR/facets.js                which pages hold each facet value (page filters use it)
    DIR/quarantine/              the dataset's quarantine, as a site of its own
    DIR/thumbs/<px>/ab/<key>.jpg thumbnails, named by the image (pair id), written once

A run folder gets one such site per dataset (DIR/<name>/) sharing DIR/thumbs, and a top
index. Memory stays bounded whatever the size: shards are read a row group at a time, a
page's rows are written when it is full, the sorted views keep a fixed number of rows, and
facets count at most MAX_FACET_VALUES values, each with its page ranges (a few per page).
"""

import heapq
import io
import json
import math
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

from jinja2 import DictLoader, Environment
from markupsafe import Markup
from PIL import Image, ImageOps
from pydantic import BaseModel, Field

from adamllm_core.dataset import (
    MANIFEST_NAME,
    WORK_DIR,
    Dataset,
    DatasetError,
    ShardInfo,
    manifest_exists,
    read_manifest,
)
from adamllm_core.errors import ConfigError
from adamllm_core.hashing import sha256_hex
from adamllm_core.schemas import PAIRS
from adamllm_core.status import open_datasets
from adamllm_core.storage import filesystem, join, normalise_uri, redact, write_bytes_atomic

MAX_TEXT = 5000  # characters of one field on a page; a page must stay small whatever comes in
MAX_FACET_VALUES = 50  # distinct values counted per facet; the rest are counted as OTHER
MAX_FACET_TEXT = 80
MAX_INDEX_RANGES = 40  # page ranges listed per facet value on the index
MAX_SORTED_ROWS = 500  # rows on a page sorted over the whole dataset
OTHER = "(other values)"
NONE = "(none)"
THUMBS_DIR = "thumbs"
QUARANTINE_SITE = "quarantine"
FACETS_FILE = "facets.js"
PAGE_NAME = re.compile(r"(page-\d{5}|sorted-.+-(desc|asc))\.html$")
HEX_KEY = re.compile(r"[0-9a-f]{16,64}")


class SiteSummary(BaseModel):
    """What `build_site` wrote: one dataset's site, or a run folder's sites."""

    uri: str = Field(description="the dataset or run folder browsed (credentials removed)")
    schema_name: str | None = Field(description="the dataset's schema; None for a run folder")
    index: str = Field(description="URI of the site's index.html")
    rows: int = Field(description="rows on the pages (all of them unless max_rows)")
    dataset_rows: int = Field(description="rows in the dataset(s)")
    pages: int
    thumbnails_written: int = 0
    thumbnails_reused: int = Field(
        default=0, description="thumbnails found made already, of the images this site streamed"
    )
    thumbnails_failed: int = Field(default=0, description="images that could not be decoded")
    quarantine: "SiteSummary | None" = None
    datasets: list["SiteSummary"] = Field(default_factory=list, description="a run's sites")
    skipped: dict[str, str] = Field(
        default_factory=dict,
        description="a run's datasets that have no site (unfinished, unreadable), and why",
    )


# --- what each schema shows ----------------------------------------------------------------

ImageSource = Literal["own", "pair", "record"] | None


@dataclass(frozen=True)
class View:
    """How rows of one schema are shown: which template, where their image comes from
    (`own`: the row's image bytes; `pair`: the pair `pair_id` of the pairs the dataset was
    made from; `record`: a quarantine row's `record_id`, when that is such a pair), which
    columns are filters (facets) and which numbers rows sort by."""

    template: str
    image: ImageSource
    facets: tuple[str, ...] = ()
    sorts: tuple[str, ...] = ()


VIEWS = {
    "pairs": View("pairs", "own", facets=("domain", "image_format")),
    "seed": View("seed", "own", facets=("task", "split", "blank_image")),
    "triplets": View("triplets", "pair", facets=("domain", "synthesizer")),
    "judged": View(
        "judged", "pair", facets=("label", "domain"), sorts=("score_yes", "score_no", "score_open")
    ),
    "conversations": View(
        "conversations", "pair", facets=("variant", "kind", "domain"), sorts=("tokens",)
    ),
    "predictions": View(
        "predictions",
        None,
        facets=("benchmark", "group", "fallback", "domain"),
        sorts=("score", "score_corrected"),
    ),
    "quarantine": View("quarantine", "record", facets=("reason", "stage")),
}
GENERIC_VIEW = View("generic", None)


# --- thumbnails --------------------------------------------------------------------------


def make_thumbnail(data: bytes, px: int) -> bytes:
    """A JPEG of at most `px` on its long side (alpha composited on white)."""
    with Image.open(io.BytesIO(data)) as opened:
        opened.draft(None, (px, px))  # JPEG: decode at a reduced scale, far less work
        image = ImageOps.exif_transpose(opened)
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            image = Image.new("RGB", rgba.size, "white")
            image.paste(rgba, mask=rgba.getchannel("A"))
        elif image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        image.thumbnail((px, px), Image.Resampling.LANCZOS, reducing_gap=3.0)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=82, optimize=True)
        return buffer.getvalue()


def thumbnail_key(key: str) -> str:
    """A file name for an image key: ids are hex already; anything else is hashed."""
    return key if HEX_KEY.fullmatch(key) else sha256_hex(key)[:32]


Outcome = Literal["written", "reused", "failed"]


class ThumbnailStore:
    """Thumbnails under ROOT/<px>/, named by image key, each written only when absent.

    A pairs shard whose thumbnails are all there gets a marker (named by the shard's
    sha256, so a changed shard gets none), and a later run reads no image of it."""

    def __init__(self, root: str, px: int, workers: int):
        self.px = px
        self.fs, self.path = filesystem(root)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="thumbnail")
        self.written = self.reused = self.failed = 0

    def close(self) -> None:
        self.pool.shutdown()

    def relative(self, key: str) -> str:
        """The thumbnail's path relative to the thumbs folder."""
        key = thumbnail_key(key)
        return f"{self.px}/{key[:2]}/{key}.jpg"

    def exists(self, key: str) -> bool:
        return self.fs.exists(join(self.path, self.relative(key)))

    def ensure_many(self, images: list[tuple[str, bytes]]) -> dict[str, bool]:
        """Thumbnails for (key, image bytes) pairs, made in threads (Pillow decodes without
        the GIL); whether each key now has one."""
        done: dict[str, bool] = {}
        for (key, _), outcome in zip(images, self.pool.map(self._ensure, images), strict=True):
            setattr(self, outcome, getattr(self, outcome) + 1)  # the counter of that name
            done[key] = outcome != "failed"
        return done

    def _ensure(self, item: tuple[str, bytes]) -> Outcome:
        key, data = item
        path = join(self.path, self.relative(key))
        if self.fs.exists(path):
            return "reused"
        try:
            thumbnail = make_thumbnail(data, self.px)
        except Exception:  # noqa: BLE001 (Pillow raises many types on corrupt data: counted)
            return "failed"
        write_bytes_atomic(self.fs, path, thumbnail)
        return "written"

    def _marker(self, shard: ShardInfo) -> str:
        return join(self.path, str(self.px), "_done", f"{shard.sha256[:32]}.json")

    def shard_done(self, shard: ShardInfo) -> bool:
        return self.fs.exists(self._marker(shard))

    def mark_shard_done(self, shard: ShardInfo) -> None:
        write_bytes_atomic(self.fs, self._marker(shard), json.dumps({"rows": shard.rows}).encode())


def _row_batches(
    dataset: Dataset, index: int, columns: list[str] | None
) -> Iterator[list[dict[str, Any]]]:
    """One shard's rows, a row group's worth at a time (bounded memory)."""
    return (batch.to_pylist() for batch in dataset.shard_batches(index, columns))


def thumbnail_pairs(pairs: Dataset, store: ThumbnailStore, wanted: set[str] | None = None) -> None:
    """Stream the pairs once, making a thumbnail of each pair (or only of `wanted` ids,
    which are removed from the set as they are found). Shards marked done are skipped
    (or, for `wanted`, only their ids are read)."""
    for index, shard in enumerate(pairs.manifest.shards):
        if wanted is not None and not wanted:
            return
        if store.shard_done(shard):
            if wanted is None:
                store.reused += shard.rows
            else:
                for rows in _row_batches(pairs, index, ["id"]):
                    found = wanted.intersection(r["id"] for r in rows)
                    store.reused += len(found)
                    wanted -= found
            continue
        for rows in _row_batches(pairs, index, ["id", "image"]):
            images = [(r["id"], r["image"]) for r in rows if wanted is None or r["id"] in wanted]
            store.ensure_many(images)
            if wanted is not None:
                wanted.difference_update(key for key, _ in images)
        if wanted is None:
            store.mark_shard_done(shard)


# --- facets and sorted views ----------------------------------------------------------------


def facet_value(value: Any) -> str:
    if value is None:
        return NONE
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    return text if len(text) <= MAX_FACET_TEXT else text[: MAX_FACET_TEXT - 1] + "…"


class FacetIndex:
    """Per facet value: its row count and the pages holding it, as ranges of page numbers
    (a value on every page is one range). At most MAX_FACET_VALUES values per facet."""

    def __init__(self, facets: tuple[str, ...]):
        self.values: dict[str, dict[str, list[Any]]] = {f: {} for f in facets}

    def add(self, facet: str, value: str, page: int) -> None:
        values = self.values[facet]
        if value not in values and len(values) >= MAX_FACET_VALUES:
            value = OTHER
        entry = values.setdefault(value, [0, []])
        entry[0] += 1
        ranges = entry[1]
        if ranges and ranges[-1][1] >= page - 1:
            ranges[-1][1] = page
        else:
            ranges.append([page, page])

    def counts(self) -> dict[str, list[tuple[str, int, list[list[int]]]]]:
        """Per facet, (value, rows, page ranges), most rows first."""
        return {
            facet: sorted(
                ((value, n, ranges) for value, (n, ranges) in values.items()),
                key=lambda item: (-item[1], item[0]),
            )
            for facet, values in self.values.items()
        }

    def to_js(self) -> str:
        data = {
            facet: {value: ranges for value, (_, ranges) in values.items() if value != OTHER}
            for facet, values in self.values.items()
        }
        # ASCII only: no character of a value can end the script (U+2028 did, before ES2019)
        return f"window.SITE_FACETS = {json.dumps(data)};\n"


class Extremes:
    """The `size` highest and lowest rows by one number, in bounded memory."""

    def __init__(self, size: int):
        self.size = size
        self.high: list[tuple[float, int, str]] = []  # min-heap: its smallest leaves first
        self.low: list[tuple[float, int, str]] = []  # of negated values

    def add(self, value: float, order: int, html: str) -> None:
        for heap, key in ((self.high, value), (self.low, -value)):
            item = (key, -order, html)  # earlier rows win ties
            if len(heap) < self.size:
                heapq.heappush(heap, item)
            elif item > heap[0]:
                heapq.heapreplace(heap, item)

    def highest(self) -> list[str]:
        return [html for _, _, html in sorted(self.high, reverse=True)]

    def lowest(self) -> list[str]:
        return [html for _, _, html in sorted(self.low, reverse=True)]


# --- templates ----------------------------------------------------------------------------

CSS = """
:root { --ink: #1d2430; --muted: #5c6675; --line: #d9dee5; --bg: #f6f7f9; --accent: #1f5fae; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--ink); background: var(--bg); }
header, .controls, main, footer, section { max-width: 1200px; margin: 0 auto; padding: 0 16px; }
header { padding-top: 12px; }
h1 { font-size: 1.35rem; margin: 6px 0 2px; word-break: break-all; }
h2 { font-size: 1.1rem; margin: 22px 0 8px; }
a { color: var(--accent); }
nav { display: flex; gap: 14px; flex-wrap: wrap; font-size: .95rem; }
.sub, .muted { color: var(--muted); }
.controls { position: sticky; top: 0; z-index: 2; background: var(--bg); display: flex;
  flex-wrap: wrap; gap: 10px 16px; align-items: center; padding-top: 8px; padding-bottom: 8px;
  border-bottom: 1px solid var(--line); }
.controls label { font-size: .9rem; color: var(--muted); }
select, input { font: inherit; padding: 2px 4px; }
#shown { font-weight: 600; }
.row { display: grid; grid-template-columns: 1fr; gap: 14px; background: #fff;
  border: 1px solid var(--line); border-radius: 6px; padding: 12px; margin: 12px 0; }
.row.with-image { grid-template-columns: 172px 1fr; }
.row[hidden] { display: none; }
.thumb { width: 172px; height: 172px; display: flex; align-items: center;
  justify-content: center; background: #eef0f3; border-radius: 4px; color: var(--muted);
  font-size: .8rem; }
.thumb img { max-width: 160px; max-height: 160px; }
.thumb.missing img { display: none; }
.thumb.missing::after { content: "no preview"; }
.meta { font-size: .85rem; color: var(--muted); display: flex; flex-wrap: wrap; gap: 4px 12px; }
.meta code { font-size: .8rem; }
.text { white-space: pre-wrap; overflow-wrap: anywhere; margin: 6px 0; }
dl { margin: 6px 0; display: grid; grid-template-columns: 110px 1fr; gap: 4px 10px; }
dt { font-weight: 600; color: var(--muted); font-size: .9rem; }
dd { margin: 0; white-space: pre-wrap; overflow-wrap: anywhere; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; background: #f3f4f6; padding: 8px;
  border-radius: 4px; font-size: .82rem; max-height: 420px; overflow: auto; }
details summary { cursor: pointer; color: var(--accent); font-size: .9rem; }
.badge { display: inline-block; padding: 0 7px; border-radius: 10px; font-weight: 600;
  font-size: .82rem; background: #e6e9ee; color: var(--ink); }
.badge.Yes, .badge.good { background: #d8f0dc; color: #165c27; }
.badge.No, .badge.bad { background: #f8dcdc; color: #8a1c1c; }
.badge.Open, .badge.mid { background: #fbeccb; color: #7a5200; }
.badge.reason { background: #f8dcdc; color: #8a1c1c; }
.scores span.best { font-weight: 700; color: var(--ink); }
.reject { color: #8a1c1c; font-size: .9rem; margin: 4px 0; }
.turn { border-left: 3px solid var(--line); padding: 2px 10px; margin: 6px 0; }
.turn.assistant { border-color: #9cc3ee; }
.turn b { font-size: .8rem; text-transform: uppercase; color: var(--muted); }
table.facts { border-collapse: collapse; }
table.facts th { text-align: left; padding: 3px 14px 3px 0; color: var(--muted);
  font-weight: 600; vertical-align: top; white-space: nowrap; }
table.facts td { padding: 3px 14px 3px 0; vertical-align: top; overflow-wrap: anywhere; }
table.list { border-collapse: collapse; width: 100%; background: #fff; }
table.list th, table.list td { border-bottom: 1px solid var(--line); padding: 5px 8px;
  text-align: left; vertical-align: top; }
table.list td.n { text-align: right; font-variant-numeric: tabular-nums; }
.pages { display: flex; flex-wrap: wrap; gap: 4px 10px; }
.empty { padding: 30px 0; color: var(--muted); }
footer { padding-top: 10px; padding-bottom: 40px; }
"""

# Filters, sorting and text search over the rows of one page; the choice lives in the URL's
# fragment, so it survives moving to another page (the facets.js map names pages holding a
# value, for "previous / next page with matches").
SCRIPT = """
(function () {
  const list = document.getElementById('rows');
  if (!list) return;
  const rows = Array.from(list.children);
  rows.forEach((row, i) => { row.dataset.order = i; });
  const selects = Array.from(document.querySelectorAll('select[data-facet]'));
  const sorter = document.getElementById('sort');
  const search = document.getElementById('search');
  const shown = document.getElementById('shown');
  const jump = document.getElementById('jump');
  const here = parseInt(document.body.dataset.page, 10);
  function option(select, value, label) {
    const o = document.createElement('option');
    o.value = value; o.textContent = label; select.append(o);
  }
  for (const select of selects) {
    const counts = new Map();
    for (const row of rows) {
      const v = row.getAttribute('data-f-' + select.dataset.facet);
      counts.set(v, (counts.get(v) || 0) + 1);
    }
    for (const [v, n] of Array.from(counts).sort()) option(select, v, v + ' (' + n + ')');
  }
  const state = new URLSearchParams(location.hash.slice(1));
  for (const select of selects) {
    const v = state.get(select.dataset.facet);
    if (v === null) continue;
    if (!Array.from(select.options).some(o => o.value === v)) option(select, v, v + ' (0)');
    select.value = v;
  }
  if (sorter && state.get('sort')) sorter.value = state.get('sort');
  if (search && state.get('q')) search.value = state.get('q');
  function pagesWith(wanted) {
    const facets = window.SITE_FACETS;
    if (!facets) return null;
    let pages = null;
    for (const [f, v] of wanted) {
      const ranges = (facets[f] || {})[v];
      if (!ranges) return null;
      const set = new Set();
      for (const [a, b] of ranges) for (let p = a; p <= b; p++) set.add(p);
      pages = pages === null ? set : new Set(Array.from(pages).filter(p => set.has(p)));
    }
    return pages;
  }
  function link(page, hash, text) {
    const a = document.createElement('a');
    a.href = 'page-' + String(page).padStart(5, '0') + '.html' + hash;
    a.textContent = text;
    return a;
  }
  function apply() {
    const wanted = selects.filter(s => s.value !== '').map(s => [s.dataset.facet, s.value]);
    const q = search ? search.value.trim().toLowerCase() : '';
    let visible = 0;
    for (const row of rows) {
      const ok = wanted.every(([f, v]) => row.getAttribute('data-f-' + f) === v)
        && (!q || row.textContent.toLowerCase().includes(q));
      row.hidden = !ok;
      if (ok) visible++;
    }
    const [key, direction] = sorter && sorter.value ? sorter.value.split(':') : ['', ''];
    const sign = direction === 'asc' ? 1 : -1;
    const number = row => parseFloat(row.getAttribute('data-s-' + key));
    const sorted = rows.slice().sort((a, b) => {
      if (!key) return a.dataset.order - b.dataset.order;
      const x = number(a), y = number(b);
      if (isNaN(x) || isNaN(y)) return isNaN(x) - isNaN(y) || a.dataset.order - b.dataset.order;
      return sign * (x - y) || a.dataset.order - b.dataset.order;
    });
    list.append(...sorted);
    if (shown) shown.textContent = visible + ' of ' + rows.length + ' rows shown';
    const params = new URLSearchParams();
    for (const [f, v] of wanted) params.set(f, v);
    if (key) params.set('sort', sorter.value);
    if (q) params.set('q', q);
    const hash = params.toString() ? '#' + params.toString() : '';
    try { history.replaceState(null, '', location.pathname + location.search + hash); }
    catch (e) { location.hash = hash; }
    for (const a of document.querySelectorAll('a[data-keep]')) {
      a.href = a.getAttribute('data-keep') + hash;
    }
    if (!jump || isNaN(here)) return;
    jump.textContent = '';
    const pages = wanted.length ? pagesWith(wanted) : null;
    if (pages === null) return;
    const before = Array.from(pages).filter(p => p < here);
    const after = Array.from(pages).filter(p => p > here);
    jump.append(pages.size + ' pages hold these values');
    if (before.length) {
      const p = Math.max(...before);
      jump.append(' · ', link(p, hash, '← page ' + (p + 1)));
    }
    if (after.length) {
      const p = Math.min(...after);
      jump.append(' · ', link(p, hash, 'page ' + (p + 1) + ' →'));
    }
  }
  for (const control of [...selects, sorter, search]) {
    if (control) control.addEventListener('input', apply);
  }
  apply();
})();
"""

BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% block title %}{% endblock %}</title>
<style>{{ css }}</style></head>
<body{% block body_attrs %}{% endblock %}>
{% block content %}{% endblock %}
</body></html>
"""

PAGE = """{% extends "base" %}
{% block title %}{{ heading }} · {{ name }}{% endblock %}
{% block body_attrs %}{% if page is not none %} data-page="{{ page }}"{% endif %}{% endblock %}
{% block content %}
<header>
  <nav>{% if up %}<a href="{{ up }}">all datasets</a>{% endif %}
    <a href="index.html">{{ name }} index</a>
    {% if previous is not none %}<a data-keep="{{ previous }}" href="{{ previous }}">← previous page</a>{% endif %}
    {% if next is not none %}<a data-keep="{{ next }}" href="{{ next }}">next page →</a>{% endif %}
  </nav>
  <h1>{{ heading }}</h1>
  <p class="sub">{{ subheading }}</p>
</header>
<div class="controls">
  {% for facet in facets %}<label>{{ facet }} <select data-facet="{{ facet }}"><option value="">all</option></select></label>
  {% endfor %}
  {% if sorts %}<label>sort <select id="sort"><option value="">dataset order</option>
    {% for s in sorts %}<option value="{{ s }}:desc">{{ s }}, highest first</option><option value="{{ s }}:asc">{{ s }}, lowest first</option>{% endfor %}
  </select></label>{% endif %}
  <label>text <input id="search" type="search" placeholder="find on this page"></label>
  <span id="shown"></span> <span id="jump"></span>
</div>
<main id="rows">
{% for row in rows %}{{ row }}
{% endfor %}</main>
<footer><nav><a href="index.html">{{ name }} index</a>
  {% if previous is not none %}<a data-keep="{{ previous }}" href="{{ previous }}">← previous page</a>{% endif %}
  {% if next is not none %}<a data-keep="{{ next }}" href="{{ next }}">next page →</a>{% endif %}
</nav></footer>
<script src="facets.js"></script>
<script>{{ script }}</script>
{% endblock %}
"""

ROW = """<article class="row{% if image %} with-image{% endif %}"
{%- for k, v in facet_values.items() %} data-f-{{ k }}="{{ v }}"{% endfor %}
{%- for k, v in sort_values.items() %} data-s-{{ k }}="{{ v }}"{% endfor %}>
{% if image %}<div class="thumb{% if not thumb %} missing{% endif %}">{% if thumb %}<img src="{{ thumb }}" alt="image {{ image_key }}" loading="lazy" onerror="this.parentNode.classList.add('missing')">{% endif %}</div>{% endif %}
<div class="body">{% block body %}{% endblock %}</div>
</article>"""

# Parts of several rows: a task's three fields, and the caption of the pair it is about.
MACROS = """{% macro task(r) -%}
<dt>Instruction</dt><dd>{{ r.instruction | cut }}</dd><dt>Precise</dt><dd>{{ r.precise | cut }}</dd>
<dt>Informative</dt><dd>{{ r.informative | cut }}</dd>
{%- endmacro %}
{% macro caption(text) -%}
{% if text %}<dt>Caption</dt><dd class="muted">{{ text | cut }}</dd>{% endif %}
{%- endmacro %}"""

ROWS = {
    "pairs": """{% extends "row" %}{% block body %}
<div class="meta"><span>#{{ n }}</span><span>{{ r.domain }}</span>
<span>{{ r.width }}×{{ r.height }} {{ r.image_format }}</span><code>{{ r.id }}</code></div>
<p class="text">{{ r.caption | cut }}</p>
<div class="meta"><span>{{ r.source_ref | cut }}</span></div>
{% if r.metadata and r.metadata != '{}' %}<details><summary>metadata</summary><pre>{{ r.metadata | cut }}</pre></details>{% endif %}
{% endblock %}""",
    "seed": """{% extends "row" %}{% import "macros" as m %}{% block body %}
<div class="meta"><span>#{{ n }}</span><span>{{ r.task }}</span><span>{{ r.split }}</span>
{% if r.blank_image %}<span class="badge mid">blank image</span>{% endif %}<code>{{ r.id }}</code></div>
<p class="text">{{ r.caption | cut }}</p>
<dl>{{ m.task(r) }}</dl>
{% endblock %}""",
    "triplets": """{% extends "row" %}{% import "macros" as m %}{% block body %}
<div class="meta"><span>#{{ n }}</span><span>{{ r.domain }}</span><span>{{ r.turns }} turns</span>
<span>{{ r.prompt_tokens }} + {{ r.completion_tokens }} tokens</span><span>{{ r.synthesizer | cut }}</span></div>
<dl>{{ m.caption(caption) }}
{{ m.task(r) }}</dl>
<details><summary>raw output</summary><pre>{{ r.raw_output | cut }}</pre></details>
<div class="meta"><span>pair <code>{{ r.pair_id }}</code></span><span>triplet <code>{{ r.id }}</code></span></div>
{% endblock %}""",
    "judged": """{% extends "row" %}{% import "macros" as m %}{% block body %}
<div class="meta"><span>#{{ n }}</span><span class="badge {{ r.label }}">{{ r.label }}</span>
<span class="scores">{% for name, key in (('Yes', 'score_yes'), ('No', 'score_no'), ('Open', 'score_open')) %}
<span{% if best == key %} class="best"{% endif %}>{{ name }} {{ r[key] | number }}</span>{% endfor %}</span>
<span>{{ r.domain }}</span><span>judge {{ r.judge | cut }}</span></div>
{% if reject %}<p class="reject">{{ reject }}</p>{% endif %}
<dl>{{ m.caption(caption) }}
{{ m.task(r) }}
{% if r.response %}<dt>Response</dt><dd>{{ r.response | cut }}{% if r.response_rule %} <span class="muted">({{ r.response_rule }})</span>{% endif %}</dd>{% endif %}</dl>
<div class="meta"><span>pair <code>{{ r.pair_id }}</code></span><span>triplet <code>{{ r.triplet_id }}</code></span></div>
{% endblock %}""",
    "conversations": """{% extends "row" %}{% block body %}
<div class="meta"><span>#{{ n }}</span><span class="badge">{{ r.variant }}</span><span>{{ r.kind }}</span>
<span>{{ r.tokens }} tokens</span><span>{{ r.domain }}</span></div>
{% for turn in r.messages %}<div class="turn {{ turn.role }}"><b>{{ turn.role }}</b><div class="text">{{ turn.content | cut }}</div></div>{% endfor %}
<div class="meta"><span>pair <code>{{ r.pair_id }}</code></span>{% if r.triplet_id %}<span>triplet <code>{{ r.triplet_id }}</code></span>{% endif %}</div>
{% endblock %}""",
    "predictions": """{% extends "row" %}{% block body %}
<div class="meta"><span>#{{ n }}</span><span class="badge {{ grade }}">score {{ r.score | number }}</span>
{% if r.score_corrected is not none %}<span>corrected {{ r.score_corrected | number }}</span>{% endif %}
{% if r.fallback %}<span class="badge bad">fallback: random option</span>{% endif %}
<span>{{ r.benchmark }}</span><span>{{ r.group }}</span><span>qid {{ r.qid }}</span></div>
<dl><dt>Question</dt><dd>{{ r.prompt | cut }}</dd><dt>Gold</dt><dd>{{ r.gold | cut }}</dd>
<dt>Prediction</dt><dd>{% if r.parsed %}{{ r.parsed | cut }}{% else %}<span class="muted">(nothing parsed)</span>{% endif %}</dd></dl>
<details><summary>raw output</summary><pre>{{ r.raw_output | cut }}</pre></details>
<div class="meta"><span>{{ r.model | cut }}</span><span>{{ r.source | cut }}</span></div>
{% endblock %}""",
    "quarantine": """{% extends "row" %}{% block body %}
<div class="meta"><span>#{{ n }}</span><span class="badge reason">{{ r.reason }}</span>
<span>stage {{ r.stage }}</span><span>input {{ r.input_index }}</span></div>
<p class="text">{{ r.detail | cut }}</p>
<dl><dt>Source</dt><dd>{{ r.source_ref | cut }}</dd>
{% if r.record_id %}<dt>Record</dt><dd><code>{{ r.record_id }}</code></dd>{% endif %}
{% if r.duplicate_of %}<dt>Duplicate of</dt><dd><code>{{ r.duplicate_of }}</code></dd>{% endif %}
{% if r.caption %}<dt>Caption</dt><dd>{{ r.caption | cut }}</dd>{% endif %}</dl>
{% if r.record %}<details><summary>raw record</summary><pre>{{ r.record | cut }}</pre></details>{% endif %}
{% endblock %}""",
    "generic": """{% extends "row" %}{% block body %}
<div class="meta"><span>#{{ n }}</span></div>
<dl>{% for k, v in r.items() %}<dt>{{ k }}</dt><dd>{{ v | cut }}</dd>{% endfor %}</dl>
{% endblock %}""",
}

INDEX = """{% extends "base" %}
{% block title %}{{ name }} · {{ schema }}{% endblock %}
{% block content %}
<header>
  <nav>{% if up %}<a href="{{ up }}">all datasets</a>{% endif %}{% if dataset_link %}<a href="{{ dataset_link }}">the dataset</a>{% endif %}</nav>
  <h1>{{ name }}</h1>
  <p class="sub">{{ uri }}</p>
</header>
<section>
<table class="facts">
<tr><th>schema</th><td>{{ schema }} v{{ m.record_schema.version }}</td></tr>
<tr><th>rows</th><td>{{ "{:,}".format(m.rows) }} in {{ m.shards | length }} shards ({{ "%.1f" | format(bytes / 1e6) }} MB){% if shown < m.rows %}; the first {{ "{:,}".format(shown) }} are on these pages{% endif %}</td></tr>
<tr><th>stage</th><td>{{ m.stats.stage }}: {{ m.stats.rows_in }} in, {{ m.stats.rows_out }} out, {{ m.stats.quarantined.values() | sum }} quarantined, {{ m.stats.seconds }} s</td></tr>
{% for name, value in m.stats.counters.items() %}<tr><th></th><td>{{ name | replace("_", " ") }}: {{ value }}</td></tr>{% endfor %}
{% for p in parents %}<tr><th>parent</th><td>{% if p.link %}<a href="{{ p.link }}">{{ p.uri }}</a>{% else %}{{ p.uri }}{% endif %} ({{ p.kind }} {{ p.fingerprint }})</td></tr>{% endfor %}
<tr><th>fingerprint</th><td><code>{{ m.fingerprint }}</code></td></tr>
<tr><th>config</th><td><code>{{ m.config_hash }}</code></td></tr>
<tr><th>code</th><td><code>{{ m.code_version }}</code></td></tr>
<tr><th>created</th><td>{{ m.created_at }}</td></tr>
<tr><th>site built</th><td>{{ built }}</td></tr>
</table>
{% for warning in warnings %}<p class="reject">{{ warning }}</p>{% endfor %}
<details><summary>config</summary><pre>{{ config }}</pre></details>
</section>
{% if m.quarantine %}<section><h2>Quarantine: {{ "{:,}".format(m.quarantine.rows) }} rows{% if quarantine_link %} · <a href="{{ quarantine_link }}">browse them</a>{% endif %}</h2>
<table class="list"><tr><th>reason</th><th>rows</th></tr>
{% for reason, n in m.quarantine.reasons.items() %}<tr><td>{% if reason in quarantine_pages %}<a href="{{ quarantine_dir }}page-{{ "%05d" | format(quarantine_pages[reason]) }}.html#reason={{ reason | urlencode }}">{{ reason }}</a>{% else %}{{ reason }}{% endif %}</td><td class="n">{{ "{:,}".format(n) }}</td></tr>{% endfor %}
</table></section>{% endif %}
{% if sorted_views %}<section><h2>Sorted over the whole dataset</h2><div class="pages">
{% for label, href in sorted_views %}<a href="{{ href }}">{{ label }}</a>{% endfor %}</div></section>{% endif %}
{% for facet, values in facets.items() %}<section id="{{ facet }}"><h2>{{ facet }}</h2>
<table class="list"><tr><th>value</th><th>rows</th><th>pages</th></tr>
{% for value, n, ranges in values %}<tr><td>{{ value }}</td><td class="n">{{ "{:,}".format(n) }}</td><td><div class="pages">
{% if value != other %}{% for a, b in ranges[:max_ranges] %}<a href="page-{{ "%05d" | format(a) }}.html#{{ facet | urlencode }}={{ value | urlencode }}">{{ a + 1 }}{% if b > a %}–{{ b + 1 }}{% endif %}</a>{% endfor %}
{% if ranges | length > max_ranges %}<span class="muted">and {{ ranges | length - max_ranges }} more ranges</span>{% endif %}{% endif %}
</div></td></tr>{% endfor %}</table></section>{% endfor %}
<section><h2>Pages</h2>
{% if pages %}{% for shard in pages %}<p><span class="muted">shard {{ shard.index }} ({{ "{:,}".format(shard.rows) }} rows):</span>
{% for p in shard.pages %}<a href="page-{{ "%05d" | format(p.number) }}.html">{{ p.number + 1 }}</a> <span class="muted">rows {{ p.first + 1 }}–{{ p.last + 1 }}</span> {% endfor %}</p>{% endfor %}
{% else %}<p class="empty">This dataset has no rows.</p>{% endif %}
</section>
<footer></footer>
{% endblock %}
"""

RUN_INDEX = """{% extends "base" %}
{% block title %}{{ name }} · datasets{% endblock %}
{% block content %}
<header><h1>{{ name }}</h1><p class="sub">{{ uri }} · {{ sites | length }} datasets · built {{ built }}</p></header>
<section><table class="list">
<tr><th>dataset</th><th>schema</th><th>rows</th><th>quarantined</th><th>made from</th><th>fingerprint</th></tr>
{% for s in sites %}<tr><td><a href="{{ s.link }}">{{ s.name }}</a></td><td>{{ s.schema }}</td>
<td class="n">{{ "{:,}".format(s.rows) }}</td>
<td class="n">{% if s.quarantine_link %}<a href="{{ s.quarantine_link }}">{{ "{:,}".format(s.quarantined) }}</a>{% else %}{{ s.quarantined }}{% endif %}</td>
<td>{% for p in s.parents %}{% if p.link %}<a href="{{ p.link }}">{{ p.name }}</a>{% else %}<span class="muted">{{ p.name }}</span>{% endif %}{% if not loop.last %}, {% endif %}{% endfor %}</td>
<td><code>{{ s.fingerprint }}</code></td></tr>{% endfor %}
</table>
{% for name, error in unreadable %}<p class="reject">{{ name }} cannot be read: {{ error }}</p>{% endfor %}
</section>
{% endblock %}
"""


def cut_text(value: Any) -> str:
    if isinstance(value, bytes):
        text = f"<{len(value):,} bytes>"
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False, default=str)
    if len(text) <= MAX_TEXT:
        return text
    return f"{text[:MAX_TEXT]}… [{len(text) - MAX_TEXT:,} more characters]"


def format_number(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return NONE
    return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"


def _environment() -> Environment:
    templates = {
        "base": BASE,
        "page": PAGE,
        "row": ROW,
        "macros": MACROS,
        "index": INDEX,
        "run_index": RUN_INDEX,
    }
    templates.update({f"row_{name}": text for name, text in ROWS.items()})
    # autoescape: every value from the data is HTML-escaped unless marked safe here
    environment = Environment(loader=DictLoader(templates), autoescape=True)
    environment.filters["cut"] = cut_text
    environment.filters["number"] = format_number
    environment.globals.update(css=Markup(CSS), script=Markup(SCRIPT))
    return environment


TEMPLATES = _environment()


# --- one dataset's site -------------------------------------------------------------------


@dataclass
class PageRef:
    number: int
    first: int  # dataset row numbers, inclusive
    last: int


@dataclass
class ShardPages:
    index: int
    rows: int
    pages: list[PageRef] = field(default_factory=list)


@dataclass
class SiteContext:
    """Where a site sits: `up` leads from its folder to the top of DIR (the thumbs' parent),
    `links` maps dataset URIs to their site folders relative to the top."""

    thumbs: ThumbnailStore
    up: str = ""
    links: dict[str, str] = field(default_factory=dict)
    run_index: bool = False


def _pairs_ancestor(dataset: Dataset) -> tuple[Dataset | None, list[str]]:
    """The pairs dataset the images of `dataset` come from (parents walked breadth first,
    three generations at most), and warnings worth showing."""
    warnings: list[str] = []
    frontier = list(dataset.manifest.parents)
    for _ in range(3):
        following = []
        for parent in frontier:
            if parent.kind != "dataset":
                continue
            try:
                candidate = Dataset(parent.uri)
            except (DatasetError, OSError) as error:
                warnings.append(f"images: the parent {redact(parent.uri)} cannot be read: {error}")
                continue
            if candidate.manifest.record_schema.name == PAIRS.name:
                if candidate.manifest.fingerprint != parent.fingerprint:
                    warnings.append(
                        f"images: the pairs at {redact(parent.uri)} changed since this dataset was made "
                        f"(fingerprint {parent.fingerprint[:12]} then, "
                        f"{candidate.manifest.fingerprint[:12]} now): images may be missing"
                    )
                return candidate, warnings
            following.extend(candidate.manifest.parents)
        frontier = following
    return None, warnings


def _plan_pages(dataset: Dataset, rows_per_page: int, max_rows: int | None) -> list[ShardPages]:
    """Pages per shard, known before any row is read (so each page links its neighbours):
    a page never spans two shards."""
    plan: list[ShardPages] = []
    first, number = 0, 0
    budget = dataset.manifest.rows if max_rows is None else max_rows
    for index, shard in enumerate(dataset.manifest.shards):
        rows = min(shard.rows, budget)
        budget -= rows
        shard_pages = ShardPages(index=index, rows=rows)
        for start in range(0, rows, rows_per_page):
            count = min(rows_per_page, rows - start)
            shard_pages.pages.append(PageRef(number, first + start, first + start + count - 1))
            number += 1
        first += rows
        if rows:
            plan.append(shard_pages)
        if budget == 0:
            break
    return plan


def _page_name(number: int) -> str:
    return f"page-{number:05d}.html"


def _link(path: str) -> str:
    """A relative link to a site file: folder names come from the data (a `#`, a `%` or a
    `javascript:` in one must stay part of the path)."""
    return quote(path)


def _best_score(row: dict[str, Any]) -> str | None:
    scores = {k: row.get(k) for k in ("score_yes", "score_no", "score_open")}
    numbers = {k: v for k, v in scores.items() if isinstance(v, int | float)}
    return max(numbers, key=numbers.__getitem__) if numbers else None


class DatasetSite:
    """Writes one dataset's site into `out`, streaming its shards once."""

    def __init__(
        self,
        dataset: Dataset,
        out: str,
        context: SiteContext,
        *,
        rows_per_page: int,
        max_rows: int | None,
        pairs: Dataset | None = None,
        warnings: list[str] | None = None,
        name: str | None = None,
    ):
        self.dataset = dataset
        self.out = out
        self.fs, self.path = filesystem(out)
        self.context = context
        self.rows_per_page = rows_per_page
        self.max_rows = max_rows
        schema = dataset.manifest.record_schema.name
        self.view = VIEWS.get(schema, GENERIC_VIEW)
        self.name = name or dataset.uri.rstrip("/").rsplit("/", 1)[-1]
        self.pairs = pairs
        self.warnings = list(warnings or [])
        if self.view.image == "pair" and pairs is None:
            self.pairs, found = _pairs_ancestor(dataset)
            self.warnings += found
        # an image box on every row when images can be found (empty when one is missing)
        self.shows_images = self.view.image == "own" or (
            self.view.image is not None and self.pairs is not None
        )
        self.facets = FacetIndex(self.view.facets)
        self.quarantine_pages: dict[str, int] = {}
        self.extremes = {
            name: Extremes(min(rows_per_page, MAX_SORTED_ROWS)) for name in self.view.sorts
        }
        keep = dataset.manifest.config.get("keep")
        self.keep: list[str] | None = list(keep) if isinstance(keep, list | tuple) else None
        self.row_template = TEMPLATES.get_template(f"row_{self.view.template}")
        self.page_template = TEMPLATES.get_template("page")
        self.plan = _plan_pages(dataset, rows_per_page, max_rows)
        self.total_pages = sum(len(s.pages) for s in self.plan)
        self.rows_shown = sum(s.rows for s in self.plan)

    def build(self) -> SiteSummary:
        store = self.context.thumbs
        before = (store.written, store.reused, store.failed)
        if self.view.image == "pair" and self.pairs is not None and self.rows_shown:
            thumbnail_pairs(self.pairs, store, self._wanted_pairs())
        for shard_pages in self.plan:
            self._write_shard(shard_pages)
        self._write(FACETS_FILE, self.facets.to_js())
        sorted_views = self._write_sorted_views()
        self._remove_stale_pages(sorted_views)
        quarantine = self._build_quarantine()
        self._write("index.html", self._render_index(sorted_views, quarantine))
        return SiteSummary(
            uri=redact(self.dataset.uri),
            schema_name=self.dataset.manifest.record_schema.name,
            index=redact(join(self.out, "index.html")),
            rows=self.rows_shown,
            dataset_rows=self.dataset.manifest.rows,
            pages=self.total_pages,
            thumbnails_written=store.written - before[0],
            thumbnails_reused=store.reused - before[1],
            thumbnails_failed=store.failed - before[2],
            quarantine=quarantine,
        )

    def _wanted_pairs(self) -> set[str] | None:
        """With max_rows, only the pairs of the rows shown get thumbnails (a bounded set)."""
        if self.max_rows is None:
            return None
        wanted: set[str] = set()
        for shard_pages in self.plan:
            for rows in self._shard_rows(shard_pages, ["pair_id"]):
                wanted.update(r["pair_id"] for r in rows)
        return wanted

    def _shard_rows(
        self, shard_pages: ShardPages, columns: list[str]
    ) -> Iterator[list[dict[str, Any]]]:
        """The rows of a shard that go on pages (all, or the first ones with max_rows)."""
        remaining = shard_pages.rows
        for rows in _row_batches(self.dataset, shard_pages.index, columns):
            yield rows[:remaining]
            remaining -= len(rows)
            if remaining <= 0:
                return

    def _columns(self, shard: ShardInfo) -> tuple[list[str], bool]:
        """The columns a page needs, and whether image bytes are read for thumbnails (not
        for a pairs shard whose thumbnails were all made before)."""
        names = list(self.dataset.schema.arrow.names)
        own_images = self.view.image == "own" and "image" in names
        if own_images and self.context.thumbs.shard_done(shard):
            names.remove("image")
            return names, False
        return names, own_images

    def _write_shard(self, shard_pages: ShardPages) -> None:
        shard = self.dataset.manifest.shards[shard_pages.index]
        columns, make_thumbnails = self._columns(shard)
        captions = self._pair_captions(shard_pages.index)
        pages = iter(shard_pages.pages)
        page = next(pages)
        rendered: list[Markup] = []
        n = page.first
        for rows in self._shard_rows(shard_pages, columns):
            thumbs = self._thumbnails(rows, make_thumbnails)
            for row in rows:
                rendered.append(self._render_row(row, n, page.number, thumbs, captions))
                n += 1
                if n > page.last:
                    self._write_page(page, shard_pages, rendered)
                    rendered = []
                    page = next(pages, page)
        if n <= shard_pages.pages[-1].last:  # its pages are linked already: say why one is not
            raise DatasetError(
                f"{redact(self.dataset.uri)}/{shard.path} holds {n - shard_pages.pages[0].first} "
                f"rows, its manifest says {shard.rows}"
            )
        if make_thumbnails and shard_pages.rows == shard.rows:
            self.context.thumbs.mark_shard_done(shard)
        if not make_thumbnails and self.view.image == "own":
            self.context.thumbs.reused += shard_pages.rows

    def _pair_captions(self, index: int) -> dict[str, str]:
        """Captions of the pairs in pairs shard `index`: a stage writes shard k from shard k
        of its input, so a triplet's pair is usually there (if not, no caption is shown)."""
        if self.view.template not in ("triplets", "judged") or self.pairs is None:
            return {}
        if index >= len(self.pairs.manifest.shards):
            return {}
        captions: dict[str, str] = {}
        for rows in _row_batches(self.pairs, index, ["id", "caption"]):
            captions.update((r["id"], r["caption"]) for r in rows)
        return captions

    def _image_key(self, row: dict[str, Any]) -> str | None:
        """The name of the row's thumbnail; None when the row shows no image."""
        if not self.shows_images:
            return None
        if self.view.image == "own":
            return row.get("id") or (sha256_hex(row["image"])[:32] if row.get("image") else None)
        if row.get("image"):  # a conversation carrying its own image
            return sha256_hex(row["image"])[:32]
        return row.get("pair_id") if self.view.image == "pair" else row.get("record_id")

    def _thumbnails(self, rows: list[dict[str, Any]], make: bool) -> dict[str, bool]:
        """Which image keys of these rows have a thumbnail, making the missing ones from
        the rows' own image bytes."""
        store = self.context.thumbs
        keys = {}
        for row in rows:
            key = self._image_key(row)
            if key is not None:
                keys[key] = row.get("image")
        if self.view.image == "own" and not make:
            return dict.fromkeys(keys, True)
        inline = [(k, v) for k, v in keys.items() if isinstance(v, bytes)]
        done = store.ensure_many(inline) if inline else {}
        if self.view.image == "pair":
            done.update((k, True) for k in keys if k not in done)  # made from the pairs
        elif self.view.image == "record":
            # a quarantine row's record may be a pair (synthesis failures) or not
            done.update((k, store.exists(k)) for k in keys if k not in done)
        return done

    def _render_row(
        self,
        row: dict[str, Any],
        n: int,
        page: int,
        thumbs: dict[str, bool],
        captions: dict[str, str],
    ) -> Markup:
        key = self._image_key(row)
        row.pop("image", None)
        facet_values = {}
        for facet in self.view.facets:
            value = facet_value(row.get(facet))
            facet_values[facet] = value
            self.facets.add(facet, value, page)
        sort_values = {
            name: row[name]
            for name in self.view.sorts
            if isinstance(row.get(name), int | float) and not math.isnan(row[name])
        }
        thumb = None
        if key is not None and thumbs.get(key):
            thumb = f"{self.context.up}{THUMBS_DIR}/{self.context.thumbs.relative(key)}"
        label = row.get("label")
        reject = None
        if self.keep is not None and label is not None and label not in self.keep:
            reject = f"rejected: judged {label}, and the filter keeps {', '.join(self.keep)}"
        score = row.get("score")
        grade = None
        if isinstance(score, int | float):
            grade = "good" if score >= 0.999 else "bad" if score <= 0.001 else "mid"
        html = Markup(
            self.row_template.render(
                r=row,
                n=n + 1,
                image=self.shows_images and key is not None,
                image_key=key,
                thumb=thumb,
                facet_values=facet_values,
                sort_values=sort_values,
                caption=captions.get(row.get("pair_id", "")),
                best=_best_score(row),
                reject=reject,
                grade=grade,
            )
        )
        for name, value in sort_values.items():
            self.extremes[name].add(float(value), n, html)
        return html

    def _render_page(
        self, heading: str, subheading: str, rows: list[Markup], page: int | None = None
    ) -> str:
        """A page of rows; `page`: its number among the dataset's pages (None for a sorted
        view, which has no neighbours)."""
        has = page is not None
        return self.page_template.render(
            name=self.name,
            heading=f"{self.name}: {heading}",
            subheading=subheading,
            page=page,
            previous=_page_name(page - 1) if has and page > 0 else None,
            next=_page_name(page + 1) if has and page + 1 < self.total_pages else None,
            up=self._up_index(),
            facets=self.view.facets,
            sorts=self.view.sorts,
            rows=rows,
        )

    def _write_page(self, page: PageRef, shard_pages: ShardPages, rows: list[Markup]) -> None:
        html = self._render_page(
            f"page {page.number + 1} of {self.total_pages:,}",
            f"{self.dataset.manifest.record_schema.name} · shard {shard_pages.index} · rows "
            f"{page.first + 1:,}–{page.last + 1:,} of {self.dataset.manifest.rows:,}",
            rows,
            page.number,
        )
        self._write(_page_name(page.number), html)

    def _write_sorted_views(self) -> list[tuple[str, str]]:
        views = []
        for name, extremes in self.extremes.items():
            for direction, rows in (("desc", extremes.highest()), ("asc", extremes.lowest())):
                if not rows:
                    continue
                which = "highest" if direction == "desc" else "lowest"
                label = f"{len(rows):,} {which} by {name}"
                file_name = f"sorted-{name}-{direction}.html"
                html = self._render_page(
                    f"the {label}",
                    f"over all {self.rows_shown:,} rows on the pages",
                    [Markup(r) for r in rows],
                )
                self._write(file_name, html)
                views.append((label, file_name))
        return views

    def _build_quarantine(self) -> SiteSummary | None:
        quarantine = self.dataset.quarantine()
        if quarantine is None:
            return None
        pairs = self.dataset if self.view.template == "pairs" else self.pairs
        if pairs is None and self.view.image is None:
            pairs, _ = _pairs_ancestor(self.dataset)
        context = SiteContext(
            thumbs=self.context.thumbs, up=self.context.up + "../", links=self.context.links
        )
        site = DatasetSite(
            quarantine,
            join(self.out, QUARANTINE_SITE),
            context,
            rows_per_page=self.rows_per_page,
            max_rows=self.max_rows,
            pairs=pairs,
            name=f"{self.name} quarantine",
        )
        summary = site.build()
        # each reason links to the first quarantine page holding it
        for reason, _, ranges in site.facets.counts().get("reason", []):
            self.quarantine_pages[reason] = ranges[0][0]
        return summary

    def _up_index(self) -> str | None:
        return f"{self.context.up}index.html" if self.context.run_index else None

    def _render_index(
        self, sorted_views: list[tuple[str, str]], quarantine: SiteSummary | None
    ) -> str:
        manifest = self.dataset.manifest
        parents = []
        for parent in manifest.parents:
            site = self.context.links.get(normalise_uri(parent.uri))
            link = _link(f"{self.context.up}{site}/index.html") if site is not None else None
            parents.append({**parent.model_dump(), "uri": redact(parent.uri), "link": link})
        is_quarantine = self.view.template == "quarantine"
        return TEMPLATES.get_template("index").render(
            name=self.name,
            uri=redact(self.dataset.uri),
            schema=manifest.record_schema.name,
            m=manifest,
            bytes=sum(s.bytes for s in manifest.shards),
            shown=self.rows_shown,
            parents=parents,
            warnings=self.warnings,
            config=json.dumps(manifest.config, indent=2, sort_keys=True, default=str),
            built=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            up=self._up_index(),
            dataset_link="../index.html" if is_quarantine else None,
            quarantine_link=f"{QUARANTINE_SITE}/index.html" if quarantine else None,
            quarantine_dir=f"{QUARANTINE_SITE}/",
            quarantine_pages=self.quarantine_pages,
            sorted_views=sorted_views,
            facets=self.facets.counts(),
            other=OTHER,
            max_ranges=MAX_INDEX_RANGES,
            pages=self.plan,
        )

    def _write(self, name: str, text: str) -> None:
        write_bytes_atomic(self.fs, join(self.path, name), text.encode())

    def _remove_stale_pages(self, sorted_views: list[tuple[str, str]]) -> None:
        """Pages an earlier build into this folder left (a larger dataset, another schema)."""
        current = {_page_name(p.number) for s in self.plan for p in s.pages}
        current.update(name for _, name in sorted_views)
        if not self.fs.exists(self.path):
            return
        for path in self.fs.ls(self.path, detail=False):
            name = path.rstrip("/").rsplit("/", 1)[-1]
            if PAGE_NAME.fullmatch(name) and name not in current:
                self.fs.rm(path)


# --- entry points -------------------------------------------------------------------------


def _check_options(
    rows_per_page: int, thumbnail_px: int, max_rows: int | None, workers: int | None
) -> None:
    if rows_per_page < 1:
        raise ConfigError(f"rows_per_page must be at least 1, got {rows_per_page}")
    if not 16 <= thumbnail_px <= 1024:
        raise ConfigError(f"thumbnail_px must be between 16 and 1024, got {thumbnail_px}")
    if max_rows is not None and max_rows < 0:
        raise ConfigError(f"max_rows must be 0 or more, got {max_rows}")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")


def build_site(
    uri: str,
    out: str,
    *,
    rows_per_page: int = 200,
    thumbnail_px: int = 160,
    max_rows: int | None = None,
    workers: int | None = None,
) -> SiteSummary:
    """Write a static HTML site for the dataset at `uri` (or for every dataset of a run
    folder) into `out`, a local folder or object storage URI. `max_rows`: only the first
    rows of each dataset. `workers`: threads making thumbnails (default: the CPUs, at most
    4). Raises DatasetError for a URI that is neither a finished dataset nor a folder
    holding any, ConfigError for bad options."""
    _check_options(rows_per_page, thumbnail_px, max_rows, workers)
    uri, out = normalise_uri(uri), normalise_uri(out)
    if out == uri or (out.startswith(uri.rstrip("/") + "/") and manifest_exists(uri)):
        raise ConfigError(
            f"write the site elsewhere: {redact(out)} is the folder browsed or inside its dataset"
        )
    workers = workers or min(4, os.cpu_count() or 1)
    store = ThumbnailStore(join(out, THUMBS_DIR), thumbnail_px, workers)
    try:
        if manifest_exists(uri):
            site = DatasetSite(
                Dataset(uri),
                out,
                SiteContext(thumbs=store),
                rows_per_page=rows_per_page,
                max_rows=max_rows,
            )
            return site.build()
        fs, path = filesystem(uri)
        if not fs.isdir(path) or fs.exists(join(path, WORK_DIR)):
            read_manifest(uri)  # raises the data plane's own error: not a dataset, or unfinished
        opened, skipped = _run_datasets(uri)
        if not opened:
            why = "".join(f"; {name}: {reason}" for name, reason in skipped.items())
            raise DatasetError(
                f"{redact(uri)} is neither a dataset (no {MANIFEST_NAME}) nor a folder holding "
                f"finished datasets{why}. Pass a stage's output URI or a run folder."
            )
        return _build_run_site(uri, out, opened, skipped, store, rows_per_page, max_rows)
    finally:
        store.close()


def _run_datasets(uri: str) -> tuple[dict[str, Dataset], dict[str, str]]:
    """The datasets under a run folder by their path in it, and those that cannot be
    browsed (unfinished, unreadable) with why."""
    opened, refused = open_datasets(uri)
    start = len(uri.rstrip("/")) + 1
    return (
        {found[start:]: dataset for found, dataset in opened.items()},
        {found[start:]: why for found, why in refused.items()},
    )


def _site_folder(relative: str) -> str:
    # the thumbs folder and dataset sites share DIR: a dataset named `thumbs` moves aside
    first, _, rest = relative.partition("/")
    if first == THUMBS_DIR:
        first = f"{THUMBS_DIR}-dataset"
    return f"{first}/{rest}" if rest else first


def _build_run_site(
    uri: str,
    out: str,
    opened: dict[str, Dataset],
    skipped: dict[str, str],
    store: ThumbnailStore,
    rows_per_page: int,
    max_rows: int | None,
) -> SiteSummary:
    links = {dataset.uri: _site_folder(relative) for relative, dataset in opened.items()}
    # pairs first: their thumbnails are made from their own rows, and reused by the rest
    order = sorted(opened, key=lambda r: (opened[r].manifest.record_schema.name != PAIRS.name, r))
    summaries: dict[str, SiteSummary] = {}
    for relative in order:
        folder = links[opened[relative].uri]
        context = SiteContext(
            thumbs=store, up="../" * (folder.count("/") + 1), links=links, run_index=True
        )
        summaries[relative] = DatasetSite(
            opened[relative],
            join(out, folder),
            context,
            rows_per_page=rows_per_page,
            max_rows=max_rows,
        ).build()
    made = sorted(opened, key=lambda r: (opened[r].manifest.created_at, r))  # the run's order
    html = TEMPLATES.get_template("run_index").render(
        name=uri.rstrip("/").rsplit("/", 1)[-1],
        uri=redact(uri),
        sites=[_run_index_row(r, opened[r], summaries[r], links) for r in made],
        unreadable=skipped.items(),
        built=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )
    fs, path = filesystem(out)
    write_bytes_atomic(fs, join(path, "index.html"), html.encode())
    sites = [summaries[r] for r in made]
    return SiteSummary(
        uri=redact(uri),
        schema_name=None,
        index=redact(join(out, "index.html")),
        rows=sum(s.rows for s in sites),
        dataset_rows=sum(s.dataset_rows for s in sites),
        pages=sum(s.pages for s in sites),
        thumbnails_written=store.written,
        thumbnails_reused=store.reused,
        thumbnails_failed=store.failed,
        datasets=sites,
        skipped=skipped,
    )


def _run_index_row(
    relative: str, dataset: Dataset, summary: SiteSummary, links: dict[str, str]
) -> dict[str, Any]:
    """A dataset's line on a run's index: its site, and the sites of its parents."""
    manifest = dataset.manifest
    folder = links[dataset.uri]
    parents = []
    for parent in manifest.parents:
        site = links.get(normalise_uri(parent.uri))
        name = site or parent.uri.rstrip("/").rsplit("/", 1)[-1]
        parents.append({"name": name, "link": _link(f"{site}/index.html") if site else None})
    return {
        "name": relative,
        "link": _link(f"{folder}/index.html"),
        "schema": manifest.record_schema.name,
        "rows": manifest.rows,
        "quarantined": manifest.quarantine.rows if manifest.quarantine else 0,
        "quarantine_link": _link(f"{folder}/{QUARANTINE_SITE}/index.html")
        if summary.quarantine
        else None,
        "parents": parents,
        "fingerprint": manifest.fingerprint[:12],
    }


__all__ = ["SiteSummary", "ThumbnailStore", "build_site", "make_thumbnail"]
