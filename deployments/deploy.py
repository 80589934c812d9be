"""Register the project's deployments on the Prefect server in ``PREFECT_API_URL``.

    python -m deployments.deploy                               # prefect.yaml as it is
    python -m deployments.deploy --config FILE                 # ... with config_path=FILE
    python -m deployments.deploy --config FILE --per-target    # one deployment per target
    python -m deployments.deploy ... --paused                  # schedules registered, inactive

``deployments/prefect.yaml`` stays the one source of the schedules, the work pool, the
concurrency limits and the parameters: this script only fills in what depends on the machine
(the config file's path) and, with ``--per-target``, repeats each deployment once per target
of the config, named ``<name>-<target>`` (``every-5-minutes-example-app``), with the ``target``
parameter set and a ``target:<name>`` tag. Each target then has its own schedule, its own
one-at-a-time limit and its own runs (named ``provision-users-<target>`` by the flows), so a
slow or failing target neither delays nor fails the others, a failed target is retried alone,
and two workers load two targets at once. Without it, one run serves every target and reads
the directory once (cheaper with many targets).

The expanded file goes to ``prefect --no-prompt deploy --all``, run from the repository root
with ``SCIM_PROVISIONER_HOME`` set (the pull step's working directory).
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from deployments.processes import REPO_ROOT

PREFECT_YAML = REPO_ROOT / "deployments" / "prefect.yaml"


class _NoAliasDumper(yaml.SafeDumper):
    """Writes the anchors of prefect.yaml out in full (each deployment its own copy)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def target_names(config: Path) -> list[str]:
    """The names of the targets of a config file (read as YAML; secrets are not resolved)."""
    document = yaml.safe_load(config.read_text()) or {}
    names = [str(target["name"]) for target in document.get("targets") or []]
    if not names:
        raise ValueError(f"{config}: no targets")
    return names


def expand(
    spec: Mapping[str, Any],
    *,
    config: Path | None = None,
    targets: list[str] | None = None,
    paused: bool = False,
) -> dict[str, Any]:
    """prefect.yaml's content with ``config_path`` set, one deployment per target (when
    ``targets`` are given) and, with ``paused``, every schedule inactive."""
    expanded = copy.deepcopy(dict(spec))
    deployments = []
    for deployment in expanded["deployments"]:
        if config is not None:
            deployment["parameters"]["config_path"] = str(config.resolve())
        if paused:
            deployment["schedules"] = [{**s, "active": False} for s in deployment["schedules"]]
        if targets is None:
            deployments.append(deployment)
            continue
        for target in targets:
            copied = copy.deepcopy(deployment)
            copied["name"] = f"{deployment['name']}-{target}"
            copied["description"] = f"{deployment['description'].rstrip()} Target: {target}."
            copied["parameters"]["target"] = target
            copied["tags"] = [*deployment.get("tags", []), f"target:{target}"]
            deployments.append(copied)
    expanded["deployments"] = deployments
    return expanded


def deployment_names(spec: Mapping[str, Any]) -> list[str]:
    """``flow/deployment`` names (the project's flows are named like their functions)."""
    return [f"{d['entrypoint'].split(':')[1]}/{d['name']}" for d in spec["deployments"]]


def deploy(
    *,
    config: Path | None = None,
    per_target: bool = False,
    paused: bool = False,
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """Register the deployments on the server of ``env`` (default: this process's
    environment); return their ``flow/deployment`` names.

    :raises RuntimeError: When ``prefect deploy`` fails (its output in the message).
    """
    spec = yaml.safe_load(PREFECT_YAML.read_text())
    targets = target_names(config) if per_target and config is not None else None
    if per_target and config is None:
        raise ValueError("--per-target needs --config: the targets come from the config file")
    expanded = expand(spec, config=config, targets=targets, paused=paused)
    environment = {**(env if env is not None else os.environ)}
    environment.setdefault("SCIM_PROVISIONER_HOME", str(REPO_ROOT))
    with tempfile.TemporaryDirectory(prefix="scim-provisioner-deploy-") as directory:
        prefect_file = Path(directory) / "prefect.yaml"
        prefect_file.write_text(yaml.dump(expanded, Dumper=_NoAliasDumper, sort_keys=False))
        command = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"]
        result = subprocess.run(
            [*command, "--prefect-file", str(prefect_file)],
            cwd=REPO_ROOT,
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"prefect deploy failed:\n{result.stdout}\n{result.stderr}".strip())
    return deployment_names(expanded)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.deploy",
        description="Register deployments/prefect.yaml on the server in PREFECT_API_URL.",
    )
    parser.add_argument("--config", type=Path, help="the config file the runs use")
    parser.add_argument(
        "--per-target", action="store_true", help="one deployment per target of --config"
    )
    parser.add_argument("--paused", action="store_true", help="register the schedules inactive")
    args = parser.parse_args(argv)
    try:
        names = deploy(config=args.config, per_target=args.per_target, paused=args.paused)
    except (RuntimeError, ValueError, OSError) as error:
        print(f"deploy: {error}", file=sys.stderr)
        return 2
    for name in names:
        print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
