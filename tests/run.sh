#!/usr/bin/env bash
# The test command: installs what is missing, then runs every test against real servers
# (slapd, scim2-server, Prefect, PostgreSQL on 127.0.0.1:5432). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source deployments/setup.sh
"$VENV_PYTHON" -m ruff check --quiet .
"$VENV_PYTHON" -m ruff format --check --quiet .
"$VENV_PYTHON" -m mypy
"$VENV_PYTHON" -m mypy --strict flows tasks   # the product code: strict
status=0
"$VENV_PYTHON" -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "tests/run.sh: pytest collected no tests: that is a failure, not a pass" >&2
  exit 1
fi
exit "$status"
