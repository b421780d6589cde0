"""Algorithm 1 (paper §3) for any trainable editor, on CPU or CUDA.

Each micro-step samples ``edits_per_step`` training requests; every request is edited *on its own* (in one
batched pass, :class:`mendlab.edit.EditSet`) and the editor is trained on

    L = c_edit · NLL(y_e | x'_e; W̃)  +  c_loc · KL(p_W(·|x_loc) ‖ p_W̃(·|x_loc))

with one Adam over two parameter groups (networks at ``lr``, step sizes α at ``lr_lr``), gradient
accumulation, global-norm clipping, non-finite steps skipped and counted, validation on a fixed set with early
stopping, the best editor saved, and resume from the last checkpoint after an interruption.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from mendlab import checkpoint, losses
from mendlab.data import Collator, EditExample
from mendlab.edit import AGGREGATIONS, EditSet, Factors
from mendlab.interrupts import DeferredSignals, TrainingInterrupted
from mendlab.sampling import target_pool, vary


class NonFiniteTrainingError(RuntimeError):
    """Too many consecutive training steps produced NaN or Inf."""


@dataclass(frozen=True)
class TrainConfig:
    """Editor training settings. Steps count optimiser steps (each ``accumulate`` micro-steps of
    ``edits_per_step`` requests); the official code's batch is 10 edits by accumulation at lr 1e-6.

    ``mix_phrasings``: each time a request is drawn, x_e is any of its trained phrasings and x'_e another (the
    official code always edits the same x_e). ``resample_locality``: x_loc is a true fact of another random
    training request each time (as the official sampler draws it), not the request's fixed locality pair.
    ``resample_target``: a QA request's target y_e is drawn afresh each time from the objects of its relation
    seen in the training requests (never its true answer); MEND draws one of a few ``alternatives``.
    ``locality_same_relation``: the probability that a resampled x_loc is a fact of the edit's *own* relation
    about another subject (0: any training request, as the official sampler draws it).
    All of these only affect training; validation uses the requests as given.
    ``batch_edits`` = k > 1: each request is scored under its group of k's edits combined into one by
    ``EditSet.aggregate(aggregate)`` (paper Table 5's "trained with k simultaneous edits"; validation too).
    """

    steps: int = 2000
    edits_per_step: int = 10
    accumulate: int = 1
    lr: float = 1e-4
    lr_lr: float = 1e-4
    c_edit: float = 0.1
    c_loc: float = 1.0
    grad_clip: float = 100.0
    val_every: int = 100
    val_size: int = 100
    patience: int = 1000
    time_limit: float | None = None
    max_nonfinite: int = 20
    seed: int = 0
    device: str = "cpu"
    dtype: str | None = None  # "bf16": autocast the base model's forward passes
    max_length: int = 128
    mix_phrasings: bool = True
    resample_locality: bool = True
    resample_target: bool = False
    locality_same_relation: float = 0.0
    schedule: str = "constant"  # or "cosine": both learning rates decay to 0 at ``steps`` (the official: constant)
    batch_edits: int = 1  # k requests per edit in training (k > 1: aggregated by ``aggregate``, see above)
    aggregate: str = "sum"  # how a group's k edits become one: one of mendlab.edit.AGGREGATIONS

    @classmethod
    def for_profile(cls, name: str | None = None, **overrides) -> TrainConfig:
        """The profile's training (``config.SETTINGS``: ``ci`` sized for a 2-core CPU in minutes, ``full`` long
        training for a GPU) with the tuned settings below and ``overrides``."""
        from mendlab.config import settings

        # departures from the paper (lr 1e-6 over ~10^5 steps, c_edit 0.1, fixed targets, constant lr): a CPU budget
        # of ~2000 steps needs a larger lr, and a short run weights the edit term more (c_edit 0.2); a tiny world has
        # ~1k QA requests, so a fixed target each is memorised (resample_target draws a fresh one); the cosine
        # schedule lets a short run settle at its end
        tuned = dict(lr=3e-5, c_edit=0.2, resample_target=True, schedule="cosine")
        return replace(cls(**settings(name).train, **tuned), **overrides)


@dataclass
class TrainResult:
    editor: torch.nn.Module
    history: list[dict] = field(default_factory=list)
    best_val: float = math.inf
    best_step: int = 0
    steps: int = 0
    seconds: float = 0.0
    skipped: int = 0
    stopped: str = ""
    best_state: dict | None = None

    def frame(self):
        """The history as a pandas DataFrame (one row per logged step or validation)."""
        import pandas as pd

        return pd.DataFrame(self.history)


def _autocast(cfg: TrainConfig):
    device_type = "cuda" if str(cfg.device).startswith("cuda") else "cpu"
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=cfg.dtype == "bf16")


def edit_step(editor, model, batch, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """Losses of one micro-batch, in the official ``trainer.py`` order: pre-edit logits on x_loc, the edits,
    post-edit NLL on x'_e and KL on x_loc. Each request is edited alone and scored under its own edit or, with
    ``cfg.batch_edits`` = k > 1, under the aggregated edit of its group of k (rows in batch order; a partial last
    validation batch ends in a smaller group). Returns ``loss``, ``l_edit``, ``l_loc``, ``es``, means over the
    requests; the editor's ``aux_loss(model, batch, pre_loc_logits)`` is added to ``loss``."""
    kind = editor.kind
    with torch.no_grad(), _autocast(cfg):
        pre = losses.forward(model, batch.loc)
    with _autocast(cfg):
        edits = editor.edit_many(model, batch.edit_inner)
        if cfg.batch_edits == 1:
            post_outer, post_loc = edits.forward_many(model, [batch.edit_outer, batch.loc])
        else:
            post_outer, post_loc = _grouped(edits, model, [batch.edit_outer, batch.loc], cfg)
    labels = batch.edit_outer["labels"]
    l_edit = losses.nll_per_example(kind, post_outer, labels).mean()
    l_loc = losses.kl_loc(kind, pre, post_loc, batch.loc)
    es = losses.correct(kind, post_outer.detach(), labels).float().mean()
    loss = cfg.c_edit * l_edit + cfg.c_loc * l_loc
    with _autocast(cfg):  # e.g. ENN's distillation term on its own trained copy of the base weights
        loss = loss + editor.aux_loss(model, batch, pre)
    return {"loss": loss, "l_edit": l_edit, "l_loc": l_loc, "es": es}


