"""Flow `select` end to end on the proving ground's world at a small budget, through a real
Prefect server: a student (the tiny VLM tuned briefly on world reasoning, so it answers in
sentences, often wrongly) answers a validation benchmark, a teacher (the tiny LM tuned to
name world skills) diagnoses its errors and labels a 240-sample Vision-Flan-form pool,
every method selects 40 samples, the student is tuned on each for a few steps and scored
on a held-out benchmark; then the same flow again redoes nothing."""

import json
import random
from pathlib import Path

import pytest
import yaml

from adamllm_core.dataset import Dataset
from adamllm_core.proving.bundles import write_benchmark, write_pool
from adamllm_core.proving.world import WorldConfig
from adamllm_core.selection.pool_source import PoolConfig, import_pool
from adamllm_core.selection.retrieval import Selected
from adamllm_core.selection.stages import write_selection
from tests.corpus import quick_train, train_word_teacher

BUDGET = 40
METHODS = [
    "error_driven",
    "random",
    "instruction_similarity",
    "no_mistake_identification",
    "no_skill_analysis",
]


@pytest.fixture(scope="module")
def select_setup(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("select")
    world = WorldConfig()
    (root / "pool").mkdir()
    write_pool(root / "pool", seed=7, world=world, count=240)
    for name, stream in (("validation", "validation"), ("test", "benchmark")):
        (root / name).mkdir()
        write_benchmark(root / name, 7, world, 6, stream=stream)
    # The student: the tiny VLM tuned on 120 pool samples it then answers in their form.
    pool = str(root / "student-pool")
    import_pool(str(root / "pool" / "annotation.json"), pool, PoolConfig())
    rows = list(Dataset(pool).iter_rows(["id", "task"]))
    drawn = random.Random(0).sample(rows, 120)
    reasoning = str(root / "student-data")
    write_selection(
        pool, [Selected(r["id"], r["task"], "", 0, 0.0) for r in drawn], "seed", reasoning
    )
    student = quick_train(tiny_models["vlm"], reasoning, str(root / "student"), 200, 1e-2)
    teacher = train_word_teacher(tiny_models["lm"], root / "teacher", steps=150)
    config = {
        "target": "world",
        "out": str(root / "out"),
        "student": {"model": student, "batch_size": 16},
        "student_max_new_tokens": 48,
        "validation": {"benchmark": "proving_ground", "data": str(root / "validation")},
        "test": {"benchmark": "proving_ground", "data": str(root / "test")},
        "teacher": {"model": teacher, "batch_size": 16},
        "switch": {"margin": 0.0, "persistence": 0},
        "pool": {"source": str(root / "pool" / "annotation.json")},
        "budgets": [BUDGET],
        "methods": METHODS,
        "training": {"train": {"preset": "tiny", "model": student, "max_steps": 3}},
        "eval_batch_size": 16,
    }
    path = root / "select-world.yaml"
    path.write_text(yaml.safe_dump(config))
    return {"config": str(path), "out": str(root / "out"), "root": str(root)}


@pytest.fixture(scope="module")
def first_run(prefect_server: str, select_setup: dict[str, str]) -> dict:
    from flows.select import select_flow

    return select_flow(select_setup["config"])


def test_the_report_compares_every_method_with_the_student(first_run, select_setup) -> None:
    report = json.loads((Path(select_setup["out"]) / "world" / "report.json").read_text())
    assert report == json.loads(json.dumps(first_run))
    assert set(report["accuracy"]) == {"student", *METHODS}
    for method in METHODS:
        score = report["accuracy"][method][str(BUDGET)]
        assert 0 <= score <= 100
        assert set(report["per_skill"][method][str(BUDGET)]) <= {
            "colour",
            "shape",
            "count",
            "row",
            "column",
            "size",
            "existence",
            "relation",
        }
    assert (Path(select_setup["out"]) / "world" / "report.png").stat().st_size > 1000
    assert "| error_driven |" in (Path(select_setup["out"]) / "world" / "report.md").read_text()


def test_errors_are_diagnosed_into_skills_that_select_the_budget(first_run, select_setup) -> None:
    errors = first_run["errors"]
    assert errors["answered"] > 0 and errors["wrong"] > 0
    assert errors["diagnosed"] == errors["wrong"]  # every wrong answer weighed two options
    skills = first_run["skills"]["skills"]
    assert skills and sum(s["errors"] for s in skills) == errors["diagnosed"]
    selections = first_run["selections"]
    assert selections["random"][str(BUDGET)]["selected"] == BUDGET
    for method in ("error_driven", "instruction_similarity", "no_skill_analysis"):
        facts = selections[method][str(BUDGET)]
        assert 0 < facts["selected"] <= BUDGET
        assert facts["selected"] + sum(facts["shortfall"].values()) >= BUDGET or facts["shortfall"]
    selected = Dataset(f"{select_setup['out']}/world/selected/error_driven-{BUDGET}")
    queries = {row["query"] for row in selected.iter_rows(["query"])}
    assert queries <= {s["skill"] for s in skills}  # retrieved by the skills found


def test_a_second_run_redoes_nothing(first_run, select_setup) -> None:
    from flows.select import select_flow

    root = Path(select_setup["out"]) / "world"
    manifests = {p: p.read_bytes() for p in root.rglob("manifest.json")}
    summaries = {p: p.read_bytes() for p in root.rglob("train_summary.json")}
    again = select_flow(select_setup["config"])
    assert again["accuracy"] == first_run["accuracy"]
    assert {p: p.read_bytes() for p in root.rglob("manifest.json")} == manifests
    assert {p: p.read_bytes() for p in root.rglob("train_summary.json")} == summaries


def test_the_flow_runs_on_object_storage(
    prefect_server: str, select_setup: dict[str, str], s3_bucket: str, s3_server
) -> None:
    """Every output on s3:// (moto's server): the labels and the skill index kept there
    beside them, models trained and scored from there; a second run builds no index again."""
    import s3fs

    from flows.select import select_flow

    config = yaml.safe_load(Path(select_setup["config"]).read_text())
    config["methods"] = ["error_driven", "random"]
    path = Path(select_setup["root"]) / "select-s3.yaml"
    path.write_text(yaml.safe_dump(config))
    out = f"{s3_bucket}/select"
    report = select_flow(str(path), out=out)
    assert set(report["accuracy"]) == {"student", "error_driven", "random"}

    fs = s3fs.S3FileSystem(endpoint_url=s3_server["AWS_ENDPOINT_URL"])
    parts = fs.glob(f"{out}/labels/*/part-*/manifest.json")
    indexes = fs.glob(f"{out}/labels/*/index-*/index.json")
    assert len(parts) == 1 and len(indexes) == 1
    assert parts[0].split("/")[-3] == indexes[0].split("/")[-3]  # one teacher's folder
    assert fs.exists(f"{out}/world/models/error_driven-{BUDGET}/final")
    assert fs.exists(f"{out}/world/report.json")
    built = {file: fs.modified(file) for file in fs.find(indexes[0].rsplit("/", 1)[0])}

    again = select_flow(str(path), out=out)
    fs.invalidate_cache()
    assert again["accuracy"] == report["accuracy"]
    assert {file: fs.modified(file) for file in fs.find(indexes[0].rsplit("/", 1)[0])} == built
