"""The cache of editors every experiment shares: the task a zoo model is edited on, trained editors (MEND, its
ablations, KE, ENN) and FT / FT+KL with their learning rate swept on validation requests, each cached by its
whole configuration so that a notebook, a CLI command and a benchmark reuse the same editor."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import torch

from mendlab import metrics, selfsample, tasks, zoo
from mendlab.config import cache_dir, config_hash, profile, settings, writable
from mendlab.editors import editor_class, load_editor
from mendlab.editors.ft import FT, FTKL, FTConfig
from mendlab.families import edited_weights, get_family
from mendlab.train import TrainConfig, train

FT_LRS = (1e-5, 1e-4, 1e-3, 1e-2)

def _task_key(task: str | None) -> dict:
    """What of the task data enters an editor's cache key: the variants, and for generation the sampler."""
    # None is a model's default task, never generation (tasks.DEFAULT_TASK)
    targets = asdict(selfsample.SampleConfig()) if task == "gen" else "self-sampled"
    return {**asdict(settings().tasks), "gen_targets": targets}


def task_for(model_name: str, model, tok, task: str | None = None, seed: int | None = None, progress: bool = False):
    """The editing task of a zoo model on its world (``seed``): QA, claims, or generation with targets sampled
    from ``model`` itself (:mod:`mendlab.selfsample`, cached), as the paper's Wikitext edits are."""
    world = zoo.world_of(model_name, seed=seed)
    t = tasks.from_world(world, get_family(model).kind, task, **asdict(settings().tasks))
    if t.name == "gen":
        for split in ("train", "val", "test"):
            setattr(t, split, selfsample.retarget(t.split(split), model, tok, progress=progress)[0])
    return t


def _task(model_name: str, model, tok, task: str | None, seed: int, progress: bool, data):
    """The task of a run: from the files of ``data`` (a :class:`mendlab.filetasks.DataFiles`) when given, else
    the zoo model's world (:func:`task_for`)."""
    if data is None:
        return task_for(model_name, model, tok, task, seed, progress=progress)
    if task is not None and task != data.task_name:
        raise ValueError(f"--data {data.data} is a {data.task_name!r} task, not {task!r}")
    return data.task(get_family(model).kind, tok)


# TrainConfig options added after editors were first cached: in the cache key only when set, so that the
# editors trained before them keep their folders.
_LATER_OPTIONS = {"locality_same_relation": 0.0, "batch_edits": 1, "aggregate": "sum"}


def world_of_run(seed: int, world_seed: int | None) -> int:
    """The world (and zoo base model) seed of a run: ``world_seed`` when given, else the run's ``seed``."""
    return seed if world_seed is None else world_seed


def editor_path(model_name: str, alg: str = "mend", variant: str = "mend", seed: int = 0,
                task: str | None = None, train_config: TrainConfig | None = None, prof: str | None = None,
                world_seed: int | None = None, names: Sequence[str] | None = None,
                net: dict | None = None, data=None) -> Path:
    """Where ``train_editor`` caches this editor: a folder named by model, alg, variant and a config hash."""
    prof = prof or profile()
    cfg = train_config or TrainConfig.for_profile(prof, seed=seed)
    ws = world_of_run(seed, world_seed)
    train_key = {k: v for k, v in asdict(cfg).items() if k not in _LATER_OPTIONS or v != _LATER_OPTIONS[k]}
    key = {"model": zoo.spec(model_name, prof, ws) if zoo.known(model_name) else model_name, "alg": alg,
           "variant": variant, "task": task, "train": train_key, **_task_key(task)}
    cls = editor_class(alg)
    key[getattr(cls, "config_field", "editor")] = (asdict(cls.default_config(task, variant, **(net or {})))
                                                   if cls.trainable else None)
    if names is not None:  # only when given, so that the family defaults keep their cache entries
        key["names"] = list(names)
    if data is not None:  # the files' layout and content hashes (a task from files, not the world)
        key["data"] = data.key()
    return cache_dir() / "editors" / f"{Path(model_name).name}-{alg}-{variant}-{config_hash(key)}"


