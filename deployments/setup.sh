#!/usr/bin/env bash
# Install what the project needs on a fresh Debian/Ubuntu machine, then stay quiet on later runs:
#   - Debian packages: slapd + ldap-utils (the demo's and the tests' real OpenLDAP), python3-venv,
#     xmlsec1 (the SAML identity provider signs with it);
#     for the tests only: samba-ad-dc + samba-ad-provision + socat + iproute2 (the Samba AD DC)
#     and chromium + chromium-driver (the Prefect UI test);
#   - a virtual environment (.venv, or $SCIM_PROVISIONER_VENV) with the project and its extras:
#     [demo] (the demo's SCIM application) or [test] (everything the tests use).
# Sourced by deployments/demo.sh (SETUP_FOR=demo: only what the demo needs) and tests/run.sh
# (the default, SETUP_FOR=test); exports VENV_PYTHON.
set -euo pipefail
SETUP_FOR="${SETUP_FOR:-test}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SCIM_PROVISIONER_VENV:-$ROOT/.venv}"

missing=()
{ command -v slapd || [ -x /usr/sbin/slapd ]; } >/dev/null 2>&1 || missing+=(slapd)
command -v ldapsearch >/dev/null 2>&1 || missing+=(ldap-utils)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# The SAML identity provider (scim-provisioner sso serve) signs with xmlsec1 (pysaml2).
command -v xmlsec1 >/dev/null 2>&1 || missing+=(xmlsec1)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if [ "$SETUP_FOR" = test ]; then
  # The tests' Samba AD DC (tests/support/samba_dc.py): samba + winbind, provisioning files, bridges.
  { command -v samba || [ -x /usr/sbin/samba ]; } >/dev/null 2>&1 || missing+=(samba-ad-dc)
  [ -d /usr/share/samba/setup ] || missing+=(samba-ad-provision)
  command -v socat >/dev/null 2>&1 || missing+=(socat)
  { command -v ip || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ]; } >/dev/null 2>&1 || missing+=(iproute2)
  # The Prefect UI test (tests/integration/test_prefect_ui.py): headless Chromium and its driver.
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then sudo=(); elif command -v sudo >/dev/null; then sudo=(sudo); else
    echo "setup: please install these Debian packages first: ${missing[*]}" >&2; exit 1
  fi
  echo "setup: installing ${missing[*]} (apt-get)" >&2
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating the virtual environment $VENV" >&2
  python3 -m venv "$VENV"
fi
stamp="$VENV/.scim-provisioner-installed"
# [test] includes [demo]: a venv set up for the tests serves the demo as it is.
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ] || \
   { [ "$(cat "$stamp")" != "$ROOT test" ] && [ "$(cat "$stamp")" != "$ROOT $SETUP_FOR" ]; }; then
  echo "setup: installing the project and its $SETUP_FOR dependencies into $VENV (about a minute)" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -U pip
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[$SETUP_FOR]"
  echo "$ROOT $SETUP_FOR" > "$stamp"
fi
# The project's own modules as bytecode, refreshed where their source changed: where Python may
# not write it (PYTHONDONTWRITEBYTECODE, as on these machines and in the image), each command
# would otherwise compile them again, ~0.2 s of its start (docs/performance.md).
"$VENV/bin/python" -m compileall -q "$ROOT/flows" "$ROOT/tasks" "$ROOT/deployments" >/dev/null
export VENV_PYTHON="$VENV/bin/python"
# Prefect's anonymous usage telemetry: off (and these machines have no internet anyway).
export PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"
