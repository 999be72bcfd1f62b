"""Test configuration: float64 available for reference tests (float32 tests cast explicitly)."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def rel_err(x, ref):
    """max |x - ref| / max |ref|."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(x - ref)) / np.max(np.abs(ref)))


@pytest.fixture
def small_head():
    """A small random head: q, k (T=6, D=4), v (T, Dv=3), W (m=16, D) in float64."""
    key = jax.random.PRNGKey(0)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    T, D, Dv, m = 6, 4, 3, 16
    return dict(
        q=jax.random.normal(k1, (T, D), jnp_f64()),
        k=jax.random.normal(k2, (T, D), jnp_f64()),
        v=jax.random.normal(k3, (T, Dv), jnp_f64()),
        W=jax.random.normal(k4, (m, D), jnp_f64()),
    )


def jnp_f64():
    import jax.numpy as jnp

    return jnp.float64
