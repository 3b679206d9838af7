"""Flow `synth` on the Prefect test server: in-process, cached re-runs, and as a deployment
run by a real worker (`prefect deploy`, `adamllm run synth-demo`, `prefect worker start`)."""

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId, FlowRunFilterId
from prefect.client.schemas.sorting import TaskRunSort

from adamllm_core.dataset import read_manifest
from flows.synth import synth_flow

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


def demo_config(tmp_path: Path) -> Path:
    config = yaml.safe_load((REPO / "deployments" / "demo.yaml").read_text())
    config.update(source=str(REPO / "samples" / "biomed_pairs"), out=str(tmp_path / "runs"))
    config["synthesize"]["max_new_tokens"] = 24
    config["tune_synthesizer"]["train"]["max_steps"] = 6  # the code path, not the demo's quality
    config["post_train"]["train"]["max_steps"] = 3
    config["post_train"]["pipeline"] = (
        "two_stage"  # demo.yaml runs single-stage; this covers the ablation
    )
    # Table 5's ablations that read other data: the seed in the task format, every triplet
    config["assemble"]["variants"] += ["general_cot_domain_caption", "no_filter_precise"]
    for key in ("vision_flan", "allava_caption", "allava_instruct", "image_root"):
        config["tune_synthesizer"][key] = str(REPO / config["tune_synthesizer"][key])
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def task_states(flow_run_id) -> dict[str, str]:
    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            limit=50,
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
        )
    return {run.name.rsplit("-", 1)[0]: run.state.name for run in runs}


async def read_deployment(name: str):
    async with get_client() as client:
        return await client.read_deployment_by_name(name)


async def deployment_runs(name: str, data: str) -> list:
    """The flow runs of deployment `name` that train on `data`. The session's Prefect server
    is shared: other tests' runs of the deployment (other data: their own tmp_path) are not
    this test's to count. Read page by page: a first page could leave this one out."""
    async with get_client() as client:
        deployment = await client.read_deployment_by_name(name)
        runs: list = []
        while page := await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id])
            ),
            limit=100,
            offset=len(runs),
        ):
            runs += page
    return [run for run in runs if run.parameters.get("data") == data]


def test_synth_flow_runs_then_serves_cached_stages(
    prefect_server: str, tiny_models, tmp_path: Path
) -> None:
    config = demo_config(tmp_path)
    first = synth_flow(config=str(config), return_state=True)
    summary = first.result()
    root = tmp_path / "runs" / "demo"
    for stage in (
        "pairs",
        "triplets",
        "filtered",
        "rejected",
        "mixture",
        "mixture-two-stage-1",
        "mixture-caption-only",
    ):
        assert (root / stage / "manifest.json").exists(), stage
    assert summary["pairs"].rows == 24 and summary["mixture:single_stage"].rows == 24
    # General CoT: the tuning seed's examples with real images, judged by the same filter
    seed = read_manifest(str(root / "seed"))
    general = summary["general-pairs"]
    assert general.rows + general.quarantined == seed.rows > general.rows > 0
    mixed = summary["mixture:general_cot_domain_caption"]
    assert mixed.rows == 24 + summary["general-filtered"].rows
    assert summary["mixture:no_filter_precise"].rows == 24
    assert (root / "export" / "dataset_info.json").exists()
    assert read_manifest(str(root / "triplets")).stats.rows_in == 24
    # the run's data browser, each dataset linked from the run's artifacts
    assert (
        Path(summary["browse"]) == root / "_browse" / "index.html"
        and Path(summary["browse"]).exists()
    )
    # this flow run's links only: the session's server holds other tests' runs' links too
    links = httpx.post(
        f"{prefect_server}/artifacts/filter",
        json={
            "artifacts": {
                "key": {"any_": ["browse-pairs", "browse-triplets"]},
                "flow_run_id": {"any_": [str(first.state_details.flow_run_id)]},
            }
        },
    ).json()
    assert sorted(a["key"] for a in links) == ["browse-pairs", "browse-triplets"]
    for artifact in links:  # a markdown link to a page of this run's site, which exists
        assert str(root / "_browse") in artifact["data"], artifact
        target = artifact["data"].split("(file://", 1)[1].split(")", 1)[0]
        assert Path(target).is_file(), artifact
    assert summary["synthesizer"]["steps"] == 6 and summary["model-stage1"]["steps"] == 3
    if summary["mixture:two_stage_2"].rows:
        assert (
            summary["model"]["steps"] == 3
            and summary["model"]["final"] != summary["model-stage1"]["final"]
        )
    else:  # no synthetic task survived the 6-step synthesizer: stage 1 is the model
        assert summary["model"] == summary["model-stage1"]
    from safetensors.torch import load_file

    before = load_file(Path(tiny_models["vlm"]) / "model.safetensors")
    after = load_file(root / "model-stage1" / "final" / "model.safetensors")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(
        "multi_modal_projector" in k for k in changed
    )  # LLaVA stage 1: projector only
    assert (root / "synthesizer" / "final" / "model.safetensors").exists()
    trained = Path(summary["model"]["final"]).parent
    assert (trained / "loss_curve.png").exists() and (trained / "metrics.jsonl").exists()
    from adamllm_core.engines.hf import model_identity

    synthesizer = read_manifest(str(root / "triplets")).config["model_identity"]
    # the tuned model synthesized (a local model is known by its content)
    assert synthesizer == model_identity(str(root / "synthesizer" / "final"), None)
    assert synthesizer != model_identity(tiny_models["vlm"], None)

    synth_flow(config=str(config))  # outputs exist now: their keys are stored
    state = synth_flow(config=str(config), return_state=True)
    states = asyncio.run(task_states(state.state_details.flow_run_id))
    for name in (
        "ingest-pairs",
        "synthesize-triplets",
        "filter-consistent",
        "general-tasks",
        "assemble-mixtures",
        "train-model",
    ):
        assert states[name] == "Cached", states


