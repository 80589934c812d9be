#!/usr/bin/env bash
# The demo command: installs what is missing, starts a local slapd with sample people and a local
# SCIM application, runs provision_users through Prefect and prints the result.
# Arguments go to deployments/demo.py (--users N, --keep).
set -euo pipefail
cd "$(dirname "$0")/.."
source deployments/setup.sh
exec "$VENV_PYTHON" -m deployments.demo "$@"
