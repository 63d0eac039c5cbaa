#!/usr/bin/env bash
# Install dicom-node once, from this checkout:
#   - a virtual environment in ./.venv with torch (pinned, CPU or CUDA wheel from PyPI's
#     default) and dicom-node (editable: `git pull` + restart updates the code; the
#     shipped hashing model in ai/weights is part of the package);
#   - `dicom-node` on PATH: a link in /usr/local/bin when this runs as root (or with sudo),
#     otherwise in ~/.local/bin (only dicom-node: the venv's other commands include
#     pynetdicom's storescu/echoscu/findscu, which must not hide dcmtk's);
#   - a stamp (.venv/.dicom-node-installed) with the hash of setup.cfg and pyproject.toml:
#     deploy/run-node.sh installs again only when they change, and runs offline otherwise.
#
#   bash deploy/install.sh              # the above
#   bash deploy/install.sh --system     # also the service: user dicom-node, /var/lib/dicom-node,
#                                       # /etc/dicom-node/{dicom-node.toml,backfill.env},
#                                       # systemd units (node, nightly backfill timer)
#
# Needs Python 3.11+ with venv and network access to PyPI (once). Re-running is safe.
set -euo pipefail
cd "$(dirname "$0")/.."
HOME_DIR="$(pwd)"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
SYSTEM=""
for arg in "$@"; do
    case "$arg" in
        --system) SYSTEM=1 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
    esac
done

if ! python3 -c "import venv, ensurepip" 2>/dev/null; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: an unpinned torch pulls a multi-GB build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e .
.venv/bin/dicom-node --version >/dev/null
cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1 > .venv/.dicom-node-installed
echo "dicom-node installed in $HOME_DIR/.venv ($(.venv/bin/dicom-node --version))"

if [ -n "$SUDO" ] && ! sudo -n true 2>/dev/null; then
    mkdir -p "$HOME/.local/bin"
    ln -sf "$HOME_DIR/.venv/bin/dicom-node" "$HOME/.local/bin/dicom-node"
    echo "dicom-node linked as $HOME/.local/bin/dicom-node (on PATH in a new login shell on Debian);"
    echo "  or: export PATH=\"\$PATH:$HOME_DIR/.venv/bin\" (at the end: the venv also holds"
    echo "  pynetdicom's storescu/echoscu/findscu, which would hide dcmtk's)"
else
    $SUDO ln -sf "$HOME_DIR/.venv/bin/dicom-node" /usr/local/bin/dicom-node
    echo "dicom-node is on PATH: /usr/local/bin/dicom-node -> $HOME_DIR/.venv/bin/dicom-node"
fi

[ -n "$SYSTEM" ] || exit 0

# --- the service ---------------------------------------------------------------------------
id dicom-node >/dev/null 2>&1 || $SUDO useradd --system --home-dir /var/lib/dicom-node \
    --shell /usr/sbin/nologin dicom-node
$SUDO install -d -o dicom-node -g dicom-node -m 0750 /var/lib/dicom-node
$SUDO install -d -m 0755 /etc/dicom-node
if [ ! -e /etc/dicom-node/dicom-node.toml ]; then
    sed 's|^data_dir = .*|data_dir = "/var/lib/dicom-node"|' config/dicom-node.toml \
        | $SUDO tee /etc/dicom-node/dicom-node.toml >/dev/null
    echo "wrote /etc/dicom-node/dicom-node.toml (data_dir /var/lib/dicom-node): edit it"
fi
if [ ! -e /etc/dicom-node/backfill.env ]; then
    $SUDO install -m 0640 -g dicom-node deploy/systemd/backfill.env /etc/dicom-node/backfill.env
    echo "wrote /etc/dicom-node/backfill.env: set the archive the nightly backfill reads"
fi
# The units name /opt/dicom-node; point them at this checkout if it lives elsewhere.
for unit in dicom-node.service dicom-node-backfill.service dicom-node-backfill.timer; do
    sed "s|/opt/dicom-node|$HOME_DIR|g" "deploy/systemd/$unit" \
        | $SUDO tee "/etc/systemd/system/$unit" >/dev/null
done
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    $SUDO systemctl daemon-reload
    echo "units installed; start them with:"
else
    echo "units written to /etc/systemd/system (systemd is not running here); on the server:"
fi
echo "  systemctl enable --now dicom-node dicom-node-backfill.timer"
