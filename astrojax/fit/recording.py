r"""Recordings: the stimulus of one episode and observed traces of the network's state.

A recording is an ``.npz`` archive (read with ``np.load(..., allow_pickle=False)``)
with these keys (``T`` tokens, ``N`` samples, ``m`` hidden neurons):

================  ==================  ========  ==================================================
key               shape               required  meaning
================  ==================  ========  ==================================================
``t``             ``(N,)``            yes       sample times, strictly increasing, in any unit
``window``        ``()``              yes       length of one presentation window in units of ``t``
``protocol``      ``()`` string       yes       ``"bidirectional"`` or ``"causal"``
``q``, ``k``      ``(T, D)``          yes [1]   queries and keys of each token (before ``D**-1/4``)
``v``             ``(T, Dv)``         yes [1]   values of each token
``tokens``        ``(T,)`` int        [1]       token ids, instead of ``q, k, v`` ...
``teacher``       ``()`` string       [1]       ... run through this teacher (``"minilm"`` or a
                                                path, see :func:`astrojax.teachers.load_teacher`)
``layer``         ``()`` int          [1]       ... taking ``q, k, v`` of this layer ...
``head``          ``()`` int          [1]       ... and this head
``write_delay``   ``()``              no        fraction of a write window before plasticity
                                                opens (default 0.2, see :class:`~astrojax.Protocol`)
``t_start``       ``()``              no        time of the first window's onset (default 0)
``feature_map``   ``()`` string       no        the hidden neurons' feature map: ``"performer"``
                                                (default; also when the key is absent) or
                                                ``"learned_exp"`` (see below)
``W``             ``(m, D)``          no        hidden-neuron input weights; the initial value
                                                when ``W`` is fitted
``b``             ``(m,)``            no        hidden-neuron biases (``learned_exp`` only;
                                                default 0); the initial value when ``b`` is fitted
``a``             ``(N,)``            [2]       astrocyte response
``p``             ``(N,)``/``(N, m)`` [2]       process calcium, summed over processes / per process
``h``             ``(N,)``/``(N, m)`` [2]       hidden-neuron rates, mean / per neuron
``y``             ``(N, Dv)``         [2]       output-neuron rates (``(N,)`` if ``Dv = 1``)
``readout_<x>``   ``(c, dim)``        no        fixed linear read-out of state variable ``x``
                                                (``dim`` = 1, m, m, Dv for a, p, h, y): the
                                                observed ``x`` is then ``(N, c)``
``truth_<name>``  like the parameter  no        true parameter values (synthetic recordings):
                                                reported next to the fit, never used by it
``noise_<x>``     ``(c,)``            no        noise std the generator added (reported only)
================  ==================  ========  ==================================================

[1] either ``q, k, v`` or ``tokens, teacher, layer, head``.
[2] at least one of ``a, p, h, y``; NaN marks a missing sample.

The feature map sets the hidden neurons' drive by a query or key ``x`` (scaled by
``D**-1/4``): ``performer`` is ``phi(x) = exp(W x - |x|^2/2) / sqrt(m)`` (the paper's
random features), ``learned_exp`` is :class:`~astrojax.LearnedExpFeatures`
``phi(x) = exp(W x + b - |x|^2/2) / sqrt(m)`` (a trained network's map; ``b = 0`` gives
the performer map).

Time runs in windows inside the model: sample ``t`` is at ``(t - t_start) / window``
windows after the onset of the first window; the episode lasts ``2 T`` windows.

A single trace can also be given as CSV with the header ``t,<x>`` (``x`` one of ``a``,
``p`` (summed), ``h`` (mean), ``y`` (if ``Dv = 1``), or ``p_<i>``, ``h_<i>``, ``y_<i>`` for
process / hidden neuron / output neuron ``i``), one sample per line, empty or ``nan`` for
a missing sample; its stimulus then comes from an ``.npz`` with the keys above (its own
``t`` and traces are ignored): ``load_recording("trace.csv", stimulus="stim.npz")``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import re

import numpy as np
from jaxtyping import Float

from ..protocol import PROTOCOLS

__all__ = [
    "Recording",
    "RecordingError",
    "load_recording",
    "save_recording",
    "save_trace_csv",
    "OBSERVABLES",
    "FEATURE_MAPS",
    "RECORDING_KEYS",
]

#: State variables that can be observed, in the order they are reported.
OBSERVABLES = ("a", "p", "h", "y")
#: Feature maps a recording (and a fit) can name: ``W`` alone, or ``W`` and biases ``b``.
FEATURE_MAPS = ("performer", "learned_exp")
_STIMULUS_QKV = ("q", "k", "v")
_STIMULUS_TEACHER = ("tokens", "teacher", "layer", "head")
#: Every fixed key a recording may hold (besides ``readout_<x>``, ``truth_<name>``, ``noise_<x>``).
RECORDING_KEYS = ("t", "window", "protocol", *_STIMULUS_QKV, *_STIMULUS_TEACHER, "write_delay", "t_start",
                  "feature_map", "W", "b", *OBSERVABLES)
_PATTERN_KEYS = re.compile(r"^(readout|noise)_(a|p|h|y)$|^truth_(\w+)$")


class RecordingError(ValueError):
    """A recording (or stimulus) file is missing a key or holds a bad array; the message
    names the file and the key."""


@dataclasses.dataclass(frozen=True)
class Recording:
    """One recorded episode: stimulus, sample times and observed traces (numpy, float64).

    Build one with :func:`load_recording`, :func:`astrojax.fit.synthesize` or directly
    (then call :meth:`validate`). ``observed[x]`` is ``(N,)`` or ``(N, c)`` with NaN for
    missing samples; ``readout[x]`` an optional ``(c, dim)`` matrix (see the module
    docstring); ``W`` the hidden-neuron input weights or None (then the fit draws them);
    ``feature_map`` ``"performer"`` or ``"learned_exp"`` with biases ``b`` (None: 0).
    """

    t: Float[np.ndarray, " N"]
    window: float
    protocol: str
    q: Float[np.ndarray, "T D"]
    k: Float[np.ndarray, "T D"]
    v: Float[np.ndarray, "T Dv"]
    observed: dict
    write_delay: float = 0.2
    t_start: float = 0.0
    W: Float[np.ndarray, "m D"] | None = None
    readout: dict = dataclasses.field(default_factory=dict)
    truth: dict = dataclasses.field(default_factory=dict)
    noise: dict = dataclasses.field(default_factory=dict)
    source: str = "<memory>"
    feature_map: str = "performer"
    b: Float[np.ndarray, " m"] | None = None

    # ------------------------------------------------------------------ sizes
    @property
    def T(self) -> int:
        return self.q.shape[0]

    @property
    def D(self) -> int:
        return self.q.shape[1]

    @property
    def Dv(self) -> int:
        return self.v.shape[1]

    @property
    def num_windows(self) -> int:
        return 2 * self.T

    @property
    def m(self) -> int | None:
        """Number of hidden neurons if the recording determines it (``W`` or a
        biases, or a per-neuron trace), else None."""
        if self.W is not None:
            return self.W.shape[0]
        if self.b is not None:
            return self.b.shape[0]
        for x in ("p", "h"):
            if x in self.observed and x not in self.readout and self.observed[x].ndim == 2:
                return self.observed[x].shape[1]
            if x in self.readout:
                return self.readout[x].shape[1]
        return None

    @property
    def model_times(self) -> np.ndarray:
        """Sample times in windows since the first window's onset."""
        return (self.t - self.t_start) / self.window

    def channels(self, x: str) -> np.ndarray:
        """Observed variable ``x`` as a ``(N, c)`` array."""
        z = self.observed[x]
        return z[:, None] if z.ndim == 1 else z

    def validate(self, m: int | None = None) -> "Recording":
        """Check shapes and values; raise :class:`RecordingError` naming the key.
        ``m``: the number of hidden neurons the model will have (checked against
        ``W`` and per-neuron traces). Returns ``self``."""
        _validate(self, m)
        return self

    def replace(self, **kw) -> "Recording":
        return dataclasses.replace(self, **kw)


