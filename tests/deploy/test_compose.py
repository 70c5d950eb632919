"""docker-compose.yml: valid against the Compose Specification, and consistent with the tests.

No Docker engine runs here, so the file is checked the way ``docker compose config`` would start:
variables interpolated from ``.env.example``, then validated against the Compose Specification's
JSON schema. The schema is the official ``compose-spec.json`` as vendored (with its sha256) by the
``check-jsonschema`` package from PyPI.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from deploy_support import REPO, TESTED_COMMANDS

COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
_VAR = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")
LONG_RUNNING_CONDITIONS = {"service_healthy", "service_started"}


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a ``.env`` file (``NAME=value`` lines, ``#`` comments)."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"{path.name}: not NAME=value: {line!r}"
            env[name.strip()] = value.strip()
    return env


def interpolate(value: Any, env: dict[str, str], used: set[str]) -> Any:
    """Apply Compose variable interpolation to every string in ``value``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env, used) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, used) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(m: re.Match[str]) -> str:
        if m.group(1):
            return "$"
        name = m.group(2) or m.group(5)
        used.add(name)
        op, arg = m.group(3), m.group(4) or ""
        current = env.get(name)
        unset_or_empty = current is None or (current == "" and op and op.startswith(":"))
        if op in (":-", "-"):
            return arg if unset_or_empty else str(current)
        if op in (":?", "?"):
            if unset_or_empty:
                raise AssertionError(f"required variable {name} is not set: {arg}")
            return str(current)
        if op in (":+", "+"):
            return "" if unset_or_empty else arg
        return current or ""

    return _VAR.sub(substitute, value)


def compose_schema() -> dict[str, Any]:
    files = importlib.resources.files("check_jsonschema") / "builtin_schemas" / "vendor"
    schema: dict[str, Any] = json.loads((files / "compose-spec.json").read_text())
    return schema


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


@pytest.fixture(scope="module")
def used_vars() -> set[str]:
    return set()


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any], used_vars: set[str]) -> dict[str, Any]:
    result: dict[str, Any] = interpolate(raw, read_env_file(ENV_EXAMPLE), used_vars)
    return result


