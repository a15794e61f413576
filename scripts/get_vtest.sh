#!/usr/bin/env bash
# Put OpenCV's sample video vtest.avi (a static camera: people walking across a campus, 768x576,
# 795 frames at 10 fps; Apache-2.0 AND BSD-3-Clause, OpenCV) into datasets/videos/ from Debian's
# opencv-doc package, the real footage of docs/results/2026-11-29-video-folder.md.
# Usage: bash scripts/get_vtest.sh [DEST_FOLDER]   (needs apt-get; nothing is installed)
set -euo pipefail
dest=${1:-datasets/videos}
work=$(mktemp -d)
chmod a+rwx "$work"  # apt-get download runs as the _apt user where it can
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download opencv-doc >/dev/null && dpkg-deb -x opencv-doc_*.deb x)
mkdir -p "$dest"
cp "$work/x/usr/share/doc/opencv-doc/examples/data/vtest.avi" "$dest/"
echo "wrote $dest/vtest.avi ($(stat -c %s "$dest/vtest.avi") bytes)"
