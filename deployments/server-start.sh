#!/usr/bin/env bash
# Start the Prefect server (PostgreSQL on 127.0.0.1:5432), the work pool scim-provisioner, the
# deployments of deployments/prefect.yaml and a worker; UI on http://127.0.0.1:4200.
#   bash deployments/server-start.sh [--port 4200] [--config FILE] [--per-target] [--workers N]
# Export the config's secrets first: the workers and their flow runs inherit this environment.
# Stop everything with: bash deployments/server-stop.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source deployments/setup.sh
exec "$VENV_PYTHON" -m deployments.prefect_server start "$@"