def check_batching(cfg: TrainConfig) -> None:
    """A clear ``ValueError`` unless ``batch_edits`` ≥ 1 divides ``edits_per_step`` and ``aggregate`` is known."""
    if not (isinstance(cfg.batch_edits, int) and cfg.batch_edits >= 1) or cfg.edits_per_step % cfg.batch_edits:
        raise ValueError(f"batch_edits ({cfg.batch_edits!r}) must be a positive integer that divides edits_per_step "
                         f"({cfg.edits_per_step}): each micro-step's requests are edited in groups of batch_edits")
    if cfg.aggregate not in AGGREGATIONS:
        raise ValueError(f"unknown aggregate {cfg.aggregate!r}; choose one of {AGGREGATIONS}")


def _grouped(edits: EditSet, model, encs: list[dict], cfg: TrainConfig) -> list[torch.Tensor]:
    """The logits of each of ``encs`` (one row per request), row b under the edit of b's group: requests
    ``lo`` … ``lo + k − 1`` (k = ``cfg.batch_edits``), their edits aggregated by ``cfg.aggregate``."""
    check_batching(cfg)
    outs: list[list[torch.Tensor]] = [[] for _ in encs]
    for lo in range(0, len(edits), cfg.batch_edits):
        hi = min(lo + cfg.batch_edits, len(edits))  # the group's edits, renumbered from 0 (graph kept)
        keep = {n: (o >= lo) & (o < hi) for n, o in edits.owner.items()}
        kept = {n: (o >= lo) & (o < hi) for n, (_, o) in edits.keys.items()}
        group = EditSet({n: Factors(f.delta[keep[n]], f.u[keep[n]], f.conv1d) for n, f in edits.factors.items()},
                        {n: o[keep[n]] - lo for n, o in edits.owner.items()}, hi - lo, dict(edits.meta),
                        dict(edits.shared), {n: (k[kept[n]], o[kept[n]] - lo) for n, (k, o) in edits.keys.items()})
        edit = group.aggregate(cfg.aggregate)
        for out, enc in zip(outs, encs, strict=True):
            out.append(edit.forward(model, {key: v[lo:hi] for key, v in enc.items()}))
    return [torch.cat(out) for out in outs]


