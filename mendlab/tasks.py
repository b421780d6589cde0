"""The editing problem for one model: edit requests per split and the unrelated facts an edit must keep.

A :class:`Task` is what ``train.py`` and ``metrics.py`` consume; it is built from a :class:`~mendlab.world.World`
(:func:`from_world`), from MEND's released data files (:func:`mendlab.filetasks.from_files`, what ``mendlab train
--data`` uses) or from any lists of :class:`~mendlab.data.EditExample`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mendlab.data import EditExample
from mendlab.world import World

DEFAULT_TASK = {"decoder": "qa", "seq2seq": "qa", "classifier": "claim"}


@dataclass
class Task:
    """Edits per split plus the panel of unrelated (prompt, answer) pairs used for drawdown and KL.

    ``panel`` comes from subjects of the *train* split, so it never shares a subject with val/test edits; for
    the generation task it holds passages with answer ``""`` (language modelling, for perplexity).
    """

    name: str
    train: list[EditExample]
    val: list[EditExample]
    test: list[EditExample]
    panel: list[tuple[str, str]]

    def split(self, name: str) -> list[EditExample]:
        if name not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, got {name!r}")
        return getattr(self, name)


def from_world(world: World, kind: str, task: str | None = None, panel_size: int = 64, seed: int = 0,
               claim_variants: int = 0, gen_variants: int = 1, gen_eval_variants: int = 1) -> Task:
    """The task for a model ``kind`` (``decoder``/``seq2seq``: ``qa`` or ``gen``; ``classifier``: ``claim``).

    ``claim_variants``: for claims, that many redrawn claims per training fact join the *train* split
    (``World.claim_edits(variant=…)``); val and test are unchanged. ``gen_variants`` and ``gen_eval_variants``:
    for generation, the number of requests per subject (``World.gen_edits(variant=…)``) in the train split and
    in val and test. A learned editor needs many distinct training edits: with one per subject it memorises them.
    """
    task = task or DEFAULT_TASK[kind]
    if kind == "classifier" and task != "claim":
        raise ValueError("a classifier edits claims: use task 'claim'")
    if kind != "classifier" and task == "claim":
        raise ValueError(f"a {kind} model edits 'qa' or 'gen', not claims")
    rng = random.Random(seed)
    if task == "qa":
        pool = world.qa_pairs(split="train")
    elif task == "claim":
        pool = [(c, "SUPPORTS" if y else "REFUTES") for c, y in world.claims(split="train")]
    else:
        pool = [(p, "") for p in world.passages(split="train")]
    panel = rng.sample(pool, min(panel_size, len(pool)))
    if task == "gen":
        def gen(split, n):
            return [e for v in range(n) for e in world.gen_edits(split, variant=v)]

        return Task(task, gen("train", gen_variants), gen("val", gen_eval_variants), gen("test", gen_eval_variants),
                    panel)
    train = world.edits(task, "train")
    if task == "claim":
        train += [e for v in range(1, claim_variants + 1) for e in world.claim_edits("train", variant=v)]
    return Task(task, train, world.edits(task, "val"), world.edits(task, "test"), panel)
