"""Text generation from a trained neuron--astrocyte language model (a ``gpt_model`` run)
and from its GPT teacher, for comparison: ``astrojax generate run=DIR prompt="..." steps=N``.

The teacher decodes with its key/value cache (:func:`astrojax.teachers.generate`). The
student (:func:`generate_student`) decodes token by token with the simulated causal
dynamics carrying their state -- per layer and head the neuron--astrocyte state and the
gain-control scalars -- from one token to the next (:func:`student_step`): the prefix is
never recomputed. Past the context length both slide their window the same way
(:func:`astrojax.teachers._gpt.window_start`): when it is full, the last
``context_length // 2`` tokens are re-encoded from a fresh state (one whole-window
simulation) and decoding continues, an amortised constant cost per token.
``incremental=False`` computes every token's logits from a whole-window simulation
instead (the reference: quadratic in the window length).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Optional

import equinox as eqx
import numpy as np
from omegaconf import MISSING

from .._config import ConfigError, Schema, option, path_or_null, run_in_hydra_dir, to_config

__all__ = ["GenerateConfig", "generate_student", "student_step", "run_generate", "generate_job",
           "check_generate_files"]


# ----------------------------------------------------------------------------- library


def _check_student(model):
    from ..layers import NeuronAstrocyteAttention
    from ..teachers import GPT

    if not isinstance(model, GPT):
        raise TypeError(f"`model` must be a GPT-shaped student, got {type(model).__name__}")
    for i, b in enumerate(model.blocks):
        a = b.attn
        if not isinstance(a, NeuronAstrocyteAttention) or not a.protocol.causal or not b.pre_norm:
            raise TypeError(f"layer {i} is not a pre-LN block with causal neuron-astrocyte attention "
                            f"(got {type(a).__name__})")


def generate_student(model, prompt, steps: int, *, temperature: float = 0.0, key=None, incremental: bool = True):
    """Continue the token ids ``prompt`` by ``steps`` tokens with the neuron--astrocyte
    language model ``model`` (a GPT whose attention layers are causal
    :class:`~astrojax.layers.NeuronAstrocyteAttention`; the student of a ``gpt_model``
    run). ``temperature`` 0: greedy; > 0: sampling with ``key``. Returns ``(ids
    (len(prompt) + steps,), logits (len(prompt) + steps - 1, vocab))`` like
    :func:`astrojax.teachers.generate`.

    ``incremental=True``: one token per step, the simulated state carried from token to
    token; ``False``: every token from a whole-window simulation (the reference)."""
    import jax
    import jax.numpy as jnp

    from ..teachers._gpt import _generate_recompute, check_generate_args

    _check_student(model)
    prompt = check_generate_args(model, prompt, steps, temperature, key)
    with jax.enable_x64(False):
        key = jax.random.PRNGKey(0) if key is None else key
        buf = jnp.zeros((prompt.shape[0] + int(steps),), jnp.int32).at[: prompt.shape[0]].set(prompt)
        fn = _generate_carried if incremental else _generate_recompute
        return fn(model, buf, jnp.int32(prompt.shape[0]), key, jnp.float32(temperature))


def _zero_carries(model):
    """Per layer, the :class:`~astrojax.integrate.Carry` of a network that has seen
    nothing, stacked over heads."""
    import jax
    import jax.numpy as jnp

    from ..integrate import Carry

    out = []
    for b in model.blocks:
        a = b.attn
        head0 = jax.tree.map(lambda x: x[0] if eqx.is_array(x) else x, a.features)
        m = jax.eval_shape(head0, jnp.zeros((1, a.head_dim), a.W_Q.weight.dtype)).shape[-1]  # hidden neurons
        dtype = a.W_Q.weight.dtype
        one = Carry.zeros(m, a.head_dim, dtype)
        out.append(jax.tree.map(lambda x: jnp.broadcast_to(x, (a.num_heads,) + jnp.shape(x)), one))
    return tuple(out)


def _heads(attn, q, k, v, carry):
    """Every head of ``attn`` on ``q, k, v`` ``(H, n, Dh)`` continuing from ``carry`` (None:
    from nothing); returns ``(y (H, n, Dh), final carry)``."""
    import equinox as eqx

    from ..integrate import SaveAt
    from ..simulate import solve_head

    def one(fmap, P, q, k, v, c):
        sol = solve_head(fmap, P, q, k, v, attn.protocol, attn.method, SaveAt(final=True), None, init=c)
        return sol.y, sol.final

    if carry is None:
        return eqx.filter_vmap(lambda f, P, q, k, v: one(f, P, q, k, v, None))(attn.features, attn.params, q, k, v)
    return eqx.filter_vmap(one)(attn.features, attn.params, q, k, v, carry)


def _forward(model, ids, pos0, carries):
    """The student on tokens ``ids`` ``(n,)`` at positions ``pos0..pos0+n-1``, every
    neuron--astrocyte head continuing from ``carries`` (None: from nothing). Returns
    ``(logits (n, vocab), carries after the last token)``."""
    import jax

    from ..layers import _merge, _qkv

    n = ids.shape[0]
    x = model.tok_embed[ids] + jax.lax.dynamic_slice_in_dim(model.pos_embed, pos0, n)
    new = []
    for i, b in enumerate(model.blocks):
        a = b.attn
        q, k, v = _qkv(a.W_Q, a.W_K, a.W_V, jax.vmap(b.ln1)(x), a.num_heads)
        y, c = _heads(a, q, k, v, None if carries is None else carries[i])
        x = x + _merge(a.W_O, y)
        x = x + b._mlp(jax.vmap(b.ln2)(x))
        new.append(c)
    return model.logits(x), tuple(new)


def student_step(model, carries, token, pos):
    """One token: the logits after ``token`` at position ``pos``, every head advanced by
    one write window and one read window from ``carries`` (per layer, stacked over
    heads). Returns ``(logits (vocab,), carries)``: the prefix is never recomputed."""
    logits, carries = _forward(model, token[None], pos, carries)
    return logits[0], carries


def _generate_carried_impl(model, buf, plen, key, temperature):
    """Incremental decoding of ``buf`` ``(N,)`` (positions ``< plen`` the prompt) with the
    simulated state carried from token to token; the window slides like the teacher's."""
    import jax
    import jax.numpy as jnp

    from ..teachers._gpt import _sample

    C = model.config.context_length
    half = C // 2
    N = buf.shape[0]

    def refill(buf, t):
        """The state after the last ``half`` tokens before ``t``, simulated from nothing
        at positions ``0..half-1`` (one whole-window simulation)."""
        _, carries = _forward(model, jax.lax.dynamic_slice(buf, (t - half,), (half,)), 0, None)
        return carries

    def body(carry, t):
        buf, carries, pos = carry
        if N > C:  # static: short sequences never slide
            full = pos == C
            carries = jax.lax.cond(full, lambda: refill(buf, t), lambda: carries)
            pos = jnp.where(full, half, pos)
        logits, carries = student_step(model, carries, buf[t], pos)
        nxt = jnp.where(t + 1 < plen, buf[t + 1], _sample(logits, jax.random.fold_in(key, t), temperature))
        return (buf.at[t + 1].set(nxt), carries, pos + 1), logits

    init = (buf, _zero_carries(model), jnp.int32(0))
    (buf, _, _), logits = jax.lax.scan(body, init, jnp.arange(N - 1))
    return buf, logits


