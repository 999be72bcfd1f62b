"""Biophysical astrocytes: Li--Rinzel calcium dynamics as in NEST's ``astrocyte_lr_1994``.

- :mod:`astrojax.astro.li_rinzel`: the model (equations, parameters, references) and its
  Diffrax simulation;
- :mod:`astrojax.astro.oscillations`: steady state, Hopf points and oscillation features
  at constant IP3;
- :mod:`astrojax.astro.fluorescence`: a GCaMP-like observation model (calcium -> dF/F);
- :mod:`astrojax.astro.fit_imaging`: synthetic imaging recordings and the gradient-based
  least-squares fit of Li--Rinzel parameters to dF/F, with standard errors and an
  identifiability check;
- :mod:`astrojax.astro.network`: an attention head whose astrocyte processes are
  Li--Rinzel compartments (IP3 produced by hidden-neuron activity, calcium-dependent
  gliotransmitter shunting the outputs);
- :mod:`astrojax.astro.app` and :mod:`astrojax.astro.simulate`: the ``astrocyte=li_rinzel``
  jobs of ``astrojax record``, ``fit`` and ``simulate``.
"""
from .fluorescence import FluorescenceTrace, IndicatorParams, bound_fraction, observe_fluorescence
from .fit_imaging import (
    IDENTIFIABLE,
    ImagingFit,
    ImagingRecording,
    NonIdentifiabilityWarning,
    fit_imaging,
    load_recording,
    save_recording,
    synthesize_imaging,
)

from .network import LiRinzelHead, LiRinzelHeadParams, LiRinzelHeadSolution, LiRinzelMethod, solve_li_rinzel_head
from .oscillations import hopf_points, oscillation_features, steady_state, steady_state_eigenvalues
from .li_rinzel import (
    NEST_DEFAULTS,
    NEST_INITIAL_STATE,
    PARAM_NAMES,
    RESULTS,
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
    "RESULTS",
    "SpikeInput",
    "RateInput",
    "simulate_li_rinzel",
    "li_rinzel_vector_field",
    "sic_current",
    "ip3_trace",
    "PARAM_NAMES",
    "NEST_DEFAULTS",
    "NEST_INITIAL_STATE",
    "steady_state",
    "steady_state_eigenvalues",
    "hopf_points",
    "oscillation_features",
    "IndicatorParams",
    "FluorescenceTrace",
    "bound_fraction",
    "observe_fluorescence",
    "ImagingRecording",
    "ImagingFit",
    "NonIdentifiabilityWarning",
    "synthesize_imaging",
    "save_recording",
    "load_recording",
    "fit_imaging",
    "IDENTIFIABLE",
    "LiRinzelHead",
    "LiRinzelHeadParams",
    "LiRinzelHeadSolution",
    "LiRinzelMethod",
    "solve_li_rinzel_head",
]
