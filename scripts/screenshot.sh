#!/usr/bin/env bash
# Renders an HTML page (a demo report, an inspect page) to a PNG with headless Chromium,
# to check that every picture renders and nothing overlaps, and for README pictures.
#   scripts/screenshot.sh runs/demo/report.html shot.png [WIDTH [HEIGHT]]
# Needs Debian's chromium (apt-get install chromium); not needed by the build or tests.
set -euo pipefail
if [ $# -lt 2 ]; then echo "usage: $0 PAGE.html OUT.png [WIDTH [HEIGHT]]" >&2; exit 2; fi
page=$(realpath "$1"); out=$2; width=${3:-1400}; height=${4:-3200}
[ -f "$page" ] || { echo "$0: no such page: $1" >&2; exit 1; }
command -v chromium >/dev/null || { echo "$0: chromium not found (apt-get install chromium)" >&2; exit 1; }
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size="$width,$height" \
  --screenshot="$out" "file://$page" 2>/dev/null
[ -s "$out" ] || { echo "$0: no screenshot written" >&2; exit 1; }
echo "wrote $out"
