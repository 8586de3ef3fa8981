#!/usr/bin/env bash
# The main job: Red Hat bug 884631 on the embedded default lab, with the fix off
# (the reproduction: switch-host) and on (the validation: seamless).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/testbed run playbooks/bug-884631.yaml --topology topologies/local.yaml "$@"
