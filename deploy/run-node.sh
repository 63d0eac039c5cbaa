#!/usr/bin/env bash
# Run dicom-node from this checkout: AE DICOM_NODE on port 11112, data in ./dicom-node-data
# (SQLite catalog, local files, CPU or GPU). The first run installs it (deploy/install.sh);
# later runs start at once, offline, unless setup.cfg or pyproject.toml changed.
# Extra arguments go to `dicom-node serve` (e.g. --port 104 --ae-title MYNODE).
# Stop it with Ctrl-C (or SIGTERM): running associations end, the catalog closes cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
wanted="$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -x .venv/bin/dicom-node ] || [ "$(cat .venv/.dicom-node-installed 2>/dev/null)" != "$wanted" ]; then
    bash deploy/install.sh
fi
exec .venv/bin/dicom-node serve "$@"
