"""Task: the HTML data browser of a run's datasets, linked from the Prefect UI."""

import re

from prefect import task
from prefect.artifacts import create_link_artifact

from adamllm_core.browse import SiteSummary, build_site
from adamllm_core.storage import normalise_uri, protocol_of, redact


def site_link(index: str) -> str:
    """Where a browser opens a site's page: file:// locally, the object's URI otherwise."""
    uri = normalise_uri(index)
    return uri if protocol_of(uri) != "file" else "file://" + uri.removeprefix("file://")


@task(name="browse")
def browse_outputs(root: str, site: str, max_rows: int | None) -> str:
    """Write the browser of every finished dataset under `root` into `site` (the first
    `max_rows` rows of each; None: all) and link each dataset's pages from the run's
    artifacts. Returns the site's index."""
    summary = build_site(root, site, max_rows=max_rows)
    datasets: list[SiteSummary] = summary.datasets or [summary]
    for dataset in datasets:
        name = redact(dataset.uri).rstrip("/").rsplit("/", 1)[-1]
        create_link_artifact(
            link=site_link(dataset.index),
            link_text=f"{name}: {dataset.rows} of {dataset.dataset_rows} rows",
            key=f"browse-{re.sub(r'[^a-z0-9-]+', '-', name.lower()).strip('-')}",
            description=f"**{name}** ({dataset.schema_name}) in the data browser",
        )
    print(f"data browser: {site_link(summary.index)}")
    return summary.index
