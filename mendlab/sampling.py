"""Training draws: how Algorithm 1 turns a stored edit request into the request it trains on at one step.

Each time a request is drawn, :func:`vary` may give it another of its trained phrasings as x_e, a fresh
locality example x_loc and (QA) a fresh wrong answer as y_e; :class:`mendlab.train.TrainConfig` documents the
switches and why they depart from the official sampler.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import TYPE_CHECKING

from mendlab.data import EditExample

if TYPE_CHECKING:
    from mendlab.train import TrainConfig


def target_pool(requests: list[EditExample]) -> dict[str, list[str]]:
    """relation → every answer (true or target) that QA requests of that relation have, sorted."""
    out: dict[str, set[str]] = {}
    for e in requests:
        if e.kind == "qa" and e.relation:
            out.setdefault(e.relation, set()).update(a for a in (e.target, e.original) if a)
    return {r: sorted(v) for r, v in out.items()}


def vary(e: EditExample, pool: list[EditExample], rng: random.Random, cfg: TrainConfig,
          targets: dict[str, list[str]] | None = None,
          by_relation: dict[str, list[EditExample]] | None = None) -> EditExample:
    """A training draw of request ``e``: another trained phrasing as x_e, a fresh x_loc and, with
    ``resample_target``, a fresh wrong answer of the right type as y_e (see TrainConfig)."""
    changes = {}
    if cfg.resample_target and targets and e.kind == "qa" and e.relation in targets:
        # departure: the tiny world has ~1k QA requests, and one fixed target each lets the editor memorise them
        wrong = [o for o in targets[e.relation] if o != e.original]
        if wrong:
            changes["target"] = rng.choice(wrong)
    phrasings = (e.prompt, *e.rephrases)
    if cfg.mix_phrasings and len(phrasings) > 2:
        x = rng.choice(phrasings)
        changes.update(prompt=x, rephrases=tuple(p for p in phrasings if p != x))
    if cfg.resample_locality:
        if cfg.locality_same_relation > 0 and by_relation and rng.random() < cfg.locality_same_relation:
            # departure: in the tiny worlds nearly every fact an edit breaks shares its relation (and template)
            # with the edit, so x_loc is drawn there; the official sampler draws unrelated questions
            pool = by_relation.get(e.relation) or pool
        for _ in range(8):
            other = pool[rng.randrange(len(pool))]
            if other.subject != e.subject and (other.original is not None or other.kind == "gen"):
                # generation: another subject's true passage, language-modelled on every token
                changes["locality"] = (other.prompt, "") if other.kind == "gen" else (other.prompt, other.original)
                break
    return replace(e, **changes) if changes else e
