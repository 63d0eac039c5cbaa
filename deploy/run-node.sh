#!/usr/bin/env bash
# Install dicom-node into ./.venv and run it on the embedded default
# (SQLite catalog and local files in ./dicom-node-data, CPU or GPU).
# Extra arguments go to `dicom-node serve` (e.g. --port 104 --ae-title MYNODE).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! python3 -c "import venv, ensurepip" 2>/dev/null; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: an unpinned torch pulls a multi-GB build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q ".[orthanc]"
exec .venv/bin/dicom-node serve "$@"
