r"""Parameter transforms of the fit: constrained values ``theta`` from unconstrained ``z``.

The optimiser works on unconstrained numbers; each free parameter has one transform:

==============  ==================================  ====================================
kind            ``theta(z)``                        used for
==============  ==================================  ====================================
``log``         ``exp(z)``                          time constants, gains, ``scale_<x>``
``softplus``    ``log(1 + exp(z))``                 leaks (non-negative)
``logit``       ``lo + (hi - lo) sigmoid(z)``       a two-sided bound ``(lo, hi)``
``lower``       ``lo + exp(z)``                     a lower bound only
``upper``       ``hi - exp(z)``                     an upper bound only
``identity``    ``z``                               ``W``, ``offset_<x>``
==============  ==================================  ====================================
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from ..dynamics import GAINS, LEAKS, TIME_CONSTANTS

__all__ = ["Free", "domain", "choose_transform", "TRANSFORM_KINDS"]

TRANSFORM_KINDS = ("log", "softplus", "logit", "lower", "upper", "identity")
_LEAK_FLOOR = 1e-6  # inverse softplus of a leak of exactly 0 starts here


def domain(name: str) -> str:
    """``"positive"`` (time constants, gains, scales), ``"nonneg"`` (leaks) or ``"real"``."""
    if name in TIME_CONSTANTS + GAINS or name.startswith("scale_"):
        return "positive"
    if name in LEAKS:
        return "nonneg"
    return "real"  # W, offset_x


def choose_transform(name: str, bound) -> tuple[str, float, float]:
    """``(kind, lo, hi)`` for parameter ``name`` with ``bound`` ``None`` or ``(lo, hi)``
    (either side ``None`` for open). The caller has checked the bound against the
    parameter's domain; a lower bound of a positive parameter below 0 is clipped to 0."""
    dom = domain(name)
    if bound is None:
        return {"positive": ("log", 0.0, math.inf), "nonneg": ("softplus", 0.0, math.inf),
                "real": ("identity", -math.inf, math.inf)}[dom]
    lo, hi = bound
    lo = -math.inf if lo is None else float(lo)
    hi = math.inf if hi is None else float(hi)
    if dom in ("positive", "nonneg"):
        lo = max(lo, 0.0)
    if math.isfinite(lo) and math.isfinite(hi):
        return "logit", lo, hi
    if math.isfinite(hi):
        return "upper", lo, hi
    if lo > 0 or (dom == "real" and math.isfinite(lo)):
        return "lower", lo, hi
    return choose_transform(name, None)


@dataclasses.dataclass(frozen=True)
class Free:
    """One free parameter: its slice ``[start, start + size)`` of the unconstrained
    vector, its shape and its transform (hashable: part of the fit's static structure)."""

    name: str
    shape: tuple
    kind: str  # one of TRANSFORM_KINDS
    lo: float
    hi: float
    start: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=int))

    @property
    def slice(self) -> slice:
        return slice(self.start, self.start + self.size)

    def constrain(self, z):
        """``theta(z)`` (jax; traced inside the residuals)."""
        lo, hi = self.lo, self.hi
        return {
            "log": lambda: jnp.exp(z),
            "softplus": lambda: jax.nn.softplus(z),
            "logit": lambda: lo + (hi - lo) * jax.nn.sigmoid(z),
            "lower": lambda: lo + jnp.exp(z),
            "upper": lambda: hi - jnp.exp(z),
            "identity": lambda: z,
        }[self.kind]()

    def unconstrain(self, theta) -> np.ndarray | np.floating:
        """``z(theta)`` (numpy, float64): the inverse of :meth:`constrain`."""
        lo, hi = self.lo, self.hi
        theta = np.asarray(theta, np.float64)
        if self.kind == "log":
            return np.log(theta)
        if self.kind == "softplus":
            x = np.maximum(theta, _LEAK_FLOOR)
            return x + np.log(-np.expm1(-x))  # inverse softplus, stable
        if self.kind == "logit":
            u = (theta - lo) / (hi - lo)
            return np.log(u) - np.log1p(-u)
        if self.kind == "lower":
            return np.log(theta - lo)
        if self.kind == "upper":
            return np.log(hi - theta)
        return theta

    def dtheta_dz(self, z) -> np.ndarray | np.floating:
        """``dtheta/dz`` (numpy); the delta method uses its absolute value."""
        lo, hi = self.lo, self.hi
        z = np.asarray(z, np.float64)
        if self.kind in ("log", "lower"):
            return np.exp(z)
        if self.kind == "upper":
            return -np.exp(z)
        if self.kind == "softplus":
            return 1.0 / (1.0 + np.exp(-z))
        if self.kind == "logit":
            s = 1.0 / (1.0 + np.exp(-z))
            return (hi - lo) * s * (1.0 - s)
        return np.ones_like(z)

    def label(self, i: int = 0) -> str:
        """Name of unconstrained coordinate ``i`` of this parameter (``log(tau_h)``, ``W[3]``)."""
        base = self.name if self.size == 1 else f"{self.name}[{i}]"
        return f"log({base})" if self.kind == "log" else base
