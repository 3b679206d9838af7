"""The deployments' run forms: deployed with `prefect deploy` on a real Prefect server, each
parameter has a title, a description and a type; a run created the way the UI creates one
(the REST call with parameters) is refused when a value is bad, naming the field, and runs
on a real process worker when it is good."""

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from adamllm_core.dataset import Dataset

REPO = Path(__file__).resolve().parents[1]
SPEC = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
pytestmark = pytest.mark.integration


def prefect(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def deployed(prefect_server: str) -> dict:
    """Every deployment of deployments/prefect.yaml on the test server, by FLOW/NAME."""
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "ADAMLLM_HOME": str(REPO)}
    for pool in ("cpu", "gpu"):
        created = prefect("work-pool", "create", pool, "--type", "process", "--overwrite", env=env)
        assert created.returncode == 0, created.stdout + created.stderr
    result = prefect(
        "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--all", env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    deployments = httpx.post(f"{prefect_server}/deployments/filter", json={}).json()
    flows = {
        f["id"]: f["name"] for f in httpx.post(f"{prefect_server}/flows/filter", json={}).json()
    }
    return {f"{flows[d['flow_id']]}/{d['name']}": d for d in deployments}


def _fields(schema: dict) -> list[tuple[str, dict]]:
    """Every parameter, and every field of the models the parameters are."""
    fields = [(name, spec) for name, spec in schema["properties"].items()]
    for model, definition in schema.get("definitions", {}).items():
        fields += [(f"{model}.{n}", s) for n, s in definition.get("properties", {}).items()]
    return fields


def test_every_field_of_every_run_form_has_a_title_a_description_and_a_type(
    deployed: dict,
) -> None:
    assert len(deployed) >= len(SPEC["deployments"])
    for name, deployment in deployed.items():
        schema = deployment["parameter_openapi_schema"]
        assert deployment["enforce_parameter_schema"], name
        for field, spec in _fields(schema):
            assert spec.get("title"), (name, field)
            assert spec.get("description"), (name, field)
            assert {"type", "anyOf", "$ref", "allOf", "enum"} & set(spec), (name, field)


def _create_run(server: str, deployment: dict, parameters: dict) -> httpx.Response:
    """What the UI's run form sends."""
    return httpx.post(
        f"{server}/deployments/{deployment['id']}/create_flow_run",
        json={"parameters": parameters, "name": f"form-{uuid.uuid4().hex[:8]}"},
    )


@pytest.mark.parametrize(
    ("deployment", "parameters", "field"),
    [
        (
            "synth/demo",
            {"config": "deployments/demo.yaml", "sampling": {"temperature": 5}},
            "temperature",
        ),
        (
            "synth/demo",
            {"config": "deployments/demo.yaml", "synthesizer": {"kind": "tensorflow"}},
            "kind",
        ),
        (
            "synth/demo",
            {"config": "deployments/demo.yaml", "budget": {"max_steps": 0}},
            "max_steps",
        ),
        ("train/tiny", {"config": {"preset": "no-such-preset"}, "data": "d", "out": "o"}, "preset"),
        ("train/tiny", {"config": {"learning_rate": -1}, "data": "d", "out": "o"}, "learning_rate"),
        ("evaluate/demo", {"max_new_tokens": -3}, "max_new_tokens"),
        ("ingest/biomed-sample", {"config": {"domain": "Not Valid"}}, "domain"),
    ],
)
def test_a_bad_value_is_refused_naming_the_field(
    prefect_server: str, deployed: dict, deployment: str, parameters: dict, field: str
) -> None:
    response = _create_run(prefect_server, deployed[deployment], parameters)
    assert response.status_code == 409, response.text
    assert field in response.json()["detail"], response.text


def test_a_good_value_runs_on_a_worker(prefect_server: str, deployed: dict, tmp_path: Path) -> None:
    out = tmp_path / "pairs"
    response = _create_run(
        prefect_server,
        deployed["ingest/biomed-sample"],
        {"out": str(out), "config": {"domain": "biomed", "rows_per_shard": 5}},
    )
    assert response.status_code == 201, response.text
    run_id = response.json()["id"]
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "ADAMLLM_HOME": str(REPO)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", "cpu"],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        state = None
        while time.monotonic() < deadline:
            state = httpx.get(f"{prefect_server}/flow_runs/{run_id}").json()["state"]
            if state and state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(1)
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(timeout=60)
    assert state is not None and state["type"] == "COMPLETED", json.dumps(state)
    dataset = Dataset(str(out))
    assert dataset.manifest.rows == 24 and len(dataset.manifest.shards) == 5


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prefect server with its UI (the test harness serves the API alone), on a port of
    its own: tried again on another port if the one picked was taken meanwhile."""
    home = tmp_path_factory.mktemp("prefect-ui-home")
    for _ in range(3):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = {
            **os.environ,
            "PREFECT_HOME": str(home),
            "PREFECT_UI_ENABLED": "true",
            "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",  # else the UI asks :4200
        }
        env.pop("PREFECT_API_URL", None)
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
            + ["--port", str(port), "--no-services"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while server.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        if server.poll() is None:
            try:
                yield url
            finally:
                os.killpg(server.pid, 15)
                server.wait(timeout=60)
            return
    pytest.fail("the Prefect server with its UI did not start")


def test_the_ui_renders_a_form_for_the_synth_deployment(
    ui_server: str, browser, tmp_path: Path
) -> None:
    """The Prefect UI's custom-run page of synth/demo, in headless Chromium: a form with
    the typed groups and their descriptions, not a raw JSON box; screenshot in the test's
    folder."""
    env = {**os.environ, "PREFECT_API_URL": f"{ui_server}/api", "ADAMLLM_HOME": str(REPO)}
    created = prefect("work-pool", "create", "cpu", "--type", "process", env=env)
    assert created.returncode == 0, created.stdout + created.stderr
    result = prefect(
        "--no-prompt",
        "deploy",
        "--prefect-file",
        "deployments/prefect.yaml",
        "--name",
        "demo",  # synth/demo and evaluate/demo
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (flow,) = httpx.post(
        f"{ui_server}/api/flows/filter", json={"flows": {"name": {"any_": ["synth"]}}}
    ).json()
    (deployment,) = httpx.post(
        f"{ui_server}/api/deployments/filter", json={"flows": {"id": {"any_": [flow["id"]]}}}
    ).json()
    page = browser.new_page(viewport={"width": 1280, "height": 2400})
    try:
        page.goto(f"{ui_server}/deployments/deployment/{deployment['id']}/run")
        try:
            page.get_by_text("0: greedy").first.wait_for(timeout=60_000)
        finally:
            text = page.inner_text("body")
            page.screenshot(path=str(tmp_path / "synth-run-form.png"), full_page=True)
    finally:
        page.close()
    for label in ("config", "synthesizer", "sampling", "budget", "temperature", "engine kind"):
        assert label.lower() in text.lower(), label
