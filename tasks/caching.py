"""Cache keys for tasks that write datasets.

A key is made of the output URI and the identity of what the output is made from (input
manifest fingerprints or source listing, config hash, code version). It exists only while
a finished dataset with that identity is at the output: a deleted or unfinished output
gives no key, so the task runs (and resumes) instead of returning a stale cached result.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext

from adamllm_core.dataset import existing_identity
from adamllm_core.hashing import sha256_hex


@dataclass
class OutputDatasetPolicy(CachePolicy):
    """Cache a dataset-writing task on (output URI, expected identity of the output)."""

    expected_identity: Callable[[dict[str, Any]], str] = lambda inputs: ""
    output_parameter: str = "out"
    # where the output is when no parameter names it, and what is finished there
    output: Callable[[dict[str, Any]], str] | None = None
    stored_identity: Callable[[str], str | None] = existing_identity

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        try:
            out = self.output(inputs) if self.output else inputs[self.output_parameter]
            stored = self.stored_identity(out)
            # Nothing finished there: no key, and no expected identity to compute (for
            # ingest that would list the whole source once more before the task lists it).
            if stored is None or stored != self.expected_identity(inputs):
                return None
        except Exception:  # noqa: BLE001 (a bad input: let the task run and raise its own clear error)
            return None
        task_name = task_ctx.task.name if task_ctx else "task"
        return sha256_hex(f"{task_name}\0{out}\0{stored}")