def validate(editor, model, batches: list, cfg: TrainConfig) -> dict[str, float]:
    """Mean loss terms and edit success over fixed validation batches, editor in eval mode (normaliser frozen)."""
    was = editor.training
    editor.eval()
    sums: dict[str, float] = {}
    for batch in batches:
        with torch.no_grad():
            out = edit_step(editor, model, batch, cfg)
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(v) / len(batches)
    editor.train(was)
    return sums


def _batches(collator: Collator, examples: list[EditExample], size: int, seed: int, device) -> list:
    rng = random.Random(seed)
    return [collator(examples[i:i + size], rng).to(device) for i in range(0, len(examples), size)]


def optimizer(editor, cfg: TrainConfig) -> torch.optim.Adam:
    """One Adam over the editor's two parameter groups: the networks at ``cfg.lr``, the step sizes at ``cfg.lr_lr``."""
    # the default (foreach) Adam, not fused=True: the fused kernel is cheaper per step on a CPU, but the editors it
    # trains reach a worse validation loss
    return torch.optim.Adam(editor.param_groups(cfg.lr, cfg.lr_lr))


def train(editor, model, tokenizer, train_set: list[EditExample], val_set: list[EditExample],
          config: TrainConfig | None = None, out: str | Path | None = None, *, resume: bool = True,
          progress: bool = True, callback=None) -> TrainResult:
    """Train ``editor`` for ``model`` (which stays frozen) and return the best editor by validation loss.

    ``out``: folder for ``best/`` (the best editor), ``checkpoint/`` (resume state, :mod:`mendlab.checkpoint`,
    at every validation) and ``history.json``. With ``resume`` and a checkpoint, training continues from it.
    ``callback(step, record)`` is called after every optimiser step.
    """
    cfg = config or TrainConfig.for_profile()
    if any(e.locality is None for e in train_set[:1] + val_set[:1]):
        raise ValueError("editor training needs a locality example on every request (EditExample.locality)")
    if not 0 <= cfg.locality_same_relation <= 1:
        raise ValueError(f"locality_same_relation is a probability, got {cfg.locality_same_relation}")
    if cfg.schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {cfg.schedule!r}")
    check_batching(cfg)
    run = _Run(editor, model, tokenizer, train_set, val_set, cfg, out)
    if resume and run.ckpt is not None and (run.ckpt.exists() or run.legacy.exists()):
        run.resume()
    return run.loop(progress, callback)


