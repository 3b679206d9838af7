"""deployments/prefect.yaml: every entrypoint loads, and its parameters validate against the flow."""

from pathlib import Path

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

REPO = Path(__file__).resolve().parents[1]
SPEC = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())


@pytest.mark.parametrize("deployment", SPEC["deployments"], ids=lambda d: d["name"])
def test_deployment_entrypoint_and_parameters(deployment: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    validated = flow.validate_parameters(deployment.get("parameters", {}))
    assert set(validated) >= set(deployment.get("parameters", {}))
    for key in ("source",):
        if key in deployment.get("parameters", {}):
            assert (REPO / deployment["parameters"][key]).exists()


def test_bad_deployment_parameters_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    flow = load_flow_from_entrypoint("flows/ingest.py:ingest_flow")
    with pytest.raises(Exception, match="domain"):
        flow.validate_parameters({"source": "s", "out": "o", "config": {"domain": "Not Valid"}})
