"""Independent numpy/scipy reference for the one-head neuron-astrocyte ODE model.

Deliberately written straight from the equations (no closed forms, no JAX, no
code shared with the library solver) so tests can compare the library against it.

State (all zeros at t=0), time unit = one token window of length 1:
    tau_h dh/dt = f - h
    tau_H dH/dt = w eta_H outer(v, h) - lambda_H H
    tau_p dp/dt = w eta_p h            - lambda_p p
    tau_a da/dt = r g dot(p, h)        - a
    tau_y dy/dt = r g (H @ h)          - a y
"""
import numpy as np
from scipy.integrate import solve_ivp

PROTOCOLS = ("bidirectional", "causal")


def _windows(phi_k, phi_q, v, protocol, gain_control=False):
    """List of (kind, token, drive f, value v, read gain g, plasticity factor omega,
    memory rescale at the window start, log-scale of a) in episode order.

    Without gain control: raw drives, read gain 1/(tokens written), omega = 1.
    With gain control (docs/model.md, "Gain control"): each window's drive is
    sqrt(m) phi / sum(phi); a write's plasticity is scaled by exp(sigma - mu) with
    sigma = log sum(phi) of its key and mu the running maximum of sigma over the keys
    written so far (the memory H, p is multiplied by exp(mu_old - mu_new) when mu
    grows); the read gain is 1 / sum over written keys of exp(sigma - mu).
    The last entry is log(the factor that turns the state a into the limit
    phi(q).sum phi(k) units, apart from the read gain and write integral)."""
    T, m = phi_k.shape
    zero_v = np.zeros(v.shape[1])
    order = [("write", t) for t in range(T)] + [("read", t) for t in range(T)] if protocol == "bidirectional" \
        else [x for t in range(T) for x in (("write", t), ("read", t))]
    out = []
    mu, sig_written = None, []
    for kind, t in order:
        phi = phi_k[t] if kind == "write" else phi_q[t]
        if not gain_control:
            if kind == "write":
                sig_written.append(0.0)
                out.append((kind, t, phi, v[t], 0.0, 1.0, 1.0, 0.0))
            else:
                out.append((kind, t, phi, zero_v, 1.0 / len(sig_written), 1.0, 1.0, 0.0))
            continue
        tot = phi.sum()
        sigma = np.log(tot)
        f = np.sqrt(m) * phi / tot
        if kind == "write":
            new_mu = sigma if mu is None else max(mu, sigma)
            rescale = 1.0 if mu is None else np.exp(mu - new_mu)
            mu = new_mu
            sig_written.append(sigma)
            out.append((kind, t, f, v[t], 0.0, np.exp(sigma - mu), rescale, 0.0))
        else:
            neff = sum(np.exp(s_ - mu) for s_ in sig_written)
            out.append((kind, t, f, zero_v, 1.0 / neff, 1.0, 1.0, sigma + mu - np.log(m) + np.log(neff)))
    return out


