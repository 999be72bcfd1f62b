"""Fitting the neuron--astrocyte model's biophysical parameters to recorded traces.

- :func:`load_recording` / :func:`save_recording`: the recording format (``.npz`` with
  documented keys, or a single-trace ``.csv``); see :mod:`astrojax.fit.recording`.
- :func:`fit_recording`: Levenberg--Marquardt / Gauss--Newton (optimistix) or Adam
  (optax) through a diffrax simulation, several restarts as one vmapped batch, standard
  errors from the Gauss--Newton (Fisher) approximation; see :mod:`astrojax.fit.fit`
  (split by concern into ``transforms``, ``problem``, ``solvers``, ``stats``, ``results``).
- :func:`synthesize`: synthetic recordings from known parameters with chosen noise.
- :func:`simulate_traces`: the trace simulator (state variables at arbitrary times).

Command line: ``astrojax record`` (synthetic recording) and ``astrojax fit``.
"""

from .fit import (
    DEFAULT_FREE,
    DEFAULT_INIT,
    FIT_METHODS,
    FitError,
    FitProblem,
    FitResult,
    FitWarning,
    build_problem,
    fit_recording,
    parameter_names,
    residual_jacobian,
    residual_vector,
)
from .model import Episode, ODESettings, default_readout, make_episode, simulate_traces
from .recording import (
    FEATURE_MAPS,
    OBSERVABLES,
    RECORDING_KEYS,
    Recording,
    RecordingError,
    load_recording,
    save_recording,
    save_trace_csv,
)
from .synth import SYNTHETIC_TRUTH, model_traces, synthesize

__all__ = [
    "load_recording",
    "save_recording",
    "save_trace_csv",
    "Recording",
    "RecordingError",
    "OBSERVABLES",
    "FEATURE_MAPS",
    "RECORDING_KEYS",
    "fit_recording",
    "FitResult",
    "FitError",
    "FitWarning",
    "FitProblem",
    "build_problem",
    "residual_vector",
    "residual_jacobian",
    "parameter_names",
    "DEFAULT_FREE",
    "DEFAULT_INIT",
    "FIT_METHODS",
    "synthesize",
    "SYNTHETIC_TRUTH",
    "model_traces",
    "simulate_traces",
    "make_episode",
    "default_readout",
    "ODESettings",
    "Episode",
]