class _Run:
    """One training run's state: the data order, the optimiser, the counters, the best editor so far."""

    def __init__(self, editor, model, tokenizer, train_set, val_set, cfg: TrainConfig, out):
        torch.manual_seed(cfg.seed)
        self.editor, self.model, self.train_set, self.cfg = editor, model, train_set, cfg
        self.device = torch.device(cfg.device)
        model.to(self.device).eval()
        model.requires_grad_(False)
        editor.to(self.device).train()
        self.collator = Collator.for_model(model, tokenizer, max_length=cfg.max_length)
        self.opt = optimizer(editor, cfg)
        self.base_lrs = [g["lr"] for g in self.opt.param_groups]
        self.params = [p for g in self.opt.param_groups for p in g["params"]]
        self.val_batches = _batches(self.collator, val_set[:cfg.val_size], cfg.edits_per_step, cfg.seed, self.device)
        self.rng = random.Random(cfg.seed)
        self.targets = target_pool(train_set) if cfg.resample_target else None
        self.by_relation: dict[str, list[EditExample]] = {}
        if cfg.locality_same_relation > 0:
            for e in train_set:
                self.by_relation.setdefault(e.relation, []).append(e)
        self.order: list[int] = []
        self.result = TrainResult(editor)
        self.state = {"step": 0, "stale": 0, "nonfinite_run": 0, "elapsed": 0.0}
        self.out = Path(out) if out is not None else None
        self.ckpt = self.out / "checkpoint" if self.out is not None else None  # mendlab.checkpoint's folder
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            self.legacy = self.out / "checkpoint.pt"  # written by older mendlab versions (pickle, read weights-only)
            checkpoint.recover(self.ckpt), checkpoint.recover(self.out / "best")  # after a crash mid-write

    def resume(self) -> None:
        new = self.ckpt.exists()
        read = checkpoint.load if new else checkpoint.load_legacy
        rng, saved = read(self.ckpt if new else self.legacy, self.editor, self.opt, self.device)
        self.rng.setstate(rng)
        self.order, self.state = saved["order"], saved["state"]
        r = self.result
        r.history, r.best_val, r.best_step, r.skipped = (saved["history"], saved["best_val"], saved["best_step"],
                                                         saved["skipped"])

    def sample(self) -> list[EditExample]:
        picked = []
        while len(picked) < self.cfg.edits_per_step:
            if not self.order:
                self.order = list(range(len(self.train_set)))
                self.rng.shuffle(self.order)
            picked.append(vary(self.train_set[self.order.pop()], self.train_set, self.rng, self.cfg, self.targets,
                                self.by_relation))
        return picked

    def step(self) -> dict:
        """One optimiser step (``accumulate`` micro-steps); a step with non-finite values is skipped."""
        cfg, state = self.cfg, self.state
        self.opt.zero_grad(set_to_none=True)
        # the normaliser's statistics change in the forward pass: kept, so that a skipped step leaves no trace
        buffers = [(b, b.detach().clone()) for b in self.editor.buffers()]
        logs = {"loss": 0.0, "l_edit": 0.0, "l_loc": 0.0, "es": 0.0}
        for _ in range(cfg.accumulate):
            batch = self.collator(self.sample(), self.rng).to(self.device)
            out = edit_step(self.editor, self.model, batch, cfg)
            (out["loss"] / cfg.accumulate).backward()
            for k in logs:
                logs[k] += float(out[k].detach()) / cfg.accumulate
        if math.isfinite(logs["loss"]) and all(p.grad is None or torch.isfinite(p.grad).all() for p in self.params):
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
            if cfg.schedule == "cosine":  # stateless in the step, so a resumed run continues the same curve
                for g, lr in zip(self.opt.param_groups, self.base_lrs, strict=True):
                    g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * state["step"] / cfg.steps))
            self.opt.step()
            state["nonfinite_run"] = 0
        else:
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
            self.result.skipped += 1
            state["nonfinite_run"] += 1
            if state["nonfinite_run"] >= cfg.max_nonfinite:
                raise NonFiniteTrainingError(
                    f"{state['nonfinite_run']} consecutive steps had non-finite losses or gradients (last loss "
                    f"{logs['loss']}); lower lr (now {cfg.lr}) or lr_lr (now {cfg.lr_lr}), or check the data")
        state["step"] += 1
        return {"step": state["step"], **{k: round(v, 6) for k, v in logs.items()},
                "lr": self.opt.param_groups[0]["lr"]}

    def validate(self, record: dict) -> dict:
        """Validation into ``record``; the best editor so far is kept (saved under ``out/best``)."""
        val = validate(self.editor, self.model, self.val_batches, self.cfg)
        record.update({f"val_{k}": round(v, 6) for k, v in val.items()})
        r = self.result
        if val["loss"] < r.best_val:
            r.best_val, r.best_step, self.state["stale"] = val["loss"], record["step"], 0
            if self.out is not None:  # written beside, then swapped in: a crash never leaves half an editor
                self.editor.save_pretrained(self.out / "best.tmp")
                checkpoint.replace_folder(self.out / "best.tmp", self.out / "best")
            else:
                r.best_state = {k: v.detach().clone() for k, v in self.editor.state_dict().items()}
        else:
            self.state["stale"] += self.cfg.val_every
        return val

    def checkpoint(self) -> None:
        r = self.result
        checkpoint.save(self.ckpt, self.editor, self.opt, self.rng.getstate(), {
            "order": self.order, "state": self.state, "history": r.history, "best_val": r.best_val,
            "best_step": r.best_step, "skipped": r.skipped, "config": asdict(self.cfg)})
        self.legacy.unlink(missing_ok=True)

    def stop_reason(self) -> str | None:
        if self.state["stale"] >= self.cfg.patience:
            return f"early stop: no validation improvement for {self.state['stale']} steps"
        if self.cfg.time_limit is not None and self.state["elapsed"] >= self.cfg.time_limit:
            return f"time limit {self.cfg.time_limit:.0f} s"
        return None

    def loop(self, progress: bool, callback) -> TrainResult:
        from tqdm.auto import tqdm

        bar = tqdm(total=self.cfg.steps, initial=self.state["step"], desc=f"train {self.editor.alg}",
                   disable=not progress, mininterval=1.0)
        t0 = time.perf_counter() - self.state["elapsed"]
        with DeferredSignals() as signals:  # Ctrl-C / SIGTERM: end the step, save, stop (a resumable run)
            while self.state["step"] < self.cfg.steps and not self.result.stopped:
                self.one_step(bar, callback, t0)
                if signals.received:
                    bar.close()
                    self.interrupted(signals.received)
        bar.close()
        return self.finish()

    def one_step(self, bar, callback, t0: float) -> None:
        cfg, state, result = self.cfg, self.state, self.result
        record = self.step()
        bar.update(1)
        if record["step"] % cfg.val_every == 0 or record["step"] == cfg.steps:
            val = self.validate(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", val=f"{val['loss']:.3f}", val_es=f"{val['es']:.2f}")
        result.history.append(record)
        state["elapsed"] = time.perf_counter() - t0
        if "val_loss" in record and self.ckpt is not None:
            self.checkpoint()
        if callback is not None:
            callback(record["step"], record)
        result.stopped = self.stop_reason() or ""

    def interrupted(self, name: str) -> None:
        """After SIGINT/SIGTERM: a checkpoint of the finished steps (when there is ``out``), then stop."""
        where = "no checkpoint (train without out=...)"
        if self.ckpt is not None:
            self.checkpoint()
            where = f"checkpoint at step {self.state['step']} in {self.ckpt}; run the same command again to resume"
        raise TrainingInterrupted(f"training stopped by {name}: {where}")

    def finish(self) -> TrainResult:
        result, out = self.result, self.out
        result.stopped = result.stopped or "max steps"
        result.steps, result.seconds = self.state["step"], self.state["elapsed"]
        if out is not None and (out / "best").exists():
            self.editor.load_state_dict(type(self.editor).from_pretrained(out / "best").state_dict())
            (out / "history.json").write_text(json.dumps({
                "history": result.history, "best_val": result.best_val, "best_step": result.best_step,
                "steps": result.steps, "seconds": result.seconds, "skipped": result.skipped,
                "stopped": result.stopped, "config": asdict(self.cfg)}))
        elif result.best_state is not None:
            self.editor.load_state_dict(result.best_state)
        self.editor.eval()
        return result
