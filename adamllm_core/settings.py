"""Platform settings: object-storage endpoint and credentials.

Values come from the standard AWS variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_DEFAULT_REGION) or from a YAML settings
file (ADAMLLM_SETTINGS_FILE, default ~/.config/adamllm/settings.yaml); the environment wins.
Secrets are SecretStr so they never render in logs, reprs, manifests or artifacts.
"""

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

DEFAULT_SETTINGS_FILE = Path("~/.config/adamllm/settings.yaml").expanduser()


# What another process of a run (a pool actor, an ingest worker) needs from this one's
# environment: model locations, storage endpoints and credentials.
FORWARDED_ENV = ("ADAMLLM_", "AWS_", "HF_")


def forwarded_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}


def settings_file() -> Path:
    return Path(os.environ.get("ADAMLLM_SETTINGS_FILE", DEFAULT_SETTINGS_FILE)).expanduser()


class StorageSettings(BaseSettings):
    """Object-storage connection settings (S3 and S3-compatible stores)."""

    model_config = SettingsConfigDict(extra="forbid", case_sensitive=False)

    aws_endpoint_url: str | None = None
    aws_access_key_id: SecretStr | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_session_token: SecretStr | None = None
    aws_default_region: str | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            YamlConfigSettingsSource(settings_cls, yaml_file=settings_file()),
        )

    def s3_storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs keyword arguments; only the values that are set."""
        options: dict[str, Any] = {}
        if self.aws_endpoint_url:
            options["endpoint_url"] = self.aws_endpoint_url
        if self.aws_access_key_id:
            options["key"] = self.aws_access_key_id.get_secret_value()
        if self.aws_secret_access_key:
            options["secret"] = self.aws_secret_access_key.get_secret_value()
        if self.aws_session_token:
            options["token"] = self.aws_session_token.get_secret_value()
        if self.aws_default_region:
            options["client_kwargs"] = {"region_name": self.aws_default_region}
        return options

    def polars_storage_options(self) -> dict[str, str]:
        """The same credentials under the names polars' object store expects."""
        options: dict[str, str] = {}
        if self.aws_endpoint_url:
            options["aws_endpoint_url"] = self.aws_endpoint_url
            if self.aws_endpoint_url.startswith("http://"):
                options["aws_allow_http"] = "true"
        if self.aws_access_key_id:
            options["aws_access_key_id"] = self.aws_access_key_id.get_secret_value()
        if self.aws_secret_access_key:
            options["aws_secret_access_key"] = self.aws_secret_access_key.get_secret_value()
        if self.aws_session_token:
            options["aws_session_token"] = self.aws_session_token.get_secret_value()
        if self.aws_default_region:
            options["aws_region"] = self.aws_default_region
        return options


@lru_cache(maxsize=1)
def _cached_settings(
    environment_key: tuple[tuple[str, str], ...], file_key: str
) -> StorageSettings:
    return StorageSettings()


def storage_settings() -> StorageSettings:
    """Current settings; re-read when the AWS variables or the settings file path change."""
    environment_key = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))
    return _cached_settings(environment_key, str(settings_file()))
