# Source this file (". tools/env.sh") to put the venv and the message overlay into this shell, the way
# sourcing a ROS workspace's setup.bash does.
_p6d_root=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)
_p6d_venv="$_p6d_root/.venv"
_p6d_overlay="$_p6d_root/.overlay"
export VIRTUAL_ENV="$_p6d_venv"
export PATH="$_p6d_venv/bin:$PATH"
export AMENT_PREFIX_PATH="$_p6d_overlay:$_p6d_venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
_p6d_site=$(ls -d "$_p6d_overlay"/lib/python3*/site-packages 2>/dev/null | head -n 1)
export PYTHONPATH="${_p6d_site:+$_p6d_site:}$_p6d_root${PYTHONPATH:+:$PYTHONPATH}"
export LD_LIBRARY_PATH="$_p6d_overlay/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
export PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-osmesa}"
unset _p6d_root _p6d_venv _p6d_overlay _p6d_site
