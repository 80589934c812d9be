"""What ships: the wheel holds the product (flows, tasks, deployments), never the test lab."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TEST_SERVERS = ("local_servers", "scim_app", "oauth_app", "samba_dc", "scim_sqlite", "demo")


def test_the_wheel_holds_no_test_or_demo_server(tmp_path: Path) -> None:
    """Built as pip builds it: the product's packages are in, and no module of tests/ nor any
    test or demo server (they were in deployments/ and shipped in the wheel and the image)."""
    source = tmp_path / "source"  # a clean copy: setuptools leaves build/ where it builds
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".demo", ".*_cache"
        ),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("scim_provisioner-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    modules = {n for n in names if n.endswith(".py")}
    assert {"flows/cli.py", "tasks/scim/client.py", "deployments/prefect_server.py"} <= modules
    assert not [n for n in modules if n.startswith("tests/")]
    shipped = {Path(n).stem for n in modules if n.startswith("deployments/")}
    assert not shipped & set(TEST_SERVERS), shipped & set(TEST_SERVERS)
