#!/usr/bin/env bash
# Creates ./.venv and installs auto-MBW's pinned requirements into it.
# With --test it also prepares what the whole test suite needs: .venv-gradio4
# (gradio 4.40 / pydantic 2, Forge's UI stack, overlaid on .venv) and, when run
# as root, Debian's chromium + chromium-driver for the browser test.
# torch/torchvision first (pinned; pip takes them from the local cache where one
# exists), then everything else under constraints.txt so no install can pull a
# different torch. Re-running is cheap: a stamp of the requirement files skips
# the installs when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
for arg in "$@"; do
  case "$arg" in
    --test) with_tests=1 ;;
    -h|--help) echo "usage: bash tools/setup.sh [--test]"; exit 0 ;;
    *) echo "auto-MBW setup: unknown option $arg (use --test or nothing)" >&2; exit 2 ;;
  esac
done

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

if [ "$with_tests" = 1 ]; then
  # gradio 4 overlay: its own gradio/fastapi/pydantic, the rest from .venv through a .pth file.
  overlay=.venv-gradio4
  overlay_stamp="$overlay/.auto-mbw-requirements"
  overlay_want=$(cat requirements-gradio4.txt constraints-gradio4.txt | sha256sum | cut -d' ' -f1)
  main_site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  if [ ! -x "$overlay/bin/python" ]; then
    echo "auto-MBW setup: creating $overlay (gradio 4 test venv)" >&2
    "$python_bin" -m venv "$overlay"
  fi
  overlay_site=$("$overlay/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  if [ "$(cat "$overlay_stamp" 2>/dev/null || true)" != "$overlay_want" ]; then
    # without the link to .venv while installing, so pip never touches .venv's packages
    rm -f "$overlay_site/zz_main_venv.pth"
    echo "auto-MBW setup: installing requirements-gradio4.txt into $overlay" >&2
    "$overlay/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements-gradio4.txt \
      -c constraints-gradio4.txt 2> >(grep -v "^WARNING: Location" >&2)
    echo "$overlay_want" > "$overlay_stamp"
  fi
  echo "$(cd "$main_site" && pwd)" > "$overlay_site/zz_main_venv.pth"

  # headless browser for tests/e2e (Selenium drives /usr/bin/chromium through chromedriver)
  if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "auto-MBW setup: installing chromium and chromium-driver with apt-get" >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }
    else
      echo "auto-MBW setup: chromium/chromedriver not found and not root; the browser test will be skipped" \
        "(install them, e.g. sudo apt-get install chromium chromium-driver)" >&2
    fi
  fi
fi
