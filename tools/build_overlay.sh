#!/usr/bin/env bash
# Build tf2_msgs and vision_msgs (not on PyPI) into a local ament overlay with the rosidl wheels.
# Usage: tools/build_overlay.sh VENV OVERLAY
# Idempotent: a package whose .msg files have not changed since its last build is skipped.
set -euo pipefail
venv=$(realpath "$1"); overlay=$(mkdir -p "$2" && realpath "$2")
here=$(cd "$(dirname "$0")" && pwd)
py="$venv/bin/python"

# The wheels' exported CMake targets hard-code two paths of the machine that built them.
fake=/opt/python/cp311-cp311
inc=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
npinc=$("$py" -c 'import numpy; print(numpy.get_include())')
mkdir -p "$fake/include" "$fake/lib/python3.11/site-packages/numpy/_core"
# -f: repoint a link left by another checkout (it may be gone, leaving the link dangling).
ln -sfn "$inc" "$fake/include/python3.11"
ln -sfn "$npinc" "$fake/lib/python3.11/site-packages/numpy/_core/include"

export AMENT_PREFIX_PATH="$overlay:$venv"
export PATH="$venv/bin:$PATH"
for pkg in tf2_msgs vision_msgs; do
  src="$here/ros_interfaces/$pkg"
  stamp="$overlay/.built-$pkg"
  sum=$(cat "$src"/package.xml "$src"/CMakeLists.txt "$src"/msg/*.msg | sha256sum | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ]; then
    echo "overlay: $pkg up to date"; continue
  fi
  echo "overlay: building $pkg"
  build="$overlay/.build/$pkg"; rm -rf "$build"; mkdir -p "$build"
  (cd "$build" && cmake "$src" -DCMAKE_PREFIX_PATH="$overlay;$venv" -DPython3_EXECUTABLE="$py" \
      -DCMAKE_INSTALL_PREFIX="$overlay" -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release >cmake.log 2>&1 \
    && make -j2 install >make.log 2>&1) || { echo "overlay: $pkg failed; logs in $build"; tail -30 "$build"/*.log; exit 1; }
  echo "$sum" > "$stamp"
done
