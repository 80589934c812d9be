"""The container files are written for users (no Docker engine runs here): check them as text."""

from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_dockerfile_copies_what_exists_installs_and_runs_unprivileged() -> None:
    """Every COPY source exists, the project is pip-installed, and the image drops root."""
    instructions = [
        line.split(maxsplit=1)
        for line in (ROOT / "docker" / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.startswith("#") and not line.startswith(" ")
    ]
    assert instructions[0][0] == "FROM"
    copied = [w for op, args in instructions if op == "COPY" for w in args.split()[:-1]]
    assert {"pyproject.toml", "flows", "tasks", "deployments"} <= set(copied)
    assert all((ROOT / source).exists() for source in copied)
    assert ["RUN", "pip install --no-cache-dir ."] in instructions
    assert instructions[-2] == ["USER", "provisioner"]
