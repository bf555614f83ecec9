#!/usr/bin/env bash
# Build pytorch3d from its source tarball into a wheel once, cache the wheel outside the repository, and install
# it into the venv. Later runs take seconds: a cached wheel is only installed, an installed one is left alone.
# Usage: tools/build_pytorch3d.sh VENV [SRC_TARBALL]
#   SRC_TARBALL  default ../shared/vendor/pytorch3d-0.7.9-src.tar.gz (relative to the repository root)
# Environment:
#   PYTORCH3D_WHEEL_CACHE  wheel cache (default ${XDG_CACHE_HOME:-$HOME/.cache}/pose6d_ros/wheels)
#   MAX_JOBS               parallel compiler jobs (default 2: the build machines have 2 cores)
#   FORCE_CUDA=1           build the CUDA kernels too (needs nvcc); the default is a CPU build
#   PYTORCH3D_BUILD_LOG    where the compiler output goes (default: a file beside the cached wheel)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:?usage: tools/build_pytorch3d.sh VENV [SRC_TARBALL]}
src=${2:-$root/../shared/vendor/pytorch3d-0.7.9-src.tar.gz}
py="$venv/bin/python"

[ -x "$py" ] || { echo "pytorch3d: no python in venv '$venv' (run make setup first)" >&2; exit 2; }
[ -f "$src" ] || { echo "pytorch3d: source tarball not found: $src (set PYTORCH3D_SRC=/path/to/pytorch3d-<version>-src.tar.gz)" >&2; exit 2; }

# The cache key: pytorch3d version (read from the tarball), torch version (the C++ extension is tied to its ABI),
# Python tag, flavour (cpu or cuda) and this script's recipe number (raise it when the build flags change).
version=$(tar xzf "$src" -O pytorch3d/pytorch3d/__init__.py | sed -n 's/^__version__ = "\(.*\)"$/\1/p')
[ -n "$version" ] || { echo "pytorch3d: no __version__ in pytorch3d/pytorch3d/__init__.py of $src" >&2; exit 2; }
read -r torch_version pytag < <("$py" -c 'import sys, torch; print(torch.__version__, "cp%d%d" % sys.version_info[:2])')
flavour=cpu; [ "${FORCE_CUDA:-0}" = 1 ] && flavour=cuda
cache=${PYTORCH3D_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pose6d_ros/wheels}
recipe=2
key="pytorch3d-$version-torch-${torch_version//+/_}-$pytag-$flavour-r$recipe"
keydir="$cache/$key"
stamp="$venv/.pytorch3d-stamp"

# Installed from this very key (and importable with its compiled part)? Then there is nothing to do.
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ] && "$py" -c 'import torch, pytorch3d._C' 2>/dev/null; then
  echo "pytorch3d: $version already installed ($key)"; exit 0
fi

wheel=$(ls "$keydir"/pytorch3d-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
  mkdir -p "$keydir"
  log=${PYTORCH3D_BUILD_LOG:-$keydir/build.log}
  work=$(mktemp -d "${TMPDIR:-/tmp}/pytorch3d-build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  echo "pytorch3d: building $version for torch $torch_version ($pytag, $flavour), MAX_JOBS=${MAX_JOBS:-2}; log: $log"
  tar xzf "$src" -C "$work"
  # Two edits to setup.py, each checked: (1) it pins -std=c++17, and as a per-extension flag that comes after
  # (and so overrides) torch's own -std=c++20, which torch >= 2.10 headers need; (2) it packages
  # projects/implicitron_trainer, which the source tarball does not ship.
  "$py" - "$work/pytorch3d/setup.py" <<'PATCH' || { echo "pytorch3d: cannot patch setup.py of $src (upstream changed it?)" >&2; exit 2; }
import re, sys
path = sys.argv[1]
text = open(path).read()
edits = [('"cxx": ["-std=c++17"]', '"cxx": ["-std=c++20"]'),
         ("+ [trainer],", ","),
         ('package_dir={trainer: "projects/implicitron_trainer"},', "")]
for old, new in edits:
    if text.count(old) != 1:
        sys.exit("setup.py: %r not found once" % old)
    text = text.replace(old, new)
text, n = re.subn(r"entry_points=\{.*?\n    \},\n", "", text, flags=re.S)
if n != 1:
    sys.exit("setup.py: entry_points block not found once")
open(path, "w").write(text)
PATCH
  start=$(date +%s)
  if [ "$flavour" = cpu ]; then export FORCE_CUDA=0 PYTORCH3D_FORCE_NO_CUDA=1; fi
  # Python's own CFLAGS (-O3 -DNDEBUG ...) plus -g0: they ask for debug info too, which makes the build slower
  # and the library ~10x larger. $CFLAGS replaces them in setuptools >= 72, so they are all spelled out here
  # (without -O3 the CPU rasterizer is ~40x slower).
  pycflags=$("$py" -c 'import sysconfig; print(sysconfig.get_config_var("CFLAGS") or "")')
  if ! CFLAGS="$pycflags ${CFLAGS:+$CFLAGS }-g0" MAX_JOBS=${MAX_JOBS:-2} "$py" -m pip wheel --no-build-isolation --no-deps -w "$work/dist" \
      "$work/pytorch3d" >"$log" 2>&1; then
    echo "pytorch3d: build failed; last lines of $log:" >&2; tail -n 30 "$log" >&2; exit 1
  fi
  built=$(ls "$work"/dist/pytorch3d-*.whl)
  # Copy then rename, so that a killed run never leaves a half-written wheel in the cache.
  cp "$built" "$keydir/.partial.whl" && mv "$keydir/.partial.whl" "$keydir/$(basename "$built")"
  wheel="$keydir/$(basename "$built")"
  echo "pytorch3d: built $(basename "$wheel") in $(( $(date +%s) - start )) s, cached in $keydir"
else
  echo "pytorch3d: using cached $wheel"
fi
"$py" -m pip install -q --no-deps --force-reinstall "$wheel"
"$py" -c 'import torch, pytorch3d._C' || { echo "pytorch3d: installed $wheel does not import" >&2; exit 1; }
echo "$key" >"$stamp"
echo "pytorch3d: $version installed into $venv"
