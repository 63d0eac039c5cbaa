#!/usr/bin/env bash
# A real scan against the LIDC-IDRI reference library, through a running node (issue 10).
#
#   bash scripts/reference_demo.sh CROPS_DIR SCAN_DIR OUT_DIR
#
# CROPS_DIR is laid out like lidc-nodules (nodules.csv, image/, mask/), SCAN_DIR holds the
# DICOM files of one scan (e.g. LIDC-IDRI-0001), OUT_DIR is made. It imports the crops of
# every other patient into a fresh node data directory (OUT_DIR/data), starts the node with a
# dcmtk storescp as its results destination, sends the scan with dcmtk's storescu, waits for
# the similar-case SR and the key-image montage at the storescp, writes the montage's pixels
# to OUT_DIR/montage.png and the `dicom-node similar --png` gallery to OUT_DIR/similar.png.
# Needs dcmtk in /usr/bin and `dicom-node` on PATH (or DICOM_NODE=path/to/dicom-node).
set -euo pipefail
crops=$1 scan=$2 out=$3
node=${DICOM_NODE:-dicom-node}
python=${PYTHON:-$(dirname "$(command -v "$node")")/python}
export TCP_NODELAY=1
mkdir -p "$out/received"
data=$out/data

# the query patient: the PatientID of the scan's first file
patient=$("$python" -c "import pydicom, pathlib, sys; f = sorted(pathlib.Path(sys.argv[1]).rglob('*.dcm'))[0]; print(pydicom.dcmread(f, stop_before_pixels=True).PatientID)" "$scan")
echo "query patient: $patient (its own crops are left out of the library)"
"$node" import-crops --data-dir "$data" --nodules "$crops" --exclude-patient "$patient" --no-progress

read -r port sim_port results_port < <("$python" -c "
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(('127.0.0.1', 0))
print(*[s.getsockname()[1] for s in socks])
for s in socks: s.close()")
/usr/bin/storescp -aet RESULTS -od "$out/received" "$results_port" &
storescp_pid=$!
DICOM_NODE_OUTBOX_DESTINATIONS="RESULTS@127.0.0.1:$results_port" \
DICOM_NODE_SIMILARITY_PORT=$sim_port DICOM_NODE_SERIES_IDLE_SECONDS=5 \
    "$node" serve --data-dir "$data" --port "$port" > "$out/node.log" 2>&1 &
node_pid=$!
trap 'kill "$node_pid" "$storescp_pid" 2>/dev/null; wait "$node_pid" 2>/dev/null || true' EXIT

until /usr/bin/echoscu -aec DICOM_NODE 127.0.0.1 "$port" 2>/dev/null; do
    kill -0 "$node_pid" || { echo "the node stopped; see $out/node.log"; exit 1; }
    sleep 1
done
/usr/bin/storescu -aec DICOM_NODE +sd +r +sp '*.dcm' 127.0.0.1 "$port" "$scan"
echo "scan sent; waiting for the SR and the montage (idle 5 s, then processing)"

for _ in $(seq 1 1800); do
    [ "$(find "$out/received" -type f | wc -l)" -ge 2 ] && break
    sleep 1
done
"$python" - "$out" <<'EOF'
import pathlib, sys
import matplotlib.image
import pydicom

out = pathlib.Path(sys.argv[1])
found = {}
for path in (out / "received").iterdir():
    ds = pydicom.dcmread(path)
    found[ds.Modality] = ds
    print(f"received {ds.Modality} {ds.SOPClassUID.name}: {ds.get('SeriesDescription', '')}")
montage = next(ds for ds in found.values() if "PixelData" in ds)
matplotlib.image.imsave(out / "montage.png", montage.pixel_array, cmap="gray")
print(f"montage {montage.Rows} x {montage.Columns} written to {out / 'montage.png'}")
print(f"study {montage.StudyInstanceUID}")
(out / "study_uid").write_text(str(montage.StudyInstanceUID))
EOF
"$node" status --data-dir "$data" > "$out/status.txt"
head -6 "$out/status.txt"   # the newest study first: the scan (the crops have no StudyDate)
"$node" similar --data-dir "$data" --study "$(cat "$out/study_uid")" --png "$out/similar.png"
