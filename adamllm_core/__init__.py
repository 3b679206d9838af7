"""AdaMLLM core: the method as plain, typed functions and pydantic models.

Nothing in this package imports Prefect; `tasks/` and `flows/` wrap it.
"""

from adamllm_core.version import CODE_VERSION, __version__

__all__ = ["CODE_VERSION", "__version__"]
