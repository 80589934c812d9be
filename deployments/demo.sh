#!/usr/bin/env bash
# The demo command: installs what is missing, starts a local slapd with sample people and a local
# SCIM application, runs provision_users through Prefect and prints the result.
# Arguments go to tests/support/demo.py (--users N, --keep: servers run until Ctrl-C or SIGTERM).
set -euo pipefail
cd "$(dirname "$0")/.."
SETUP_FOR=demo source deployments/setup.sh  # only what the demo needs (no Samba, no Chromium)
exec "$VENV_PYTHON" -m tests.support.demo "$@"