def train_editor(model_name: str = "tiny-gpt2", alg: str = "mend", variant: str = "mend", seed: int = 0,
                 task: str | None = None, out: str | Path | None = None, train_config: TrainConfig | None = None,
                 progress: bool = True, force: bool = False, world_seed: int | None = None,
                 names: Sequence[str] | None = None, net: dict | None = None, data=None):
    """(editor, model, tokenizer, card): train an editor for a zoo model (or a local model folder), or load it
    from the cache when the same configuration was trained before. ``seed`` picks the world (zoo models) and the
    editor's initialisation and sampling; ``world_seed``, when given, picks the world (and base model) instead.
    The card has ``path``, ``cached``, ``seconds``, ``best_val``, ``steps``.

    ``alg`` is one of ``mendlab.editors.ALGS``; ``variant`` is a MEND ablation (``NetConfig.variant``). FT and
    FT+KL train nothing: their learning rate is chosen on the validation split instead (:func:`ft_editor`).
    ``names``: the weights to edit, full parameter names (default: the family's, see ``families``); ``net``:
    ``NetConfig`` fields to override on top of the variant (MEND only), e.g. ``{"rank": 64}``. Both enter the cache
    key. ``data``: a :class:`mendlab.filetasks.DataFiles` to train on instead of the world (its train and val
    files; their content enters the cache key).
    """
    cls = editor_class(alg)  # raises for an unknown alg
    cls.default_config(task, variant, **(net or {}))  # refuses variants and network overrides of other editors
    if not cls.trainable:
        if names is not None:
            raise ValueError(f"{alg} sweeps its lr over the family's default weights; names are not supported")
        return ft_editor(model_name, alg, seed, task, progress=progress, force=force, world_seed=world_seed,
                         data=data)
    if data is not None:
        data.require("train", "val", command="training")
        task = task or data.task_name
    prof = profile()
    cfg = train_config or TrainConfig.for_profile(prof, seed=seed, **cls.train_overrides(task))
    ws = world_of_run(seed, world_seed)
    model, tok = zoo.load(model_name, seed=ws if zoo.known(model_name) else None, progress=progress)
    if task == tasks.DEFAULT_TASK[get_family(model).kind]:
        task = None  # the default task and None are one cache entry
    if names is not None:
        names = edited_weights(model, names)  # a clear error for a name the model lacks, before any training
    path = Path(out) if out is not None else editor_path(model_name, alg, variant, seed, task, cfg, prof, world_seed,
                                                         names, net, data)
    card_file = path / "train_card.json"
    if card_file.exists() and (path / "best").exists() and not force:
        editor = load_editor(path / "best", model)
        card = json.loads(card_file.read_text())
        return editor, model, tok, {**card, "cached": True}
    writable(path.parent)  # a read-only cache fails here, before minutes of training
    t = _task(model_name, model, tok, task, ws, progress, data)
    torch.manual_seed(seed)
    editor = cls.for_model(model, cls.default_config(t.name, variant, **(net or {})), names=names)
    t0 = time.perf_counter()
    # force: start afresh, even where an interrupted (or finished) run left its checkpoint to resume from
    result = train(editor, model, tok, t.train, t.val, cfg, out=path, progress=progress, resume=not force)
    n_params = editor.num_parameters()
    card = {"model": model_name, "alg": alg, "variant": variant, "seed": seed, "world_seed": ws, "task": t.name,
            "path": str(path / "best"), "seconds": round(time.perf_counter() - t0, 1),
            "train_seconds": round(result.seconds, 1), "steps": result.steps, "best_step": result.best_step,
            "best_val": round(result.best_val, 5), "stopped": result.stopped, "skipped": result.skipped,
            "editor_params": n_params, "profile": prof, **({"data": data.describe()} if data else {})}
    card_file.write_text(json.dumps(card, indent=1))
    return editor.eval(), model, tok, {**card, "cached": False}


def ft_editor(model_name: str = "tiny-gpt2", alg: str = "ft", seed: int = 0, task: str | None = None,
              lrs=FT_LRS, n_val: int = 48, progress: bool = True, force: bool = False,
              world_seed: int | None = None, data=None):
    """(editor, model, tokenizer, card) for FT or FT+KL, its learning rate chosen by a sweep over ``lrs`` on the
    first ``n_val`` *validation* requests (never the test split); the sweep is cached and is in ``card["sweep"]``.
    FT+KL draws its locality examples from the training requests' unrelated facts. ``data``: files to use instead
    of the world (:class:`mendlab.filetasks.DataFiles`, its val file and, for FT+KL, its train file)."""
    import pandas as pd


    prof = profile()
    ws = world_of_run(seed, world_seed)
    model, tok = zoo.load(model_name, seed=ws if zoo.known(model_name) else None, progress=progress)
    if data is not None:
        data.require("val", command="an lr sweep")
    t = _task(model_name, model, tok, task, ws, progress, data)
    cls = editor_class(alg)
    config = replace(cls.default_config(t.name), seed=seed)
    if data is not None and config.locality:
        data.require("train", command=f"{alg} (its unrelated facts are the training requests')")
    locality = [e.locality for e in t.train if e.locality is not None] if config.locality else None
    key = {"model": zoo.spec(model_name, prof, ws) if zoo.known(model_name) else model_name, "alg": alg,
           "task": t.name, "ft": asdict(config), "lrs": list(lrs), "n_val": n_val,
           **_task_key(t.name), **({"data": data.key()} if data else {})}
    path = cache_dir() / "editors" / f"{Path(model_name).name}-{alg}-{config_hash(key)}"
    card_file = path / "train_card.json"
    if card_file.exists() and not force:
        card = {**json.loads(card_file.read_text()), "cached": True}
        card["lr"] = best_lr(pd.DataFrame(card["sweep"]))  # the selection rule may be newer than the sweep
    else:
        t0 = time.perf_counter()
        frame = sweep_lr(model, tok, t.val[:n_val], t.panel, lrs=lrs, locality=locality, config=config,
                         progress=progress)
        lr = best_lr(frame)
        path.mkdir(parents=True, exist_ok=True)
        card = {"model": model_name, "alg": alg, "variant": "-", "seed": seed, "world_seed": ws, "task": t.name,
                "path": str(path),
                "lr": lr, "sweep": frame.round(5).to_dict(orient="records"), "profile": prof,
                "seconds": round(time.perf_counter() - t0, 1), "train_seconds": 0.0, "steps": 0,
                "best_step": 0, "best_val": None, "stopped": "no training", "skipped": 0, "editor_params": 0,
                **({"data": data.describe()} if data else {})}
        card_file.write_text(json.dumps(card, indent=1))
        card["cached"] = False
    editor = cls.for_model(model, replace(config, lr=card["lr"]), tokenizer=tok, locality=locality)
    return editor, model, tok, card