def validate(document: dict[str, Any]) -> list[str]:
    schema = compose_schema()
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    validator = validator_cls(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def test_schema_is_the_compose_specification() -> None:
    schema = compose_schema()
    assert schema["$id"] == "compose_spec.json"
    assert "services" in schema["properties"]


def test_compose_file_valid_against_compose_spec(raw: dict[str, Any], compose: dict[str, Any]) -> None:
    assert validate(raw) == [], "docker-compose.yml (as written) violates the Compose Specification"
    assert validate(compose) == [], "docker-compose.yml (interpolated with .env.example) is invalid"


def test_schema_check_catches_mistakes(compose: dict[str, Any]) -> None:
    # The validation above must be able to fail: a typo'd key and a wrong type are reported.
    broken = json.loads(json.dumps(compose))
    broken["services"]["api"]["healthchek"] = broken["services"]["api"].pop("healthcheck")
    broken["services"]["redis"]["ports"] = "6379"
    errors = validate(broken)
    assert any("healthchek" in e for e in errors)
    assert any(e.startswith("services/redis/ports") for e in errors)


def test_required_services_and_profiles(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("api", "migrate", "worker-xla", "worker-inf1", "redis", "postgres", "minio",
                 "create-bucket", "flower", "prometheus"):
        assert name in services, f"missing service {name}"
    assert services["worker-inf1"]["profiles"] == ["inf1"]
    assert services["flower"]["profiles"] == ["flower"]
    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert int(services["worker-xla"]["deploy"]["replicas"]) >= 2
    assert "/dev/neuron0:/dev/neuron0" in services["worker-inf1"]["devices"]
    assert services["worker-inf1"]["build"]["dockerfile"] == "docker/worker-inf1.Dockerfile"
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_kiln_commands_are_the_ones_the_tests_run(compose: dict[str, Any]) -> None:
    built = {name: svc for name, svc in compose["services"].items() if "build" in svc}
    assert set(built) == set(TESTED_COMMANDS), "every Kiln image's service must be run by the tests"
    for name, svc in built.items():
        assert svc["command"] == TESTED_COMMANDS[name], f"{name}: command differs from the tested one"


def test_worker_commands_parse() -> None:
    worker_cli = pytest.importorskip("kiln_worker.cli", reason="kiln_worker.cli not importable")
    for name, command in TESTED_COMMANDS.items():
        if command[0] == "kiln-worker":
            args = worker_cli.build_parser().parse_args(command[1:])
            assert args.targets == name.removeprefix("worker-")


def test_healthchecks_and_dependency_conditions(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in services.items():
        one_shot = svc.get("restart") == "no"
        if not one_shot:
            assert "healthcheck" in svc, f"{name}: long-running service without a healthcheck"
            assert svc["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
        depends = svc.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on must use conditions (long syntax)"
        for dep, spec in depends.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            condition = spec.get("condition")
            if services[dep].get("restart") == "no":
                assert condition == "service_completed_successfully", f"{name} -> {dep}"
            else:
                assert condition == "service_healthy", f"{name} -> {dep}: wait for health"
                assert "healthcheck" in services[dep], f"{dep} has no healthcheck to wait for"


def test_named_volumes_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes", {}))
    used = set()
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")):
                assert (REPO / source).exists(), f"{name}: bind mount {source} missing"
            else:
                used.add(source)
    assert used == declared, "named volumes used and declared differ"
    for stateful in ("postgres", "redis", "minio"):
        assert compose["services"][stateful].get("volumes"), f"{stateful} keeps its data in a volume"


def test_env_example_documents_every_variable(compose: dict[str, Any], used_vars: set[str]) -> None:
    documented = read_env_file(ENV_EXAMPLE)
    text = ENV_EXAMPLE.read_text()
    assert used_vars, "interpolation found no variables"
    assert sorted(used_vars - set(documented)) == [], "variables used in compose but not in .env.example"
    assert sorted(set(documented) - used_vars) == [], ".env.example documents unused variables"
    for name in documented:  # each setting has a comment line right above (or a section comment)
        assert re.search(rf"#[^\n]*\n(?:[A-Z0-9_]+=[^\n]*\n)*{name}=", text), f"{name} is undocumented"


def test_kiln_settings_in_compose_exist(compose: dict[str, Any]) -> None:
    from kiln_service.config import Settings

    known = {f"KILN_{name.upper()}" for name in Settings.model_fields}
    try:
        from kiln_worker.config import WorkerSettings

        known |= {f"KILN_WORKER_{name.upper()}" for name in WorkerSettings.model_fields}
    except ImportError:  # pragma: no cover - the worker package is part of the workspace
        pytest.fail("kiln_worker.config must import without TensorFlow")
    known.add("KILN_TRACE_BACKEND")  # read by the tracer (docs/architecture.md)
    for name, svc in compose["services"].items():
        for var in svc.get("environment", {}):
            if var.startswith("KILN_"):
                assert var in known, f"{name}: {var} is not a Kiln setting"


def test_dockerfiles(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        if "build" in svc:
            assert (REPO / svc["build"]["dockerfile"]).is_file(), f"{name}: Dockerfile missing"
    worker = (REPO / "docker/worker.Dockerfile").read_text()
    assert "FROM python:3.11-slim" in worker
    assert "uv sync --package kiln-worker --frozen" in worker
    inf1 = (REPO / "docker/worker-inf1.Dockerfile").read_text()
    assert "FROM python:3.10-slim" in inf1
    assert "https://pip.repos.neuron.amazonaws.com" in inf1
    assert re.search(r"TENSORFLOW_NEURON_VERSION=2\.10\.1\.\d+\.\d+\.\d+\.\d+", inf1)
    assert re.search(r"NEURON_CC_VERSION=1\.\d+\.\d+\.\d+", inf1)
    assert "pip install --no-deps ./worker" in inf1


def test_prometheus_scrapes_api_metrics(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((REPO / "deploy/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    api = jobs["kiln-api"]
    assert api.get("metrics_path", "/metrics") == "/metrics"
    assert "api:8000" in api["static_configs"][0]["targets"]
    mounts = compose["services"]["prometheus"]["volumes"]
    assert any(m.startswith("./deploy/prometheus.yml:/etc/prometheus/prometheus.yml") for m in mounts)