# --------------------------------------------------------------------------- checks


def _err(src, key, msg):
    return RecordingError(f"recording {src}: key `{key}`: {msg}")


def _real_array(src, key, x, ndim=None, allow_nan=False):
    x = np.asarray(x)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)) \
            or x.dtype == bool:
        raise _err(src, key, f"expected real numbers, got dtype {x.dtype}")
    x = x.astype(np.float64)
    if ndim is not None and x.ndim not in np.atleast_1d(ndim):
        want = " or ".join(str(d) for d in np.atleast_1d(ndim))
        raise _err(src, key, f"expected an array of rank {want}, got shape {x.shape}")
    if allow_nan:
        if np.any(np.isinf(x)):
            raise _err(src, key, "contains inf (use NaN for a missing sample)")
    elif not np.all(np.isfinite(x)):
        raise _err(src, key, "contains NaN or inf")
    return x


def _scalar(src, key, x, *, positive=False, nonneg=False):
    a = np.asarray(x)
    if a.shape != () or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)) \
            or a.dtype == bool:
        raise _err(src, key, f"expected a real scalar, got {_describe(a)}")
    val = float(a)
    if not np.isfinite(val):
        raise _err(src, key, f"expected a finite number, got {val}")
    if positive and val <= 0:
        raise _err(src, key, f"expected a positive number, got {val}")
    if nonneg and val < 0:
        raise _err(src, key, f"expected a non-negative number, got {val}")
    return val


