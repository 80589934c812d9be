#!/usr/bin/env bash
# Stop what deployments/server-start.sh started: the workers (SIGINT), then the server.
#   bash deployments/server-stop.sh [--drop-database]
set -euo pipefail
cd "$(dirname "$0")/.."
source deployments/setup.sh
exec "$VENV_PYTHON" -m deployments.prefect_server stop "$@"