_generate_carried = eqx.filter_jit(_generate_carried_impl)


# ----------------------------------------------------------------------------- the command


@dataclasses.dataclass
class GenerateConfig(Schema):
    """``astrojax generate run=DIR prompt="..." steps=N``: continue a prompt with a trained
    neuron-astrocyte language model (a gpt_model run) and with its teacher."""

    run: str = option(MISSING, check=path_or_null, help="a finished training run of scope=model on teacher=gpt")
    prompt: str = option("The ", help="text to continue (encoded after a <bos>)")
    steps: int = option(200, ge=1, help="characters to generate")
    temperature: float = option(0.0, ge=0.0, help="0: greedy | > 0: sampling temperature")
    seed: int = option(0, ge=0, help="of the sampling (temperature > 0)")
    model: str = option("both", choices=("both", "student", "teacher"), help="which model(s) continue the prompt")
    incremental: bool = option(True, help="student: carry the simulated state token to token | false: "
                                          "recompute the window for every token (the reference)")
    out: Optional[str] = option(None, check=path_or_null, help="output JSON (null: RUN/generate.json)")

    def validate(self, key):
        if not self.prompt:
            raise ConfigError(f"config key `{key('prompt')}`: expected at least one character, got ''")


def _decoder_run(run):
    """The stored TrainConfig of a run; :class:`ConfigError` naming ``run`` unless it is a
    finished whole-model run on a GPT teacher."""
    from ..teachers._facts import teacher_facts
    from .build import run_config

    _, c = run_config(run)
    kind, _ = teacher_facts(c.teacher, "run")
    if kind != "causal-text":
        raise ConfigError(f"config key `run`: {run} was trained on teacher {c.teacher!r}, not a GPT (decoder) "
                          "teacher: only decoder runs generate text")
    if c.scope != "model":
        raise ConfigError(f"config key `run`: {run} is a heads-scope run (single heads, no language model); "
                          "generate from a scope=model run (experiment=gpt_model)")
    return c


