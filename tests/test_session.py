"""The test session's own data folders (tests/conftest.py): a server built with default paths
writes its prediction log and cache under a temporary folder, never the user's."""

from __future__ import annotations

import tempfile
from pathlib import Path

from modelhost.settings import Settings


def test_default_paths_are_the_sessions_not_the_users():
    settings = Settings()
    db = Path(settings.db.removeprefix("sqlite:///"))
    scratch = Path(tempfile.gettempdir())
    assert db.is_relative_to(scratch) and db.name == "modelhost.db"
    assert settings.cache_dir.is_relative_to(scratch)
    for users in (Path.home() / ".local" / "share", Path.home() / ".cache"):
        assert not db.is_relative_to(users)
        assert not settings.cache_dir.is_relative_to(users)
