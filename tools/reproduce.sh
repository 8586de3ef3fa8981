#!/usr/bin/env bash
# The main job on the embedded default lab: bring it up, boot the guest,
# live-migrate it, and always take the lab down again.
set -euo pipefail
cd "$(dirname "$0")/.."
tb=.venv/bin/testbed
lab=$($tb up topologies/local.yaml | tee /dev/stderr | sed -n 's/^lab \([0-9a-f]\{4\}\) is up.*/\1/p')
trap '$tb down "$lab"' EXIT
$tb guest start vm --lab "$lab"
$tb migrate vm dst --lab "$lab" --bandwidth 200
