"""`.env.example` documents every setting (dspo/settings.py), so that a Compose user finds them all."""

from pathlib import Path

from dspo.settings import Settings

ENV_EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"


def test_every_setting_is_in_env_example() -> None:
    text = ENV_EXAMPLE.read_text()
    names = [f"DSPO_{name.upper()}" for name in Settings.model_fields]
    missing = [name for name in names if f"{name}=" not in text]
    assert not missing, f"add these settings to .env.example: {', '.join(missing)}"
