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


@pytest.mark.parametrize(
    ("raw", "effective"),
    [
        (None, "'none'"),
        ("'self'", "'self'"),
        ("https://app.misarmail.com", "https://app.misarmail.com"),
        (
            "  https://*.MisarMail.com   'SELF' http://localhost:3000 ",
            ("https://*.misarmail.com 'self' http://localhost:3000"),
        ),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
    ],
)
def test_portal_frame_ancestors_takes_none_self_and_origins(
    raw: str | None, effective: str
) -> None:
    """The sources a page may frame the portal from, normalised to one space and lower case."""
    env = {} if raw is None else {"WEBHOOKS_PORTAL_FRAME_ANCESTORS": raw}
    assert Settings.from_env(env).portal_frame_ancestors == effective


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("*", "'\\*' would let any site frame the portal"),
        ("https:", "'https:' would let any site frame the portal"),
        ("https://app.misarmail.com/settings", "has a path"),
        ("app.misarmail.com", "is not 'self' or an origin"),
        ("ftp://app.misarmail.com", "is not 'self' or an origin"),
        ("https://app.misarmail.com;script-src", "is not 'self' or an origin"),
        ("'none' https://app.misarmail.com", "'none' cannot be combined"),
        ("'unsafe-inline'", "is not 'self' or an origin"),
        ("   ", "is empty"),
    ],
)
def test_a_portal_frame_ancestors_that_cannot_work_is_refused_at_startup(
    raw: str, words: str
) -> None:
    """A value the CSP would misread, or one that lets any site frame the page, is refused
    naming the variable and the source."""
    with pytest.raises(ConfigError, match=words) as caught:
        Settings.from_env({"WEBHOOKS_PORTAL_FRAME_ANCESTORS": raw})
    assert caught.value.field == "portal_frame_ancestors"
    assert "WEBHOOKS_PORTAL_FRAME_ANCESTORS" in str(caught.value)


@pytest.mark.parametrize(("raw", "port"), [(None, 5433), ("1", 1), ("65535", 65535)])
def test_embedded_port_defaults_to_5433_and_takes_1_to_65535(raw: str | None, port: int) -> None:
    env = {} if raw is None else {"WEBHOOKS_EMBEDDED_PORT": raw}
    assert Settings.from_env(env).embedded_port == port
    assert Settings.from_env({}, embedded_port=port).embedded_port == port  # --embedded-port


@pytest.mark.parametrize("raw", ["0", "65536", "-1"])
def test_an_embedded_port_out_of_range_is_refused_by_name(raw: str) -> None:
    with pytest.raises(ConfigError, match=f"WEBHOOKS_EMBEDDED_PORT must be 1..65535, got {raw}"):
        Settings.from_env({"WEBHOOKS_EMBEDDED_PORT": raw})
