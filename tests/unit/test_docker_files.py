"""The container files are written for users (no Docker engine runs here): check them as text
and as YAML."""

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tasks.config import load_config

ROOT = Path(__file__).parents[2]
DOCKER = ROOT / "docker"
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|API_KEY", re.IGNORECASE)
INTERPOLATED = re.compile(r"^\$\{[A-Z_]+(:?[?-][^}]*)?\}$")


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return document


def strings(node: Any) -> Iterator[str]:
    """Every string in a YAML document, keys excepted."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def test_dockerfile_copies_what_exists_installs_and_runs_unprivileged() -> None:
    """Every COPY source exists, the project is pip-installed with its extras, and the image
    drops root."""
    instructions = [
        line.split(maxsplit=1)
        for line in (DOCKER / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.startswith("#") and not line.startswith(" ")
    ]
    assert instructions[0][0] == "FROM"
    copied = [w for op, args in instructions if op == "COPY" for w in args.split()[:-1]]
    assert {"pyproject.toml", "flows", "tasks", "deployments"} <= set(copied)
    assert all((ROOT / source).exists() for source in copied)
    assert ["ARG", "EXTRAS=ha"] in instructions
    assert ["RUN", 'pip install --no-cache-dir ".[${EXTRAS}]"'] in instructions
    assert instructions[-2] == ["USER", "provisioner"]


def test_compose_has_prefect_on_postgresql_with_redis_workers_and_the_demo() -> None:
    """Prefect's API servers and background services share PostgreSQL and Redis messaging; the
    database is migrated once before them; two workers on the pool; a demo directory and SCIM
    application; the provisioner's services are built from docker/Dockerfile."""
    services = compose()["services"]
    assert {
        "postgres",
        "redis",
        "prefect-migrate",
        "prefect-api-1",
        "prefect-api-2",
        "prefect-services",
        "prefect-deploy",
        "worker-1",
        "worker-2",
        "demo-ldap",
        "demo-scim",
    } <= set(services)
    server_side = ["prefect-migrate", "prefect-api-1", "prefect-api-2", "prefect-services"]
    for name in server_side:
        env = services[name]["environment"]
        assert env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
        assert env["PREFECT_MESSAGING_BROKER"] == "prefect_redis.messaging"
        assert env["PREFECT_MESSAGING_CACHE"] == "prefect_redis.messaging"
        assert env["PREFECT_SERVER_EVENTS_CAUSAL_ORDERING"] == "prefect_redis.ordering"
        assert env["PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"] == "prefect_redis.lease_storage"
        assert env["PREFECT_REDIS_MESSAGING_HOST"] == "redis"
        assert env["PREFECT_SERVER_DOCKET_URL"].startswith("redis://redis:")
        assert env["PREFECT_API_DATABASE_MIGRATE_ON_START"] == "false"
        assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
        assert services[name]["build"]["dockerfile"] == "docker/Dockerfile"
    for name in ("prefect-api-1", "prefect-api-2", "prefect-services"):
        depends = services[name]["depends_on"]
        assert depends["prefect-migrate"]["condition"] == "service_completed_successfully"
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
    for name in ("prefect-api-1", "prefect-api-2"):
        command = services[name]["command"]
        assert command[:3] == ["prefect", "server", "start"] and "--no-services" in command
        port = services[name]["ports"][0].split(":")[1]
        assert services[name]["environment"]["PREFECT_UI_API_URL"].endswith(f":{port}/api")
    depends = services["prefect-api-2"]["depends_on"]["prefect-api-1"]
    assert depends["condition"] == "service_healthy"  # not both registering block types at once
    assert services["prefect-services"]["command"] == ["prefect", "server", "services", "start"]
    assert services["prefect-migrate"]["command"][:4] == [
        "prefect",
        "server",
        "database",
        "upgrade",
    ]
    deploy = services["prefect-deploy"]
    assert "deployments.deploy" in deploy["command"][-1]
    assert deploy["depends_on"]["prefect-api-1"]["condition"] == "service_healthy"
    apis = set()
    for name in ("worker-1", "worker-2"):
        worker = services[name]
        assert worker["command"][:5] == ["prefect", "worker", "start", "--pool", "scim-provisioner"]
        assert worker["build"]["dockerfile"] == "docker/Dockerfile"
        assert worker["depends_on"]["prefect-deploy"]["condition"] == (
            "service_completed_successfully"
        )
        env = worker["environment"]
        apis.add(env["PREFECT_API_URL"])
        assert env["SCIM_PROVISIONER_HOME"] == "/app"
        assert "/etc/scim-provisioner/config.yaml" in " ".join(worker["volumes"])
    assert len(apis) == 2, "each worker talks to another API server"


def test_compose_has_the_sso_service_behind_a_profile() -> None:
    """The identity provider runs the product's command on the workers' config, keeps its
    signing key on a volume, publishes on 127.0.0.1, and the image has xmlsec1 to sign with."""
    sso = compose()["services"]["sso"]
    assert sso["profiles"] == ["sso"]
    assert sso["command"] == [
        "scim-provisioner",
        "sso",
        "serve",
        "--config",
        "/etc/scim-provisioner/config.yaml",
    ]
    assert sso["build"]["dockerfile"] == "docker/Dockerfile"
    assert "sso-keys:/etc/scim-provisioner/sso" in sso["volumes"]
    assert sso["ports"] == ["127.0.0.1:8443:8443"]
    assert "xmlsec1" in (DOCKER / "Dockerfile").read_text()


def test_compose_writes_no_secret_and_mounts_what_exists() -> None:
    """Every password, token or secret is interpolated from the environment; a URL's password
    too; ports are published on 127.0.0.1 only; every mounted file exists; the demo config
    mounted into the workers is a valid config whose secrets are references."""
    document = compose()
    for name, service in document["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert INTERPOLATED.match(str(value)), f"{name}: {key} is written inline"
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name}: {port} is published on every address"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), f"{name}: {source} does not exist"
    for text in strings(document):
        for password in re.findall(r"://[^:/@\s]+:([^@]+)@", text):
            assert INTERPOLATED.match(password), f"a password written inline: {text}"
        assert "bearer_tokens" not in text or "${DEMO_SCIM_TOKEN" in text
    config = load_config(DOCKER / "demo" / "config.yaml")
    assert config.targets[0].url.startswith("http://demo-scim:8000/")
    assert config.source.url == "ldap://demo-ldap:389"


def test_the_demo_scim_image_copies_what_exists_and_the_worker_image_no_test_server() -> None:
    """The demo's SCIM app has its own image; the provisioner's image copies no tests/."""
    demo = (DOCKER / "demo" / "scim.Dockerfile").read_text().splitlines()
    copied = [line.split()[1] for line in demo if line.startswith("COPY")]
    assert "tests/support" in copied
    assert all((ROOT / source).exists() for source in copied)
    assert (
        compose()["services"]["demo-scim"]["build"]["dockerfile"] == "docker/demo/scim.Dockerfile"
    )
    worker = (DOCKER / "Dockerfile").read_text()
    assert "COPY tests" not in worker
