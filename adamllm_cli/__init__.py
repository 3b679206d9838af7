"""The `adamllm` command line."""

import os

# Prefect reads these at import: defaults that make its ephemeral server usable here.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
