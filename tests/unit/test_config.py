"""Settings: what the README documents, and how a bad value is refused."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from engine.config import Settings
from engine.errors import ConfigError

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_documented_in_the_readme() -> None:
    """Each field is a WEBHOOKS_* variable an operator can only find in the README's table."""
    readme = README.read_text()
    missing = [f.name for f in fields(Settings) if f"`WEBHOOKS_{f.name.upper()}`" not in readme]
    assert missing == []


@pytest.mark.parametrize(
    ("env", "field", "words"),
    [
        ({"WEBHOOKS_VACUUM_DEAD_ROWS": "-1"}, "vacuum_dead_rows", "WEBHOOKS_VACUUM_DEAD_ROWS must"),
        ({"WEBHOOKS_VACUUM_CHECK_S": "0"}, "vacuum_check_s", "WEBHOOKS_VACUUM_CHECK_S must be"),
        ({"WEBHOOKS_VACUUM_DEAD_ROWS": "many"}, "vacuum_dead_rows", "'many' is invalid"),
    ],
)
def test_a_bad_vacuum_setting_is_refused_by_name(
    env: dict[str, str], field: str, words: str
) -> None:
    with pytest.raises(ConfigError, match=words) as caught:
        Settings.from_env(env)
    assert caught.value.field == field


def test_vacuum_dead_rows_0_is_allowed_and_means_never() -> None:
    assert Settings.from_env({"WEBHOOKS_VACUUM_DEAD_ROWS": "0"}).vacuum_dead_rows == 0
