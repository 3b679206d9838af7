"""The proving ground's gain, measured in the suite. The models a gain needs take 60-90
minutes to build on 2 cores, so world seed 2's set-up models (base, judge, tuned
synthesizer: 6.8 MB) come from a committed pack, `packs/proving-seed2`
(`adamllm prove-pack --seed 2 --scale ci`). Everything after them runs as `make run` does
at ci scale, through the real flows: world → flow synth (synthesis, consistency filter,
mixtures) → caption-only and single-stage post-training → evaluation on the domain
benchmark. The pack records the recipe it was built for: when the recipe changes, this
test fails and names the rebuild command, it never builds models itself.
"""

import json
import shutil
from pathlib import Path

import pytest

from adamllm_core.errors import ConfigError
from adamllm_core.proving.experiment import (
    MIN_GAIN_OVER_BASE,
    MIN_GAIN_OVER_CAPTION,
    ProveConfig,
)
from adamllm_core.proving.pack import PACK_FILE, install_pack

PACK = Path(__file__).parents[1] / "packs" / "proving-seed2"
SEED = 2


def test_the_pack_is_for_the_current_recipe(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ADAMLLM_PROVING_CACHE", str(tmp_path))
    models = install_pack(PACK, ProveConfig.for_scale("ci", SEED))
    for role in ("base", "judge"):
        assert Path(models[role]).is_relative_to(tmp_path)
        assert (Path(models[role]) / "model.safetensors").is_file()


def test_a_pack_for_another_recipe_or_with_a_changed_file_is_refused(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("ADAMLLM_PROVING_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match=r"another recipe \(differs in: base\.seed\)"):
        install_pack(PACK, ProveConfig.for_scale("ci", SEED + 1))
    config = ProveConfig.for_scale("ci", SEED)
    longer = config.model_copy(update={"judge": {**config.judge, "max_steps": 1}})
    with pytest.raises(ConfigError, match=r"differs in: base\.judge\).*adamllm prove-pack"):
        install_pack(PACK, longer)
    changed = tmp_path / "pack"
    shutil.copytree(PACK, changed)
    weights = changed / "judge" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(ConfigError, match="judge/model.safetensors: missing or changed"):
        install_pack(changed, config)
    (changed / PACK_FILE).unlink()
    with pytest.raises(ConfigError, match="not a models pack"):
        install_pack(changed, config)
    assert not (tmp_path / "cache").exists()  # nothing installed by a refused pack


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(1800)
def test_single_stage_beats_caption_only_and_base(
    prefect_server: str, tmp_path: Path, monkeypatch
) -> None:
    from flows.prove import prove_flow

    monkeypatch.setenv("ADAMLLM_PROVING_CACHE", str(tmp_path / "cache"))
    report = prove_flow(
        seed=SEED,
        out=str(tmp_path / "out"),
        scale="ci",
        variants=["caption_only", "single_stage"],
        models_pack=str(PACK),
    )
    accuracy = report["adamllm"]["accuracy"]
    print(json.dumps(accuracy), json.dumps(report["seconds"]))
    assert accuracy["single_stage"] - accuracy["caption_only"] >= MIN_GAIN_OVER_CAPTION
    assert accuracy["single_stage"] - accuracy["base"] >= MIN_GAIN_OVER_BASE
    # The models came from the pack (installed into this test's cache), none was built.
    assert Path(report["models"]["base"]).is_relative_to(tmp_path / "cache")
    assert set(report["training"]) == {"caption_only", "single_stage"}
    assert {v for v, value in accuracy.items() if value is None} == {
        "synthetic_only",
        "two_stage",
        "no_filter",
    }
    synthesis = report["adamllm"]["synthesis"]
    assert synthesis["pairs"] == 1200 and synthesis["parse_rate"] >= 50
    assert synthesis["answer_accuracy_after_filter"] > synthesis["answer_accuracy_before_filter"]


@pytest.mark.integration
def test_an_unknown_variant_is_refused_before_any_work(prefect_server: str, tmp_path: Path) -> None:
    from flows.prove import prove_flow

    with pytest.raises(
        ValueError, match=r"variants \['single-stage'\]: not among base, caption_only"
    ):
        prove_flow(seed=SEED, out=str(tmp_path / "out"), scale="smoke", variants=["single-stage"])
    assert not (tmp_path / "out").exists()