def _string(src, key, x):
    a = np.asarray(x)
    if a.shape != () or a.dtype.kind not in "US":
        raise _err(src, key, f"expected a string, got {_describe(a)}")
    s = str(a)
    return s


def _int(src, key, x, minimum=0):
    a = np.asarray(x)
    if a.shape != () or not np.issubdtype(a.dtype, np.integer):
        raise _err(src, key, f"expected an integer, got {_describe(a)}")
    if int(a) < minimum:
        raise _err(src, key, f"expected an integer >= {minimum}, got {int(a)}")
    return int(a)


def _describe(a):
    return f"an array of shape {a.shape} and dtype {a.dtype}" if a.shape else f"{a.item()!r} ({a.dtype})"


def _state_dim(x, m, Dv):
    return {"a": 1, "p": m, "h": m, "y": Dv}[x]


def _validate(rec: Recording, m: int | None) -> None:
    src = rec.source
    t = rec.t
    if t.ndim != 1 or t.size == 0:
        raise _err(src, "t", f"expected a non-empty vector of sample times, got shape {t.shape}")
    if not np.all(np.isfinite(t)):
        raise _err(src, "t", "contains NaN or inf (mark missing samples in the traces instead)")
    if t.size > 1 and not np.all(np.diff(t) > 0):
        i = int(np.argmin(np.diff(t) > 0))
        raise _err(src, "t", f"sample times must be strictly increasing (t[{i}] = {t[i]} >= t[{i + 1}] = {t[i + 1]})")
    if not (np.isfinite(rec.window) and rec.window > 0):
        raise _err(src, "window", f"expected a positive number, got {rec.window}")
    if rec.protocol not in PROTOCOLS:
        raise _err(src, "protocol", f"expected one of {list(PROTOCOLS)}, got {rec.protocol!r}")
    if not (0.0 <= rec.write_delay < 1.0):
        raise _err(src, "write_delay", f"expected a number in [0, 1), got {rec.write_delay}")
    q, k, v = rec.q, rec.k, rec.v
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 2 or 0 in x.shape:
            raise _err(src, name, f"expected a non-empty (T, D) matrix, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise _err(src, name, "contains NaN or inf")
    if q.shape != k.shape:
        raise _err(src, "k", f"expected the shape of `q` {q.shape}, got {k.shape}")
    if v.shape[0] != q.shape[0]:
        raise _err(src, "v", f"expected T = {q.shape[0]} rows like `q`, got shape {v.shape}")
    T, D, Dv = q.shape[0], q.shape[1], v.shape[1]
    # sample times inside the episode
    tau = rec.model_times
    J = 2 * T
    if tau.min() < -1e-9 or tau.max() > J + 1e-9:
        raise _err(
            src, "t",
            f"sample times must lie within the episode [t_start, t_start + 2 T window] = "
            f"[{rec.t_start}, {rec.t_start + J * rec.window}] ({J} windows of {rec.window}); "
            f"got [{t.min()}, {t.max()}]",
        )
    if rec.feature_map not in FEATURE_MAPS:
        raise _err(src, "feature_map", f"expected one of {list(FEATURE_MAPS)}, got {rec.feature_map!r}")
    if rec.b is not None:
        if rec.feature_map != "learned_exp":
            raise _err(src, "b", f"biases belong to feature_map 'learned_exp', but the recording's feature map is "
                       f"{rec.feature_map!r} (add feature_map='learned_exp' or drop `b`)")
        if rec.b.ndim != 1 or rec.b.shape[0] == 0:
            raise _err(src, "b", f"expected a vector (m,), got shape {rec.b.shape}")
        if not np.all(np.isfinite(rec.b)):
            raise _err(src, "b", "contains NaN or inf")
        if rec.W is not None and rec.W.ndim == 2 and rec.b.shape[0] != rec.W.shape[0]:
            raise _err(src, "b", f"expected shape (m={rec.W.shape[0]},) like the rows of `W`, got {rec.b.shape}")
    m_rec = rec.m
    if m is not None and m_rec is not None and m != m_rec:
        key = "W" if rec.W is not None else ("b" if rec.b is not None else "p")
        raise _err(src, key, f"the recording implies m = {m_rec} hidden neurons, but m = {m} was requested")
    m = m if m is not None else m_rec
    if rec.W is not None:
        if rec.W.ndim != 2 or rec.W.shape[1] != D or rec.W.shape[0] == 0:
            raise _err(src, "W", f"expected shape (m, D={D}), got {rec.W.shape}")
        if not np.all(np.isfinite(rec.W)):
            raise _err(src, "W", "contains NaN or inf")
    if not rec.observed:
        raise RecordingError(
            f"recording {src}: no observed traces; expected at least one of {list(OBSERVABLES)} "
            "(arrays named after state variables)"
        )
    for x, z in rec.observed.items():
        if x not in OBSERVABLES:
            raise _err(src, x, f"unknown state variable; expected one of {list(OBSERVABLES)}")
        if z.ndim not in (1, 2) or z.shape[0] != t.shape[0]:
            raise _err(src, x, f"expected {t.shape[0]} samples like `t` (shape (N,) or (N, c)), got shape {z.shape}")
        if np.any(np.isinf(z)):
            raise _err(src, x, "contains inf (use NaN for a missing sample)")
        if not np.any(np.isfinite(z)):
            raise _err(src, x, "every sample is NaN (nothing to fit)")
        width = 1 if z.ndim == 1 else z.shape[1]
        if x in rec.readout:
            C = rec.readout[x]
            if C.ndim != 2 or C.shape[0] != width:
                raise _err(src, f"readout_{x}", f"expected shape ({width}, dim) to match the {width} channel(s) of "
                           f"`{x}`, got {C.shape}")
            if not np.all(np.isfinite(C)):
                raise _err(src, f"readout_{x}", "contains NaN or inf")
            dim = {"a": 1, "y": Dv}.get(x, m)
            if dim is not None and C.shape[1] != dim:
                raise _err(src, f"readout_{x}", f"expected {dim} columns (the dimension of `{x}`), got {C.shape}")
            continue
        if x == "a" and z.ndim != 1 and width != 1:
            raise _err(src, x, f"the astrocyte response is a scalar trace: expected shape (N,), got {z.shape}")
        if x == "y":
            if z.ndim == 1 and Dv != 1:
                raise _err(src, x, f"expected shape (N, Dv={Dv}) (one column per output neuron), got {z.shape}")
            if z.ndim == 2 and width != Dv:
                raise _err(src, x, f"expected shape (N, Dv={Dv}) (one column per output neuron), got {z.shape}")
        if x in ("p", "h") and z.ndim == 2 and m is not None and width != m:
            raise _err(src, x, f"expected shape (N,) ({'summed' if x == 'p' else 'mean'}) or (N, m={m}) "
                       f"(per {'process' if x == 'p' else 'neuron'}), got {z.shape}")
    for x in rec.readout:
        if x not in rec.observed:
            raise _err(src, f"readout_{x}", f"a read-out for `{x}`, but the recording has no `{x}` trace")


# --------------------------------------------------------------------------- loading


def load_recording(path, stimulus=None, *, m: int | None = None) -> Recording:
    """Read a recording from ``.npz`` (or a single-trace ``.csv`` with ``stimulus``).

    Args:
        path: ``.npz`` with the keys of the module docstring, or ``.csv`` with header
            ``t,<x>``.
        stimulus: ``.npz`` holding the stimulus keys; required for a CSV, and for an
            ``.npz`` it replaces the file's own stimulus keys.
        m: number of hidden neurons the fit will use (checked against the file).

    Raises:
        RecordingError: naming the file and the offending key.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise RecordingError(f"recording file not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".csv":
        if stimulus is None:
            raise RecordingError(
                f"recording {path}: a CSV holds only a trace; give the stimulus too "
                "(stimulus=<.npz with t-independent keys window, protocol, q, k, v>)"
            )
        t, name, values = _read_csv(path)
        stim = _read_npz(stimulus, "stimulus")
        rec = _from_arrays(stim, os.fspath(stimulus), observed_from=None)
        obs, readout = _csv_observation(path, name, values, rec)
        rec = rec.replace(t=t, observed=obs, readout=readout, noise={}, source=path)
        return rec.validate(m)
    if ext != ".npz":
        raise RecordingError(f"recording {path}: expected an .npz archive or a .csv trace, got extension {ext!r}")
    z = _read_npz(path)
    if stimulus is not None:
        stim = _read_npz(stimulus, "stimulus")
        for key in (*_STIMULUS_QKV, *_STIMULUS_TEACHER, "window", "protocol", "write_delay", "t_start",
                    "feature_map", "W", "b"):
            z.pop(key, None)
            if key in stim:
                z[key] = stim[key]
    return _from_arrays(z, path, observed_from=path).validate(m)


def _read_npz(path, what="recording") -> dict:
    from .._io import read_npz

    return read_npz(path, RecordingError, what)


def _from_arrays(z: dict, src: str, observed_from) -> Recording:
    unknown = [key for key in z if key not in RECORDING_KEYS and not _PATTERN_KEYS.match(key)]
    if unknown:
        raise _err(src, unknown[0], f"unknown key; expected keys {list(RECORDING_KEYS)} or readout_<x>, "
                   "noise_<x>, truth_<parameter>")
    required = ["window", "protocol"] + (["t"] if observed_from is not None else [])
    for key in required:
        if key not in z:
            what = {"t": "sample times", "window": "length of one presentation window in units of `t`",
                    "protocol": "'bidirectional' or 'causal'"}[key]
            raise _err(src, key, f"missing ({what})")
    has_qkv = [key for key in _STIMULUS_QKV if key in z]
    has_tok = [key for key in _STIMULUS_TEACHER if key in z]
    if has_qkv and has_tok:
        raise _err(src, has_tok[0], "give the stimulus either as q, k, v or as tokens with a teacher, not both")
    if has_tok:
        missing = [key for key in _STIMULUS_TEACHER if key not in z]
        if missing:
            raise _err(src, missing[0], "missing (token ids need `tokens`, `teacher`, `layer` and `head`)")
        q, k, v = _teacher_qkv(z, src)
    else:
        missing = [key for key in _STIMULUS_QKV if key not in z]
        if missing:
            raise _err(src, missing[0], "missing (the stimulus needs q (T, D), k (T, D), v (T, Dv), "
                       "or tokens with teacher, layer and head)")
        q, k, v = (_real_array(src, key, z[key], 2) for key in _STIMULUS_QKV)
    window = _scalar(src, "window", z["window"], positive=True)
    protocol = _string(src, "protocol", z["protocol"])
    write_delay = _scalar(src, "write_delay", z["write_delay"], nonneg=True) if "write_delay" in z else 0.2
    t_start = _scalar(src, "t_start", z["t_start"]) if "t_start" in z else 0.0
    W = _real_array(src, "W", z["W"], 2) if "W" in z else None
    feature_map = _string(src, "feature_map", z["feature_map"]) if "feature_map" in z else "performer"
    b = _real_array(src, "b", z["b"], 1) if "b" in z else None
    observed, readout, truth, noise = {}, {}, {}, {}
    if observed_from is not None:
        t = _real_array(src, "t", z["t"], 1)
        for x in OBSERVABLES:
            if x in z:
                observed[x] = _real_array(src, x, z[x], (1, 2), allow_nan=True)
            if f"readout_{x}" in z:
                readout[x] = _real_array(src, f"readout_{x}", z[f"readout_{x}"], 2)
            if f"noise_{x}" in z:
                noise[x] = np.atleast_1d(_real_array(src, f"noise_{x}", z[f"noise_{x}"], (0, 1)))
        for key in z:
            mt = _PATTERN_KEYS.match(key)
            if mt and mt.group(3):
                truth[mt.group(3)] = _real_array(src, key, z[key], (0, 2))
                if truth[mt.group(3)].ndim == 0:
                    truth[mt.group(3)] = float(truth[mt.group(3)])
    else:
        t = np.zeros(0)
    return Recording(t=t, window=window, protocol=protocol, q=q, k=k, v=v, observed=observed,
                     write_delay=write_delay, t_start=t_start, W=W, readout=readout, truth=truth, noise=noise,
                     source=src, feature_map=feature_map, b=b)


def _teacher_qkv(z, src):
    tokens = np.asarray(z["tokens"])
    if tokens.ndim != 1 or tokens.size == 0 or not np.issubdtype(tokens.dtype, np.integer):
        raise _err(src, "tokens", f"expected a non-empty vector of integer token ids, got {_describe(tokens)}")
    spec = _string(src, "teacher", z["teacher"])
    layer = _int(src, "layer", z["layer"])
    head = _int(src, "head", z["head"])
    from ..teachers import TeacherError, load_teacher

    try:
        teacher = load_teacher(spec)
    except (TeacherError, OSError, ValueError) as e:
        raise _err(src, "teacher", f"cannot load teacher {spec!r}: {e}") from e
    if teacher.kind != "text":
        raise _err(src, "teacher", f"teacher {spec!r} takes images, not token ids; use a text teacher (e.g. 'minilm')")
    model = teacher.model
    if layer >= model.num_layers:
        raise _err(src, "layer", f"teacher {teacher.name} has {model.num_layers} layers, got layer {layer}")
    if head >= model.num_heads:
        raise _err(src, "head", f"teacher {teacher.name} has {model.num_heads} heads, got head {head}")
    vocab = teacher.tokenizer.vocab_size if teacher.tokenizer is not None else None
    if tokens.min() < 0 or (vocab is not None and tokens.max() >= vocab):
        raise _err(src, "tokens", f"token ids must be in [0, {vocab}), got range [{tokens.min()}, {tokens.max()}]")
    out = model.run(np.asarray(tokens, np.int32))
    return tuple(np.asarray(getattr(out, n)[layer, head], np.float64) for n in ("q", "k", "v"))


def _read_csv(path):
    from .._io import read_text

    text = read_text(path, RecordingError, "recording")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    rows = [r for r in rows if r and any(cell.strip() for cell in r)]
    if not rows:
        raise RecordingError(f"recording {path}: empty CSV; expected a header `t,<x>` and one sample per line")
    header = [h.strip() for h in rows[0]]
    if len(header) != 2 or header[0] != "t":
        raise RecordingError(
            f"recording {path}: a CSV holds a single trace: expected the header `t,<x>` with x one of "
            f"{list(OBSERVABLES)} or p_<i>, h_<i>, y_<i>; got {','.join(header)!r}"
        )
    t, vals = [], []
    for i, r in enumerate(rows[1:], start=2):
        if len(r) != 2:
            raise RecordingError(f"recording {path}: line {i}: expected 2 columns (t, {header[1]}), got {len(r)}")
        try:
            t.append(float(r[0]))
            vals.append(float(r[1]) if r[1].strip() else np.nan)
        except ValueError as e:
            raise RecordingError(f"recording {path}: line {i}: not a number ({e})") from e
    if not t:
        raise RecordingError(f"recording {path}: the CSV has a header but no samples")
    return np.asarray(t), header[1], np.asarray(vals)


def _csv_observation(path, name, values, rec):
    mt = re.fullmatch(r"(a|p|h|y)(?:_(\d+))?", name)
    if not mt:
        raise _err(path, name, f"unknown trace; expected one of {list(OBSERVABLES)} or p_<i>, h_<i>, y_<i>")
    x, idx = mt.group(1), mt.group(2)
    if idx is None:
        return {x: values}, {}
    if x == "a":
        raise _err(path, name, "the astrocyte response is a scalar: use the column name `a`")
    i = int(idx)
    dim = rec.Dv if x == "y" else rec.m
    if dim is None:
        raise _err(path, name, f"the stimulus has no `W`, so the number of hidden neurons (needed for `{name}`) "
                   "is unknown; add W (m, D) to the stimulus file")
    if i >= dim:
        raise _err(path, name, f"index {i} out of range: `{x}` has {dim} components")
    C = np.zeros((1, dim))
    C[0, i] = 1.0
    return {x: values}, {x: C}


# --------------------------------------------------------------------------- saving


def save_recording(path, rec: Recording) -> str:
    """Write ``rec`` as an ``.npz`` recording (atomically); returns the path."""
    from .._io import save_npz

    arrays = dict(t=rec.t, window=np.float64(rec.window), protocol=np.str_(rec.protocol), q=rec.q, k=rec.k, v=rec.v,
                  write_delay=np.float64(rec.write_delay), t_start=np.float64(rec.t_start))
    arrays["feature_map"] = np.str_(rec.feature_map)  # (absent in older files: performer)
    if rec.W is not None:
        arrays["W"] = rec.W
    if rec.b is not None:
        arrays["b"] = rec.b
    for x, z in rec.observed.items():
        arrays[x] = z
    for x, C in rec.readout.items():
        arrays[f"readout_{x}"] = C
    for x, s in rec.noise.items():
        arrays[f"noise_{x}"] = np.asarray(s)
    for name, val in rec.truth.items():
        arrays[f"truth_{name}"] = np.asarray(val)
    return save_npz(path, **arrays)


def save_trace_csv(path, t, name: str, values) -> str:
    """Write one trace as CSV with header ``t,<name>`` (NaN written as an empty cell)."""
    from .._io import atomic_open

    t, values = np.asarray(t, np.float64), np.asarray(values, np.float64)
    if t.shape != values.shape or t.ndim != 1:
        raise ValueError(f"`t` and `values` must be vectors of the same length, got {t.shape} and {values.shape}")
    with atomic_open(path, "w") as f:
        f.write(f"t,{name}\n")
        for ti, vi in zip(t, values):
            f.write(f"{float(ti)!r},{'' if np.isnan(vi) else repr(float(vi))}\n")
    return os.fspath(path)