def scipy_simulate(phi_k, phi_q, v, *, protocol, tau_h, tau_H, tau_p, tau_a, tau_y,
                   eta_H=1.0, eta_p=1.0, lambda_H=0.0, lambda_p=0.0, write_delay=0.0,
                   rtol=1e-10, atol=1e-12, method="LSODA", return_trace=False, gain_control=False):
    """Simulate the episode segment by segment with scipy.integrate.solve_ivp.

    Returns dict with 'y' (T, Dv) and 'a' (T,): y and a at the END of each READ
    window (token order), plus final states 'p_end' (m,), 'H_end' (Dv, m), 'h_end' (m,).
    If return_trace: also 't' (N,), 'a_t' (N,), 'y_t' (N, Dv), 'psum_t' (N,),
    'hmean_t' (N,) sampled at 20 points per window (from each segment's own dense output).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    d = float(write_delay)
    if not 0.0 <= d < 1.0:
        raise ValueError(f"write_delay must be in [0, 1), got {d}")
    phi_k = np.asarray(phi_k, dtype=np.float64)
    phi_q = np.asarray(phi_q, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    T, m = phi_k.shape
    Dv = v.shape[1]
    if phi_q.shape != (T, m) or v.shape[0] != T:
        raise ValueError("shape mismatch: phi_k (T,m), phi_q (T,m), v (T,Dv) required")

    # Flat state layout: [h (m) | H (Dv*m, row-major) | p (m) | a (1) | y (Dv)]
    sh, sH = slice(0, m), slice(m, m + Dv * m)
    sp = slice(m + Dv * m, 2 * m + Dv * m)
    ia = 2 * m + Dv * m
    sy = slice(ia + 1, ia + 1 + Dv)
    n = ia + 1 + Dv

    def rhs(_t, x, f, val, w, r, g):
        h, H, p, a, y = x[sh], x[sH].reshape(Dv, m), x[sp], x[ia], x[sy]
        dx = np.empty(n)
        dx[sh] = (f - h) / tau_h
        dx[sH] = ((w * eta_H * np.outer(val, h) - lambda_H * H) / tau_H).ravel()
        dx[sp] = (w * eta_p * h - lambda_p * p) / tau_p
        dx[ia] = (r * g * np.dot(p, h) - a) / tau_a
        dx[sy] = (r * g * (H @ h) - a * y) / tau_y
        return dx

    def jac(_t, x, f, val, w, r, g):
        h, H, p, a, y = x[sh], x[sH].reshape(Dv, m), x[sp], x[ia], x[sy]
        J = np.zeros((n, n))
        J[sh, sh] = -np.eye(m) / tau_h
        for i in range(Dv):  # dH_ij/dt depends on h_j and H_ij
            rows = slice(m + i * m, m + (i + 1) * m)
            J[rows, sh] = w * eta_H * val[i] * np.eye(m) / tau_H
            J[rows, rows] = -lambda_H * np.eye(m) / tau_H
        J[sp, sh] = w * eta_p * np.eye(m) / tau_p
        J[sp, sp] = -lambda_p * np.eye(m) / tau_p
        J[ia, sh] = r * g * p / tau_a
        J[ia, sp] = r * g * h / tau_a
        J[ia, ia] = -1.0 / tau_a
        J[sy, sh] = r * g * H / tau_y
        for k in range(Dv):  # d(H@h)_k / dH_kj = h_j
            J[ia + 1 + k, m + k * m:m + (k + 1) * m] = r * g * h / tau_y
        J[sy, ia] = -y / tau_y
        J[sy, sy] = -a * np.eye(Dv) / tau_y
        return J

    x = np.zeros(n)
    t0 = 0.0
    y_out, a_out = np.zeros((T, Dv)), np.zeros(T)
    tr_t, tr_x = [], []
    jac_kw = {"jac": jac} if method in ("LSODA", "Radau", "BDF") else {}
    n_pts = 20
    a_log_scale = np.zeros(T)
    for kind, tok, f, val, g, omega, rescale, lsc in _windows(phi_k, phi_q, v, protocol, gain_control):
        x[sH] *= rescale
        x[sp] *= rescale
        if kind == "write":  # r = 0; gate w closed on [0, d), open on [d, 1]
            segs = ([(d, 0.0)] if d > 0 else []) + [(1.0 - d, omega)]
            r = 0.0
        else:                # w = 0, r = 1 with read gain g
            segs, r = [(1.0, 0.0)], 1.0
        win_start = t0
        for length, w in segs:
            args = (f, val, w, r, g)
            sol = solve_ivp(rhs, (t0, t0 + length), x, method=method, args=args,
                            rtol=rtol, atol=atol, dense_output=return_trace, **jac_kw)
            if not sol.success:
                raise RuntimeError(f"solve_ivp failed in {kind} window of token {tok}: {sol.message}")
            if return_trace:  # trace points strictly inside / at end of this segment
                ts = win_start + np.arange(1, n_pts + 1) / n_pts
                ts = ts[(ts > t0) & (ts <= t0 + length + 1e-12)]
                if ts.size:
                    tr_t.append(ts)
                    tr_x.append(sol.sol(ts).T)
            x = sol.y[:, -1].copy()   # exact segment end state, carried forward
            t0 = t0 + length
        t0 = win_start + 1.0
        if kind == "read":
            y_out[tok] = x[sy]
            a_out[tok] = x[ia]
            a_log_scale[tok] = lsc

    out = {"y": y_out, "a": a_out, "a_log_scale": a_log_scale, "p_end": x[sp].copy(),
           "H_end": x[sH].reshape(Dv, m).copy(), "h_end": x[sh].copy()}
    if return_trace:
        X = np.concatenate(tr_x, axis=0)
        out.update(t=np.concatenate(tr_t), a_t=X[:, ia], y_t=X[:, sy],
                   psum_t=X[:, sp].sum(axis=1), hmean_t=X[:, sh].mean(axis=1))
    return out


def closed_form_rfa(phi_k, phi_q, v, causal):
    """Random-feature attention: a_t = phi_q[t] . sum_{tau in S_t} phi_k[tau],
    y_t = sum_{tau in S_t} v[tau] (phi_q[t] . phi_k[tau]) / a_t,
    with S_t = all tokens (causal=False) or tau <= t (causal=True). Returns (y, a)."""
    phi_k = np.asarray(phi_k, dtype=np.float64)
    phi_q = np.asarray(phi_q, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    S = phi_q @ phi_k.T  # S[t, tau]
    if causal:
        S = np.tril(S)
    a = S.sum(axis=1)
    y = (S @ v) / a[:, None]
    return y, a


def scipy_sample(phi_k, phi_q, v, ts, *, protocol, tau_h, tau_H, tau_p, tau_a, tau_y,
                 eta_H=1.0, eta_p=1.0, lambda_H=0.0, lambda_p=0.0, write_delay=0.0,
                 rtol=1e-10, atol=1e-12, method="LSODA", gain_control=True):
    """The full state sampled at arbitrary times ``ts`` (window units, within [0, 2T]).

    Written separately from :func:`scipy_simulate` (same equations, own right-hand
    side): each constant-input segment is solved with ``solve_ivp`` and the samples that
    fall inside it are taken from its ``t_eval`` (a sample exactly on a segment edge is
    taken from the segment that ends there; the state is continuous). Returns a dict
    with 'a' (N,), 'p' (N, m), 'h' (N, m), 'y' (N, Dv), 'H' (N, Dv, m).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    d = float(write_delay)
    phi_k = np.asarray(phi_k, dtype=np.float64)
    phi_q = np.asarray(phi_q, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    ts = np.asarray(ts, dtype=np.float64)
    T, m = phi_k.shape
    Dv = v.shape[1]
    if np.any(np.diff(ts) < 0) or ts.min() < 0 or ts.max() > 2 * T:
        raise ValueError("ts must be sorted and inside [0, 2T]")
    nH = Dv * m
    n = 2 * m + nH + 1 + Dv

    def unpack(x):
        h = x[:m]
        H = x[m:m + nH].reshape(Dv, m)
        p = x[m + nH:2 * m + nH]
        a = x[2 * m + nH]
        y = x[2 * m + nH + 1:]
        return h, H, p, a, y

    def rhs(_t, x, f, val, w, r, g):
        h, H, p, a, y = unpack(x)
        return np.concatenate([
            (f - h) / tau_h,
            ((w * eta_H * np.outer(val, h) - lambda_H * H) / tau_H).ravel(),
            (w * eta_p * h - lambda_p * p) / tau_p,
            [(r * g * np.dot(p, h) - a) / tau_a],
            (r * g * (H @ h) - a * y) / tau_y,
        ])

    out = np.full((len(ts), n), np.nan)
    done = np.zeros(len(ts), bool)
    x = np.zeros(n)
    t0 = 0.0
    at_zero = ts == 0.0
    out[at_zero] = x
    done |= at_zero
    for kind, _tok, f, val, g, omega, rescale, _ in _windows(phi_k, phi_q, v, protocol, gain_control):
        x[m:m + nH] *= rescale
        x[m + nH:2 * m + nH] *= rescale
        if kind == "write":
            segs = ([(d, 0.0, 0.0)] if d > 0 else []) + [(1.0 - d, omega, 0.0)]
        else:
            segs = [(1.0, 0.0, 1.0)]
        for length, w, r in segs:
            t1 = t0 + length
            sel = (~done) & (ts > t0) & (ts <= t1 + 1e-12)
            t_eval = np.clip(ts[sel], t0, t1)
            te = np.unique(np.concatenate([t_eval, [t1]]))
            sol = solve_ivp(rhs, (t0, t1), x, method=method, args=(f, val, w, r, g), rtol=rtol, atol=atol,
                            t_eval=te)
            if not sol.success:
                raise RuntimeError(f"solve_ivp failed: {sol.message}")
            out[sel] = sol.y[:, np.searchsorted(te, t_eval)].T
            done |= sel
            x = sol.y[:, -1].copy()
            t0 = t1
    assert done.all()
    h = out[:, :m]
    return {"h": h, "H": out[:, m:m + nH].reshape(-1, Dv, m), "p": out[:, m + nH:2 * m + nH],
            "a": out[:, 2 * m + nH], "y": out[:, 2 * m + nH + 1:]}
