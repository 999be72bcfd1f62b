"""Packed sweeps: several training runs of the same shapes as one program in one process
(one compilation, one dispatch per step for all members).

When to use: a sweep over seeds, or over continuous hyperparameters that change no array
shape -- the peak learning rate, weight decay, loss weights, initial biophysical
parameters -- on one accelerator (or a CPU) that a single small run does not fill.
Everything that changes shapes or the program (``m``, ``layers``, ``method``,
``batch_size``, ``steps``, the data, the optimiser kind or schedule) needs separate runs
(Hydra's ``-m`` sweep, or the SLURM launcher).

How: member ``i`` is exactly the run ``astrojax train <its overrides>`` would do; the
members are trained by the one training loop of every run
(:func:`astrojax.train.loop.train_members`: a member axis of size K, per-member learning
rate and weight decay as ``optax.inject_hyperparams`` state, per-member loss weights),
with ``lax.map`` or ``jax.vmap`` over the members chosen by ``pack.vectorize``. Results
equal separate runs to float32 rounding (batched arithmetic may sum in another order).

Config (``pack:`` in :class:`~astrojax.train.config.TrainConfig`): lists of values per
packable key (:data:`PACKABLE`); ``pack.mode: product`` (every combination, the default,
like Hydra's ``-m``) or ``zip`` (the i-th values together; all lists of one length)::

    astrojax train experiment=quickstart pack.seed=[0,1,2,3]
    astrojax train pack.seed=[0,1] pack.optimizer.learning_rate=[3e-3,1e-2]     # 4 members
    astrojax train pack.mode=zip pack.seed=[0,1,2] pack.loss.kl=[0.0,0.5,1.0]    # 3 members

Output (:func:`astrojax.train.app.run_train`): the run directory holds the packed state
(``config.yaml``, ``env.json``, ``checkpoints/`` of the stacked state: resumable like any
run) and one ``member_NNN/`` per member with ``config.yaml`` (the member's resolved config:
the packed values substituted, ``pack`` empty -- running it as a plain config reproduces
the member), ``overrides.yaml`` (the member's ``key=value`` overrides: the command's own
non-pack overrides plus the packed values; read by ``astrojax summarize``),
``metrics.jsonl``, ``before.json``, ``metrics.json`` (as a plain run, plus a ``pack``
entry), ``model.eqx`` and ``learning_curve.png``. ``pack.json`` (the members and their
results) is written last and marks the sweep finished.
"""

from __future__ import annotations

from .config import PACKABLE, member_config, pack_members
from .loop import LoopConfig, Member, train_members

__all__ = ["PackMember", "train_packed", "pack_members", "member_config", "PACKABLE", "PACK_MODES"]

PACK_MODES = ("product", "zip")

#: One member of a packed sweep (:class:`astrojax.train.loop.Member`).
PackMember = Member


def train_packed(task, loop: LoopConfig, members: list[Member], *, checkpointer=None, metrics_logs=None,
                 on_log=None, vectorize: str = "auto"):
    """Train ``len(members)`` runs of ``task`` as one program; returns ``(students,
    histories)``. The training loop of every run (:func:`~astrojax.train.loop.train_members`)."""
    return train_members(task, loop, members, checkpointer=checkpointer, metrics_logs=metrics_logs,
                         on_log=on_log, vectorize=vectorize)
