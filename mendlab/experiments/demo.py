"""The main job end to end, as ``mendlab demo`` shows it: a zoo model and what it knows, a MEND editor trained
(or found in the cache) for it, a few edits of facts the editor never saw, and the held-out evaluation."""

from __future__ import annotations

import time

from mendlab import metrics, probe, zoo
from mendlab.experiments.editors import task_for, train_editor
from mendlab.experiments.evaluate import edit_report, evaluate_editor


def demo(model_name: str = "tiny-gpt2", seed: int = 0, *, subjects: int = 5, edits: int = 3, n: int | None = None,
         progress: bool = True) -> tuple[dict, list[str]]:
    """(held-out metrics with ``model``, ``seed``, ``seconds``; the report's lines)."""
    import pandas as pd

    t0 = time.perf_counter()
    editor, model, tok, card = train_editor(model_name, seed=seed, progress=progress)
    zcard = zoo.build(model_name, seed=seed, progress=False)
    world = zoo.world_of(model_name, seed=seed)
    probed = world.subjects_in("test")[:subjects]
    df = probe.knowledge(model, tok, world, probed)
    lines = [zoo.card_line(zcard), f"what it knows about {len(probed)} test-split subjects:",
             probe.summary(df).to_string(), "",
             f"MEND editor: {card['editor_params']:,} parameters, {'cached' if card['cached'] else 'trained'} "
             f"({card['train_seconds']} s of training, {card['steps']} steps)", "",
             "Edits of facts the editor never saw (test-split subjects):"]
    t = task_for(model_name, model, tok, None, seed)
    shown = []
    for e in t.test[:edits]:
        _, rep = edit_report(editor, model, tok, e.prompt, e.target, e.rephrases[:1] + e.heldout_rephrases[:1],
                             [t.panel[0]])
        shown.append(rep.assign(request=e.prompt))
    with pd.option_context("display.width", 160, "display.max_colwidth", 45):
        table = pd.concat(shown)[["role", "prompt", "expected", "answer_before", "answer_after", "p_after"]]
        lines.append(table.round(3).to_string(index=False))
    result = metrics.rounded(evaluate_editor(editor, model, tok, model_name, seed=seed, n=n, progress=progress), 4)
    lines += ["", f"Held-out evaluation on {result['n']} edits (each alone):",
              "  ".join(f"{k}={result[k]}" for k in metrics.KEYS)]
    return {**result, "model": model_name, "seed": seed, "seconds": round(time.perf_counter() - t0, 1)}, lines
