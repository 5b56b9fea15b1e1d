"""Select MuJoCo's OSMesa off-screen backend before anything imports mujoco's rendering (EGL failed on CPU hosts)."""

import os

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
# llvmpipe's render threads do not survive fork(): a worker forked after the parent rendered would wait on
# them forever. At 64-128 px single-threaded rasterising costs nothing measurable, and 2-core hosts gain.
os.environ.setdefault("LP_NUM_THREADS", "0")
