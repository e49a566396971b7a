"""Service settings, read from the environment (prefix ``TUNETRACE_``) by pydantic-settings."""

from __future__ import annotations

import os
import re
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Role = Literal["read", "write"]
ROLES: tuple[Role, ...] = ("read", "write")
#: A key is printable ASCII without spaces: what an ``Authorization`` header carries unchanged.
_KEY_CHARACTERS = re.compile(r"[!-~]+")


def parse_api_keys(value: str) -> dict[str, Role]:
    """Parse ``key:role`` pairs separated by commas.

    Parameters
    ----------
    value : str
        For example ``"k1:read,k2:write"``. Whitespace around items is ignored.

    Returns
    -------
    keys : dict
        Key -> role.

    Raises
    ------
    ValueError
        On an item without a role, an unknown role, an empty key, a key with whitespace or
        characters outside printable ASCII (it could never be sent in a header as it is) or a
        repeated key. Items are named by their position: the message never contains any part
        of an item, since a misplaced separator can put a secret anywhere in it.
    """
    keys: dict[str, Role] = {}
    for position, item in enumerate(filter(None, (part.strip() for part in value.split(","))), 1):
        key, separator, role = item.rpartition(":")
        if not separator or not key:
            raise ValueError(f"API key #{position} is not written as key:role")
        if role not in ROLES:
            hint = " (it starts with a role: the key comes first)" if key in ROLES else ""
            raise ValueError(
                f"API key #{position} does not end in ':read' or ':write'{hint}; "
                "write each item as key:role"
            )
        if not _KEY_CHARACTERS.fullmatch(key):
            raise ValueError(
                f"API key #{position} contains whitespace or characters outside printable ASCII; "
                "keys may use letters, digits and punctuation only"
            )
        if key in keys:
            raise ValueError(f"API key #{position} is given twice")
        keys[key] = role  # type: ignore[assignment]
    return keys


class ApiSettings(BaseSettings):
    """Settings of the HTTP service.

    Every field can be set as an environment variable with the prefix ``TUNETRACE_``
    (``TUNETRACE_API_KEYS``, ``TUNETRACE_MAX_UPLOAD_MB`` ...).
    """

    # validation errors never repeat the input: it may hold API keys
    model_config = SettingsConfigDict(
        env_prefix="TUNETRACE_", extra="ignore", hide_input_in_errors=True
    )

    catalogue: Path = Field(Path("catalogue"), description="Catalogue directory.")
    api_keys: SecretStr = Field(
        SecretStr(""), description="Comma-separated key:role pairs; roles are read and write."
    )
    max_upload_mb: float = Field(
        200.0, gt=0, allow_inf_nan=False, description="Largest accepted upload, in MB."
    )
    max_duration_s: float = Field(
        1200.0, gt=0, allow_inf_nan=False, description="Longest accepted audio, in seconds."
    )
    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        description="Processes that decode, fingerprint and match.",
    )
    max_queue: int = Field(
        8, ge=0, description="Requests that may wait for a busy worker before 503s start."
    )
    upload_dir: Path | None = Field(
        None, description="Where uploads are spooled while they are processed [system temp]."
    )
    retry_after_s: int = Field(2, ge=1, description="Retry-After sent with 503 responses.")
    scheduler: str | None = Field(
        None,
        description="Dask scheduler address (tcp://host:8786): a sharded catalogue's shards are "
        "searched on its workers.",
    )
    upload_idle_timeout_s: float = Field(
        30.0,
        gt=0,
        allow_inf_nan=False,
        description="An upload that sends nothing for this many seconds is refused (408) and "
        "frees its admission slot.",
    )
    upload_min_bytes_per_s: float = Field(
        1000.0,
        gt=0,
        allow_inf_nan=False,
        description="After the idle timeout's first seconds, an upload slower than this on "
        "average is refused (408): a client trickling bytes cannot hold a slot for ever.",
    )

    @field_validator("catalogue")
    @classmethod
    def _catalogue_absolute(cls, value: Path) -> Path:
        # absolute, so that error messages name it in one form the API can take out of them
        return value.absolute()

    @field_validator("api_keys")
    @classmethod
    def _keys_parse(cls, value: SecretStr) -> SecretStr:
        parse_api_keys(value.get_secret_value())
        return value

    @cached_property
    def keys(self) -> dict[str, Role]:
        """The parsed API keys (key -> role)."""
        return parse_api_keys(self.api_keys.get_secret_value())

    @property
    def max_upload_bytes(self) -> int:
        """Upload limit in bytes (1 MB = 10**6 bytes)."""
        return int(self.max_upload_mb * 1_000_000)
