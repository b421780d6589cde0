"""Runners that the CLI, the notebooks and the benchmarks share: train (or find cached) an editor for a zoo
model, evaluate it on held-out edits, and tabulate results as pandas DataFrames."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from mendlab import metrics, tasks, zoo
from mendlab.config import cache_dir, config_hash, profile
from mendlab.families import get_family
from mendlab.nets import NetConfig
from mendlab.train import TrainConfig, train

ALGS = ("mend",)


def _task_for(model_name: str, model, task: str | None, seed: int | None):
    world = zoo.world_of(model_name, seed=seed)
    return tasks.from_world(world, get_family(model).kind, task)


def editor_path(model_name: str, alg: str = "mend", variant: str = "mend", seed: int = 0,
                task: str | None = None, train_config: TrainConfig | None = None, prof: str | None = None) -> Path:
    """Where ``train_editor`` caches this editor: a folder named by model, alg, variant and a config hash."""
    prof = prof or profile()
    cfg = train_config or TrainConfig.for_profile(prof, seed=seed)
    key = {"model": zoo.spec(model_name, prof, seed) if model_name in zoo.names() else model_name, "alg": alg,
           "variant": variant, "task": task, "train": asdict(cfg), "net": asdict(NetConfig.variant(variant))}
    return cache_dir() / "editors" / f"{Path(model_name).name}-{alg}-{variant}-{config_hash(key)}"


def train_editor(model_name: str = "tiny-gpt2", alg: str = "mend", variant: str = "mend", seed: int = 0,
                 task: str | None = None, out: str | Path | None = None, train_config: TrainConfig | None = None,
                 progress: bool = True, force: bool = False):
    """(editor, model, tokenizer, card): train an editor for a zoo model (or a local model folder), or load it
    from the cache when the same configuration was trained before. ``seed`` picks the world (zoo models) and the
    editor's initialisation and sampling. The card has ``path``, ``cached``, ``seconds``, ``best_val``, ``steps``.
    """
    if alg not in ALGS:
        raise ValueError(f"unknown alg {alg!r}; choose one of {ALGS}")
    from mendlab.editors import MEND

    prof = profile()
    cfg = train_config or TrainConfig.for_profile(prof, seed=seed)
    model, tok = zoo.load(model_name, seed=seed if model_name in zoo.names() else None, progress=progress)
    path = Path(out) if out is not None else editor_path(model_name, alg, variant, seed, task, cfg, prof)
    card_file = path / "train_card.json"
    if card_file.exists() and (path / "best").exists() and not force:
        editor = MEND.from_pretrained(path / "best", model)
        card = json.loads(card_file.read_text())
        return editor, model, tok, {**card, "cached": True}
    t = _task_for(model_name, model, task, seed)
    torch.manual_seed(seed)
    editor = MEND.for_model(model, NetConfig.variant(variant))
    t0 = time.perf_counter()
    result = train(editor, model, tok, t.train, t.val, cfg, out=path, progress=progress)
    card = {"model": model_name, "alg": alg, "variant": variant, "seed": seed, "task": t.name,
            "path": str(path / "best"), "seconds": round(time.perf_counter() - t0, 1),
            "train_seconds": round(result.seconds, 1), "steps": result.steps, "best_step": result.best_step,
            "best_val": round(result.best_val, 5), "stopped": result.stopped, "skipped": result.skipped,
            "editor_params": editor.net.count_parameters(), "profile": prof}
    card_file.write_text(json.dumps(card, indent=1))
    return editor.eval(), model, tok, {**card, "cached": False}


def evaluate_editor(editor, model, tok, model_name: str, *, seed: int = 0, task: str | None = None,
                    split: str = "test", n: int | None = None, n_edits: int = 1, progress: bool = True,
                    return_rows: bool = False):
    """``metrics.evaluate`` on the held-out split of the model's world (test subjects never seen in training)."""
    t = _task_for(model_name, model, task, seed)
    examples = t.split(split)[:n] if n else t.split(split)
    return metrics.evaluate(editor, model, tok, examples, t.panel, n_edits=n_edits, progress=progress,
                            return_rows=return_rows)


def target_probability(model, tok, prompt: str, target: str, edit=None) -> float:
    """p(target | prompt) under teacher forcing (product over the target's tokens), optionally edited."""
    from mendlab import losses
    from mendlab.data import Collator

    collator = Collator.for_model(model, tok)
    enc = {k: v.to(next(model.parameters()).device) for k, v in collator.encode([(prompt, target)]).items()}
    with torch.no_grad():
        logits = edit.forward(model, enc) if edit is not None else losses.forward(model, enc)
    if collator.kind == "classifier":
        p = torch.sigmoid(logits.float().reshape(-1))[0]
        return float(p if enc["labels"][0] == 1 else 1 - p)
    total, _ = losses.token_nll(collator.kind, logits, enc["labels"])
    return float(torch.exp(-total[0]))


def edit_report(editor, model, tok, prompt: str, target: str, rephrases=(), unrelated=()):
    """Edit ``prompt`` → ``target`` and tabulate answers and p(target) before and after, on the prompt, its
    rephrases and unrelated (prompt, answer) pairs (where p is of *their own* answer). Returns (edit, DataFrame)."""
    import pandas as pd

    from mendlab import probe
    from mendlab.data import EditExample

    with torch.no_grad():
        edit = editor.edit(model, tok, EditExample(prompt, target)).detach()
    checks = ([("edit", prompt, target)] + [("rephrase", r, target) for r in rephrases]
              + [("unrelated", p, a) for p, a in unrelated])
    prompts = [p for _, p, _ in checks]
    before = probe.answer(model, tok, prompts)
    with edit.applied(model):
        after = probe.answer(model, tok, prompts)
    rows = [{"role": role, "prompt": p, "expected": a, "answer_before": b, "answer_after": c,
             "p_before": target_probability(model, tok, p, a), "p_after": target_probability(model, tok, p, a, edit)}
            for (role, p, a), b, c in zip(checks, before, after, strict=True)]
    return edit, pd.DataFrame(rows)