def test_bad_domain_config_is_a_clear_error(tmp_path: Path) -> None:
    from adamllm_core.config import load_domain_config
    from adamllm_core.errors import ConfigError

    bad = yaml.safe_load((REPO / "deployments" / "demo.yaml").read_text())
    bad["synthesize"]["engine"]["kind"] = "tgi"
    bad["filter"]["temperature"] = 1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError) as caught:
        load_domain_config(path)
    assert "synthesize.engine.kind" in str(caught.value) and "filter.temperature" in str(
        caught.value
    )


def test_ablation_variants_name_what_they_need(tmp_path: Path) -> None:
    from adamllm_core.config import load_domain_config
    from adamllm_core.errors import ConfigError

    config = yaml.safe_load((REPO / "deployments" / "demo.yaml").read_text())
    del config["tune_synthesizer"]
    config["assemble"]["variants"] = ["single_stage", "general_cot"]
    path = tmp_path / "domain.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="general_cot variants need seed data"):
        load_domain_config(path)
    config["general_seed"] = "s3://bucket/seed"
    path.write_text(yaml.safe_dump(config))
    assert load_domain_config(path).general_seed_uri() == "s3://bucket/seed"
    config["post_train"]["pipeline"] = "two_stage_reuse"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="needs assemble.variants to include two_stage_reuse"):
        load_domain_config(path)


def test_pixel_bounds_of_the_mixture_and_its_training_must_agree(tmp_path: Path) -> None:
    from adamllm_core.config import load_domain_config
    from adamllm_core.errors import ConfigError

    config = yaml.safe_load((REPO / "deployments" / "demo.yaml").read_text())
    config["post_train"] = {"train": {"preset": "tiny", "image_resolution": {"max_pixels": 50176}}}
    path = tmp_path / "domain.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="image_resolution differ"):
        load_domain_config(path)
    config["assemble"]["image_resolution"] = {"max_pixels": 50176}
    path.write_text(yaml.safe_dump(config))
    assert load_domain_config(path).assemble.image_resolution.max_pixels == 50176


def test_deployment_runs_on_a_worker(prefect_server: str, tiny_models, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "ADAMLLM_HOME": str(REPO),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
    }
    prefect = [sys.executable, "-m", "prefect"]

    def run(*args: str, timeout: int = 240) -> str:
        done = subprocess.run(
            args, env=env, cwd=REPO, check=False, capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    for pool in ("cpu", "gpu"):
        subprocess.run(
            [*prefect, "work-pool", "create", pool, "--type", "process", "--overwrite"],
            env=env,
            cwd=REPO,
            check=False,
            capture_output=True,
            timeout=120,
        )
    run(*prefect, "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--all")
    # a scheduled refresh that overlaps the previous one waits for it (both write one output)
    scheduled = asyncio.run(read_deployment("synth/biomed"))
    assert scheduled.schedules and scheduled.global_concurrency_limit.limit == 1
    assert scheduled.concurrency_options.collision_strategy.value == "ENQUEUE"
    out = tmp_path / "deployed"
    triggered = run(
        sys.executable,
        "-m",
        "adamllm_cli.main",
        "run",
        "synth-demo",
        "--param",
        f"out={out}",
        "--param",
        f"source={REPO / 'samples' / 'biomed_pairs'}",
    )
    assert "synth/demo" in triggered
    run(*prefect, "worker", "start", "--pool", "cpu", "--run-once", timeout=400)
    assert (out / "demo" / "mixture" / "manifest.json").exists()
    assert read_manifest(str(out / "demo" / "pairs")).rows == 24

    # post-training on its own deployment: the same mixture and config make one flow run
    config = yaml.safe_load(demo_config(tmp_path).read_text())
    config["tune_synthesizer"] = None  # no seed data: none of the General CoT variants
    config["assemble"]["variants"] = ["single_stage"]
    config["post_train"] = {"train": {"preset": "tiny", "max_steps": 3}, "deployment": "train/tiny"}
    config_file = tmp_path / "post.yaml"
    config_file.write_text(yaml.safe_dump(config))
    first = synth_flow(config=str(config_file))
    second = synth_flow(config=str(config_file))
    assert first["model"]["flow_run"] == second["model"]["flow_run"]
    runs = asyncio.run(deployment_runs("train/tiny", first["mixture:single_stage"].uri))
    assert [str(run.id) for run in runs] == [first["model"]["flow_run"]]

    # evaluation as a deployment: evaluate/demo (a name the synth flow also uses) on the cpu pool
    evaluated = tmp_path / "evaluated"
    triggered = run(
        sys.executable,
        "-m",
        "adamllm_cli.main",
        "run",
        "evaluate-demo",
        "--param",
        f"out={evaluated}",
    )
    assert "evaluate/demo" in triggered
    run(*prefect, "worker", "start", "--pool", "cpu", "--run-once", timeout=400)
    assert (
        json.loads((evaluated / "tiny-base" / "food101" / "summary.json").read_text())["questions"]
        == 24
    )
    assert (evaluated / "tiny-base" / "report.md").exists()

    listed = run(*prefect, "deployment", "ls")
    for name in (
        "synth/food",
        "synth/biomed",
        "synth/remote-sensing",
        "synth/demo",
        "train/qwen2-vl-2b",
        "train/tiny",
        "evaluate/biomed",
        "evaluate/food",
        "evaluate/remote-sensing",
        "evaluate/demo",
    ):
        assert name in listed