def editor_for(model_name: str, alg: str, seed: int = 0, task: str | None = None, *, steps: int | None = None,
               n_val: int = 48, world_seed: int | None = None, variant: str = "mend", progress: bool = False,
               train_overrides: dict | None = None, data=None, net: dict | None = None):
    """(editor, model, tokenizer, card) for any alg as the comparison runs it: trained editors with the profile's
    TrainConfig (``steps`` overriding its length) plus the editor's ``train_overrides`` and then ``train_overrides``
    (``TrainConfig`` fields, e.g. ``{"batch_edits": 5}``), FT and FT+KL with their lr swept on ``n_val``
    validation requests (they train nothing: ``train_overrides`` is ignored). ``variant``: a MEND ablation
    (``NetConfig``), ``net``: ``NetConfig`` fields on top of it (e.g. ``{"rank": 128}``; MEND only); ``data``: files
    to train on instead of the world (:class:`mendlab.filetasks.DataFiles`).
    Cached like :func:`train_editor`."""
    cls = editor_class(alg)
    if not cls.trainable:
        return ft_editor(model_name, alg, seed, task, n_val=n_val, progress=progress, world_seed=world_seed,
                         data=data)
    overrides = {**cls.train_overrides(task), **({"steps": steps} if steps else {}), **(train_overrides or {})}
    cfg = TrainConfig.for_profile(seed=seed, **overrides)
    return train_editor(model_name, alg, variant, seed=seed, task=task, train_config=cfg, progress=progress,
                        world_seed=world_seed, data=data, net=net)


# -- FT's learning rate, chosen on validation edits ------------------------------------------------------------
def sweep_lr(model: torch.nn.Module, tokenizer, examples, panel: list[tuple[str, str]],
             lrs: Sequence[float] = (1e-5, 1e-4, 1e-3, 1e-2), locality: Sequence[tuple[str, str]] | None = None,
             config: FTConfig | None = None, progress: bool = False):
    """One row per lr: ``lr``, ``editor`` and :func:`mendlab.metrics.evaluate`'s results for FT (FT+KL when
    ``config.locality``, which needs ``locality`` training pairs) on ``examples``. Pass *validation* edits, so the
    lr is not chosen on the test set; then :func:`best_lr`."""
    import pandas as pd
    from tqdm.auto import tqdm

    if not lrs:
        raise ValueError("lrs is empty")
    if not examples:
        raise ValueError("sweep_lr needs at least one (validation) edit example")
    config = config or FTConfig()
    rows = []
    for lr in tqdm(list(lrs), desc="sweep_lr", disable=not progress):
        kind = FTKL if config.locality else FT
        editor = kind.for_model(model, replace(config, lr=float(lr)), tokenizer=tokenizer, locality=locality)
        rows.append({"lr": float(lr), "editor": editor.alg,
                     **metrics.evaluate(editor, model, tokenizer, examples, panel, progress=False)})
    return pd.DataFrame(rows)


def best_lr(frame, key: str = "es_rephrase") -> float:
    """The lr of :func:`sweep_lr`'s ``frame`` with the highest ``frame[key]`` − drawdown, where the drawdown is
    ``acc_dd`` when measured (QA, claims) and ``ppl_dd`` otherwise (language modelling; absolute perplexity).
    Ties go to the smaller lr. The default key is edit success on the rephrasings: FT runs until x_e itself is
    right, so ``es_edit`` is ~1 at every lr and would only reward the smallest drawdown."""
    if key not in frame:
        raise KeyError(f"frame has no column {key!r}; columns: {list(frame.columns)}")
    dd = frame["acc_dd"] if "acc_dd" in frame else None
    if dd is None or dd.isna().all():
        if "ppl_dd" not in frame or frame["ppl_dd"].isna().all():
            raise ValueError("frame has neither acc_dd nor ppl_dd values; is it sweep_lr's output?")
        dd = frame["ppl_dd"]
    score = frame[key].astype(float) - dd.astype(float)
    if score.isna().all():
        raise ValueError(f"no lr has a finite {key} − drawdown score")
    order = frame["lr"].astype(float).sort_values(kind="stable").index
    return float(frame.loc[score.loc[order].idxmax(), "lr"])
