#!/usr/bin/env bash
# One-time (idempotent) setup of a cmh checkout on Debian 12:
#   - Debian packages: libopenblas-dev (LAPACK for the shallow methods), python3-venv, npm (the
#     demo fetches its emoji packages with it on first use) when no npm is on PATH;
#   - a project venv .venv with torch==2.13.0 (libtorch for tch) and the scripts' packages
#     (scripts/requirements.txt), reinstalled only when that file changes;
#   - the Python package python/ (`import cmh_tools`), installed editable into the venv;
#   - .libtorch -> the venv's torch folder (.cargo/config.toml points LIBTORCH at it);
#   - a release build (target/release/cmh).
# Re-running it when everything is present takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
missing=()
for pkg in libopenblas-dev python3-venv pkg-config fonts-dejavu-core; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
# npm fetches the emoji packages on the demo's first run (any npm on PATH will do).
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.cmh-requirements
if ! cat scripts/requirements.txt scripts/requirements-nodeps.txt | cmp -s - "$stamp"; then
  echo "setup: installing Python packages (torch==2.13.0 is about 4.7 GB on first install)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r scripts/requirements.txt
  .venv/bin/python -m pip install -q --no-deps -r scripts/requirements-nodeps.txt
  cat scripts/requirements.txt scripts/requirements-nodeps.txt > "$stamp"
fi
# The Python package, editable (an edit to python/cmh_tools needs no reinstall); redone when this
# checkout's path or python/pyproject.toml changes.
pkg_stamp=.venv/.cmh-python-package
pkg_want="$(pwd)/python $(cksum < python/pyproject.toml)"
if [ "$(cat "$pkg_stamp" 2>/dev/null)" != "$pkg_want" ]; then
  echo "setup: installing the Python package (python/, import cmh_tools)"
  log=$(mktemp)
  # setuptools warns about editable installs on every run; its output is shown only on failure.
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e python/ >"$log" 2>&1 \
    || { cat "$log" >&2; rm -f "$log"; exit 1; }
  rm -f "$log"
  printf '%s\n' "$pkg_want" > "$pkg_stamp"
fi
purelib=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
[ -d "$purelib/torch/lib" ] || { echo "setup: $purelib/torch/lib is missing; is torch installed?" >&2; exit 1; }
ln -sfn "$purelib/torch" .libtorch

command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1; }
cargo build --release --quiet
echo "setup: ready (target/release/cmh)"
