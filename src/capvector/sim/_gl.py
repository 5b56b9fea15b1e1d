"""Select MuJoCo's OSMesa off-screen backend before anything imports mujoco's rendering (EGL failed on CPU hosts)."""

import os

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
