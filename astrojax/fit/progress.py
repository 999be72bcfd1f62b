"""The fit's progress bar: counts what really happens, and estimates time without compilation.

- Least squares (LM/GN): every restart steps together and stops when it meets the
  tolerance, so the bar counts *finished restarts* out of ``restarts``; the iteration, the
  best loss so far and the time per iteration are shown next to it, with the time left
  until ``max_iters`` at most (the solver usually stops well before).
- Adam runs exactly ``max_iters`` steps: the bar counts steps, the time left is exact.

The clock of the estimates starts when the first iteration reports, i.e. after
compilation (the bar says ``compiling`` until then). Updates come from inside the
compiled loop through ``jax.debug.callback``; they are only traced when the bar is on.
"""

from __future__ import annotations

import contextlib
import sys
import time

import numpy as np

__all__ = ["FitProgress"]


def _fmt_s(s: float) -> str:
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)}:{int(s % 60):02d} min"
    return f"{int(s // 3600)}:{int(s % 3600 // 60):02d} h"


class FitProgress:
    """One bar for one optimisation pass. ``kind``: ``"restarts"`` (LM/GN: the bar counts
    finished restarts) or ``"steps"`` (Adam: the bar counts steps)."""

    _current: FitProgress | None = None  # the bar fed by the compiled loop's callbacks

    def __init__(self, desc: str, *, kind: str, restarts: int, max_iters: int, compiling: bool = True, file=None):
        from tqdm.auto import tqdm

        self.kind, self.restarts, self.max_iters = kind, int(restarts), int(max_iters)
        total = self.restarts if kind == "restarts" else self.max_iters
        unit = "restarts done" if kind == "restarts" else "steps"
        self.desc = desc
        self.t_first = None  # wall time of the first report (compilation done)
        self.iter_first = 0
        self.iteration = 0
        self.best_loss = np.inf
        self.bar = tqdm(total=total, desc=f"{desc} ({'compiling' if compiling else 'starting'})", unit=unit, leave=False, file=file or sys.stderr,
                        bar_format="{desc}: {n_fmt}/{total_fmt} {unit} |{bar}| [{elapsed}{postfix}]",
                        dynamic_ncols=True)

    # -- reports ----------------------------------------------------------------------

    def update(self, iteration: int, finished: int, losses) -> None:
        """``iteration`` iterations done, ``finished`` restarts stopped, current losses."""
        now = time.perf_counter()
        iteration = int(iteration)
        if self.t_first is None:
            self.t_first, self.iter_first = now, iteration
            self.bar.set_description_str(self.desc, refresh=False)
        self.iteration = iteration
        losses = np.asarray(losses, np.float64)
        finite = losses[np.isfinite(losses)]
        if finite.size:
            self.best_loss = min(self.best_loss, float(finite.min()))
        self.bar.n = int(finished) if self.kind == "restarts" else iteration
        self.bar.set_postfix_str(self._postfix(now), refresh=False)
        self.bar.refresh()

    @classmethod
    def update_active(cls, iteration, finished, losses) -> None:
        """Callback of the compiled least-squares loop (to the bar made active by
        :meth:`active`): ``iteration`` iterations done, ``finished`` restarts stopped."""
        bar = cls._current
        if bar is not None:
            bar.update(int(iteration), int(finished), losses)

    def _postfix(self, now) -> str:
        parts = []
        if self.kind == "restarts":
            parts.append(f"iteration {self.iteration}/{self.max_iters}")
        if np.isfinite(self.best_loss):
            parts.append(f"best loss {self.best_loss:.4g}")
        done = self.iteration - self.iter_first
        if done > 0:
            per = (now - self.t_first) / done
            left = (self.max_iters - self.iteration) * per
            parts.append(f"{per:.2g} s/it")
            parts.append(f"{'at most ' if self.kind == 'restarts' else ''}{_fmt_s(left)} left")
        return ", ".join(parts)  # tqdm puts ", " before a non-empty postfix

    def close(self) -> None:
        self.bar.close()

    # -- the compiled loop's target ---------------------------------------------------

    @classmethod
    @contextlib.contextmanager
    def active(cls, bar: FitProgress | None):
        """Route the compiled loop's callbacks to ``bar`` (closed on exit)."""
        cls._current = bar
        try:
            yield bar
        finally:
            cls._current = None
            if bar is not None:
                bar.close()