def check_generate_files(c: GenerateConfig, run_dir=None) -> None:
    """The pre-flight: the run is a finished decoder model-scope run, the output writable."""
    from .._io import check_writable

    _decoder_run(c.run)
    check_writable(c.out or os.path.join(c.run, "generate.json"), "out")


def run_generate(cfg) -> dict:
    """``astrojax generate`` without Hydra; returns (and writes) the continuations, with
    their wall times."""
    import jax

    from .._io import check_writable, save_json
    from ..teachers import generate as teacher_generate
    from .build import load_run, load_teacher

    c = to_config(GenerateConfig, cfg)
    tc = _decoder_run(c.run)
    path = c.out or os.path.join(c.run, "generate.json")
    check_writable(path, "out")
    teacher = load_teacher(tc)
    student, _ = load_run(c.run, teacher=teacher)
    tok = teacher.tokenizer
    ids = tok.encode(c.prompt, bos=True)
    key = jax.random.PRNGKey(c.seed)
    res = {"run": str(c.run), "prompt": c.prompt, "steps": c.steps, "temperature": c.temperature, "seed": c.seed}
    todo = {"both": ("teacher", "student"), "student": ("student",), "teacher": ("teacher",)}[c.model]
    for who in todo:
        t0 = time.perf_counter()
        if who == "teacher":
            out, _ = teacher_generate(teacher.model, ids, c.steps, temperature=c.temperature, key=key)
        else:
            out, _ = generate_student(student, ids, c.steps, temperature=c.temperature, key=key,
                                      incremental=c.incremental)
        out = np.asarray(jax.block_until_ready(out))
        text = tok.decode(out[ids.shape[0]:])
        res[who] = {"text": text, "seconds": time.perf_counter() - t0}
        if who == "student":
            res[who]["incremental"] = c.incremental
        print(f"astrojax generate: {who}: {c.prompt}{text}")
    if "teacher" in res and "student" in res:
        a, b = res["teacher"]["text"], res["student"]["text"]
        res["same_characters"] = int(sum(x == y for x, y in zip(a, b)))
        res["common_prefix"] = int(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))))
    save_json(path, res)
    print(f"astrojax generate: wrote {path}")
    return res


def generate_job(cfg) -> None:
    """Hydra task of ``astrojax generate``."""
    run_in_hydra_dir("generate", lambda cfg, out_dir: run_generate(cfg), cfg)
