#!/usr/bin/env bash
# Creates ./.venv and installs auto-MBW's pinned requirements into it.
# torch/torchvision first (pinned; pip takes them from the local cache where one
# exists), then everything else under constraints.txt so no install can pull a
# different torch. Re-running is cheap: a stamp of the requirement files skips
# the installs when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

python_bin=${PYTHON:-$(command -v python3.11 || command -v python3)}
venv=.venv
stamp="$venv/.auto-mbw-requirements"
want=$(cat requirements.txt requirements-dev.txt constraints.txt | sha256sum | cut -d' ' -f1)

if [ ! -x "$venv/bin/python" ]; then
  echo "auto-MBW setup: creating $venv with $python_bin" >&2
  "$python_bin" -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c constraints.txt)
  echo "auto-MBW setup: installing torch==2.14.1 torchvision==0.29.1 (first run takes a few minutes)" >&2
  "${pip[@]}" torch==2.14.1 torchvision==0.29.1 2> >(grep -v "^WARNING: Location" >&2)
  echo "auto-MBW setup: installing requirements.txt and requirements-dev.txt" >&2
  "${pip[@]}" -r requirements.txt -r requirements-dev.txt 2> >(grep -v "^WARNING: Location" >&2)
  echo "$want" > "$stamp"
fi
