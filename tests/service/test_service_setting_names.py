"""One name per setting, and the docs agree with the code.

Every ``KILN_*`` setting read by a settings class (the API's, the reconciler's, the worker's) is
documented in ``docs/deploy.md`` or ``docs/recovery.md``; every ``KILN_*`` row of those tables
names a setting the code reads (or a deployment variable of ``.env.example``); and one concept
(a field name) is read under one environment name wherever it appears.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from kiln_service.config import Settings
from kiln_service.reconcile import ReconcileSettings
from kiln_worker.config import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
CLASSES: tuple[type[BaseSettings], ...] = (Settings, ReconcileSettings, WorkerSettings)
#: read with os.environ outside the settings classes, documented all the same
DIRECT = {"KILN_TRACE_BACKEND", "KILN_PLACEMENT", "KILN_TIMING_CACHE", "KILN_URL", "KILN_API_KEY",
          "KILN_DEBUG"}


def _env_names() -> dict[str, dict[str, str]]:
    """field name → {class name: the environment variable it is read from}."""
    names: dict[str, dict[str, str]] = {}
    for cls in CLASSES:
        prefix = str(cls.model_config.get("env_prefix", ""))
        for field, info in cls.model_fields.items():
            alias = info.validation_alias
            env = alias if isinstance(alias, str) else prefix + field
            names.setdefault(field, {})[cls.__name__] = env.upper()
    return names


def _documented(*docs: str) -> set[str]:
    rows = set()
    for doc in docs:
        for line in (ROOT / doc).read_text().splitlines():
            if line.startswith("| `KILN_"):
                rows |= set(re.findall(r"`(KILN_[A-Z0-9_]+)`", line.split("|")[1]))
    return rows


def test_one_concept_is_read_under_one_name() -> None:
    split = {field: envs for field, envs in _env_names().items() if len(set(envs.values())) > 1}
    assert not split, f"one setting, several names: {split}"
    assert _env_names()["max_attempts"] == {"ReconcileSettings": "KILN_MAX_ATTEMPTS",
                                            "WorkerSettings": "KILN_MAX_ATTEMPTS"}


def test_every_setting_is_documented_and_every_documented_setting_exists() -> None:
    in_code = {env for envs in _env_names().values() for env in envs.values()}
    in_code.discard("KILN_WORKER_TEST_HOOK_CHILD_SLEEP_SECONDS")  # a test hook (recovery.md)
    tables = _documented("docs/deploy.md", "docs/recovery.md")
    assert not in_code - tables, f"not in docs/deploy.md: {sorted(in_code - tables)}"
    compose = set(re.findall(r"^(KILN_[A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    sources = "".join(p.read_text() for folder in ("client", "service", "worker")
                      for p in (ROOT / folder / "src").rglob("*.py"))
    for name in DIRECT:  # really read, by its one name
        assert f'"{name}"' in sources, name
    unknown = tables - in_code - compose - DIRECT
    assert not unknown, f"documented but read by nothing: {sorted(unknown)}"
    # .env.example's KILN_ settings are either compose variables or real settings, with the
    # code's name
    compose_file = (ROOT / "docker-compose.yml").read_text()
    for name in compose:
        assert name in in_code or f"${{{name}" in compose_file, name


def test_the_settings_read_the_one_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_MAX_ATTEMPTS", "5")
    monkeypatch.setenv("KILN_WORKER_MAX_ATTEMPTS", "9")  # the old second name: ignored
    assert WorkerSettings().max_attempts == 5 == ReconcileSettings().max_attempts
