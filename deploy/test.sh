#!/usr/bin/env bash
# Install everything the tests need (dcmtk, dicom3tools, Orthanc, PostgreSQL
# from Debian; Python packages from PyPI into ./.venv) and run them.
# Extra arguments go to pytest (e.g. -k ingest, -m "not system").
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
packages="dcmtk dicom3tools orthanc postgresql python3-venv"
missing=""
for p in $packages; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
    $SUDO apt-get update -qq
    # Services are started by the test fixtures on free loopback ports, not by the packages.
    made_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
    [ -z "$made_policy" ] || $SUDO rm -f /usr/sbin/policy-rc.d
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test,scale]"
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
