#!/usr/bin/env bash
# From a fresh clone: system packages, then `npm install` (Python venv with
# pinned MLX, OpenBLAS for MLX on Linux, the default model, the native addon,
# the bundles), then the tests.
#   scripts/bootstrap.sh            install and test
#   scripts/bootstrap.sh --no-test  install only
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "$(uname -s)" == "Linux" ]] && command -v apt-get >/dev/null; then
  # patchelf: npm run package points the addon's libraries at each other ($ORIGIN).
  packages=(libopenblas0-pthread cmake g++ make python3 python3-venv patchelf)
  missing=()
  for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if ((${#missing[@]})); then
    sudo=""
    [[ "$(id -u)" == 0 ]] || sudo="sudo"
    echo "[bootstrap] installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
elif [[ "$(uname -s)" == "Darwin" ]]; then
  for tool in cmake node npm; do
    command -v "$tool" >/dev/null || { echo "[bootstrap] $tool is needed: brew install cmake node python@3.12" >&2; exit 1; }
  done
fi

npm ci --no-audit --no-fund
if [[ "${1:-}" != "--no-test" ]]; then
  npm test
fi
