"""Input checks at the public boundary: clear errors that name the bad argument."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
    """True when ``x`` holds values (not a tracer under jit/vmap/grad)."""
    return not isinstance(x, jax.core.Tracer)


def as_array(name: str, x, ndim: int | None = None) -> jax.Array:
    if x is None:
        raise TypeError(f"`{name}` must be an array, got None")
    try:
        arr = jnp.asarray(x)
    except TypeError as e:  # strings, objects, ...
        raise TypeError(f"`{name}` must be an array of numbers, got {type(x).__name__}") from e
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        if jnp.issubdtype(arr.dtype, jnp.integer) or arr.dtype == jnp.bool_:
            arr = arr.astype(jnp.result_type(float))
        else:
            raise TypeError(f"`{name}` must be a real floating array, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"`{name}` must have rank {ndim}, got shape {tuple(arr.shape)}")
    return arr


def check_finite(name: str, x) -> None:
    """Raise for NaN/inf when values are known; a no-op under tracing."""
    if is_concrete(x) and not bool(np.all(np.isfinite(np.asarray(x)))):
        raise ValueError(f"`{name}` contains NaN or inf values")


def _real(name, x):
    try:
        return np.asarray(x, dtype=float)
    except (TypeError, ValueError) as e:
        raise TypeError(f"`{name}` must be a real number or array, got {x!r}") from e


def check_positive(name: str, x) -> None:
    if is_concrete(x):
        arr = _real(name, x)
        if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise ValueError(f"`{name}` must be positive and finite, got {arr.tolist()}")


def check_nonnegative(name: str, x) -> None:
    if is_concrete(x):
        arr = _real(name, x)
        if not np.all(np.isfinite(arr)) or np.any(arr < 0):
            raise ValueError(f"`{name}` must be non-negative and finite, got {arr.tolist()}")


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {sorted(choices)}, got {value!r}")


def check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}")
    return int(value)


def check_qkv(q, k, v, *, D_from_q: bool = True):
    """Validate one head's (T, D) projections; returns arrays."""
    q = as_array("q", q, 2)
    k = as_array("k", k, 2)
    v = as_array("v", v, 2)
    if q.shape != k.shape:
        raise ValueError(f"`q` and `k` must have the same shape (T, D), got {q.shape} and {k.shape}")
    if v.shape[0] != k.shape[0]:
        raise ValueError(
            f"`v` must have the same number of tokens as `k`: got v {v.shape} and k {k.shape}"
        )
    if q.shape[0] == 0 or q.shape[1] == 0:
        raise ValueError(f"`q` must have T >= 1 tokens and D >= 1 features, got shape {q.shape}")
    for n, x in (("q", q), ("k", k), ("v", v)):
        check_finite(n, x)
    return q, k, v


def fourth_root_scale(D: int) -> float:
    """The D**-1/4 query/key scaling of docs/model.md ("Notation")."""
    return 1.0 / math.sqrt(math.sqrt(D))
