"""Render-quality settings shared by the DMC and Meta-World envs (anchors.md section 6)."""
from __future__ import annotations

import atexit
import weakref
from typing import Any


def apply_render_quality(model: Any, quality: str) -> None:
    """Set a MuJoCo model's render settings; call it before the first render.

    "paper": the simulator's defaults, left untouched. "fast": no multisampling, no shadows and
    no reflections (4-10x faster on a CPU renderer; the pixels look different). Only rendering is
    affected; the physics is the same.
    """
    if quality == "paper":
        return
    if quality != "fast":
        from harness.errors import HarnessError
        raise HarnessError(f"unknown render quality {quality!r}; valid: paper, fast")
    model.vis.quality.offsamples = 0   # read when the offscreen buffer is made: before first render
    model.light_castshadow[:] = 0      # same pixels as turning the scene's shadow flag off
    model.mat_reflectance[:] = 0.0     # same as turning the scene's reflection flag off


_RENDERING_ENVS: "weakref.WeakSet[Any]" = weakref.WeakSet()


def _close_rendering_envs() -> None:
    for env in list(_RENDERING_ENVS):
        env.close()


def close_at_exit(env: Any) -> None:
    """Close ``env`` at interpreter exit, before EGL is torn down; call after its first render.

    The GL libraries register ``eglTerminate`` at exit when they make their first context, and
    dm_control and Meta-World share one EGL display, so whichever terminates first breaks the
    other's clean-up (EGL_BAD_DISPLAY tracebacks at exit). atexit runs hooks last-in first-out:
    moving our one hook to the end after each env's first render makes it run before all of them.
    """
    _RENDERING_ENVS.add(env)
    atexit.unregister(_close_rendering_envs)
    atexit.register(_close_rendering_envs)


def forget_at_exit(env: Any) -> None:
    """The env was closed: nothing to do for it at exit."""
    _RENDERING_ENVS.discard(env)
