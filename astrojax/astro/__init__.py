"""Biophysical astrocytes: Li--Rinzel calcium dynamics as in NEST's ``astrocyte_lr_1994``.

Self-contained (it does not use the neuron--astrocyte attention network); see
:mod:`astrojax.astro.li_rinzel` for the equations, parameters and references.
"""

from .li_rinzel import (
    NEST_DEFAULTS,
    NEST_INITIAL_STATE,
    PARAM_NAMES,
    LiRinzelParams,
    LiRinzelSolution,
    LiRinzelState,
    RateInput,
    SpikeInput,
    ip3_trace,
    li_rinzel_vector_field,
    sic_current,
    simulate_li_rinzel,
)

__all__ = [
    "LiRinzelParams",
    "LiRinzelState",
    "LiRinzelSolution",
    "SpikeInput",
    "RateInput",
    "simulate_li_rinzel",
    "li_rinzel_vector_field",
    "sic_current",
    "ip3_trace",
    "PARAM_NAMES",
    "NEST_DEFAULTS",
    "NEST_INITIAL_STATE",
]
