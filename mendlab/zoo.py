"""Small base models of every family, trained from scratch on the world and cached; ``load`` for any model.

No checkpoint can be downloaded here, so mendlab trains its own: a byte-level BPE tokenizer on the world's
text (every world word becomes one token), then ``tiny-gpt2``, ``tiny-gptj``, ``tiny-gptneo`` (decoders: QA
as text plus biographies for generation), ``tiny-bart``, ``tiny-t5`` (seq2seq QA) and ``tiny-bert`` (a claim
classifier). Held-out templates are never trained, so ``acc_heldout_template`` measures whether the model
learned facts rather than strings. Built models are saved with ``save_pretrained`` under
``$MENDLAB_CACHE/models/<name>-<hash>`` and loaded back through ``from_pretrained``, like any checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from mendlab import config as cfg
from mendlab.data import Collator
from mendlab.families import get_family
from mendlab.tokenizer import BOS, EOS, PAD, build_tokenizer
from mendlab.world import N_TEMPLATES, World, WorldConfig


@dataclass(frozen=True)
class ZooSpec:
    """How to build one zoo model: its HF config and how long to train it on which world."""

    name: str
    model_type: str
    config: dict
    steps: int
    lr: float = 3e-3
    batch_size: int = 128
    warmup: float = 0.05  # fraction of steps with a linear warm-up, then cosine decay
    passage_every: int = 0  # decoders: every k-th batch is biography text (language modelling); 0 = never
    cloze_steps: int = 0  # classifier: first learn the facts by filling in masked objects, then the claims
    world: WorldConfig = field(default_factory=WorldConfig)
    seed: int = 0
    vocab_size: int = 8192  # an upper bound: BPE stops once every world word is one token


_CI = (
    ZooSpec("tiny-gpt2", "gpt2", dict(n_layer=3, n_embd=128, n_head=4, n_positions=128), steps=900, lr=1.5e-3,
            passage_every=5),
    ZooSpec("tiny-gptj", "gptj", dict(n_layer=3, n_embd=128, n_head=4, rotary_dim=16, n_positions=128),
            steps=750, passage_every=5),
    ZooSpec("tiny-gptneo", "gpt_neo", dict(num_layers=3, hidden_size=128, num_heads=4, window_size=64,
                                           attention_types=[[["global", "local"], 1], [["global"], 1]],
                                           max_position_embeddings=128),
            steps=900, lr=1.5e-3, passage_every=5),  # GPT-Neo does not scale attention by 1/sqrt(d)
    # BART is post-LN: it needs a long warm-up, and ReLU with a narrow MLP learned the world fastest here
    ZooSpec("tiny-bart", "bart", dict(encoder_layers=2, decoder_layers=2, d_model=128, encoder_ffn_dim=256,
                                      decoder_ffn_dim=256, encoder_attention_heads=4, decoder_attention_heads=4,
                                      activation_function="relu", max_position_embeddings=128),
            steps=1000, warmup=0.3),
    ZooSpec("tiny-t5", "t5", dict(num_layers=2, num_decoder_layers=2, d_model=128, d_ff=512, num_heads=4, d_kv=32,
                                  feed_forward_proj="gated-gelu"), steps=600),
    # a claim gives one bit per example: BERT learns a smaller world, after a fill-in-the-object warm-up
    ZooSpec("tiny-bert", "bert", dict(num_hidden_layers=3, hidden_size=128, num_attention_heads=4,
                                      intermediate_size=512, max_position_embeddings=128, num_labels=1),
            steps=1000, cloze_steps=250, lr=1e-3, warmup=0.1, world=WorldConfig(n_subjects=40)),
)


# T5 at lr 3e-3 learned nothing on the 4x world (acc 0.09 after 2400 steps); lr 1e-3 with a 10 % warm-up learns it
_FULL_OVERRIDES = {"tiny-t5": dict(lr=1e-3, warmup=0.1)}


def _scaled(spec: ZooSpec, k: int) -> ZooSpec:
    """A world ``k`` times larger and ``k`` times the training (``full``: 4, a GPU run or a long CPU one)."""
    if k == 1:
        return spec
    world = replace(spec.world, n_subjects=spec.world.n_subjects * k)
    return replace(spec, steps=spec.steps * k, cloze_steps=spec.cloze_steps * k, world=world,
                   **_FULL_OVERRIDES.get(spec.name, {}))


ZOO: dict[str, dict[str, ZooSpec]] = {p: {s.name: _scaled(s, cfg.SETTINGS[p].zoo_scale) for s in _CI}
                                      for p in cfg.PROFILES}


# Named variants: zoo models the course never builds on its own (not in :func:`names`), for experiments that ask
# how a result depends on the model's size: (base, HF config entries, ZooSpec fields), on the base's world.
# tiny-bart-wide has twice tiny-bart's d_model and four times its MLP (BART-base's 1:4 ratio, 768 / 3072). At
# tiny-bart's lr of 3e-3 this post-LN model does not learn the world (train accuracy 0.18); at 1e-3 it does (1.00).
VARIANTS: dict[str, tuple[str, dict, dict]] = {
    "tiny-bart-wide": ("tiny-bart", dict(d_model=256, encoder_ffn_dim=1024, decoder_ffn_dim=1024), dict(lr=1e-3)),
}


def names() -> list[str]:
    """The course's zoo (``mendlab zoo build --all``); the named :data:`VARIANTS` are built only when asked for."""
    return list(ZOO["ci"])


def known(name: str) -> bool:
    """Whether ``name`` is a zoo model or a named variant (else it is a local folder or a hub name)."""
    return name in ZOO["ci"] or name in VARIANTS


def spec(name: str, profile: str | None = None, seed: int | None = None) -> ZooSpec:
    if name in VARIANTS:
        base, config, fields = VARIANTS[name]
        return replace(variant(base, profile, seed, config=config, **fields), name=name)
    table = ZOO[profile or cfg.profile()]
    if name not in table:
        raise KeyError(f"{name!r} is not a zoo model; the zoo has {sorted(table)} and the variants {sorted(VARIANTS)}")
    s = table[name]
    return s if seed is None else replace(s, seed=seed, world=replace(s.world, seed=seed))


def variant(name: str, profile: str | None = None, seed: int | None = None, config: dict | None = None,
            **fields) -> ZooSpec:
    """The spec of zoo model ``name`` with some of its settings changed: ``config`` entries update the HF config
    (e.g. ``{"num_hidden_layers": 6}``), ``fields`` replace ``ZooSpec`` fields (``steps``, ``lr``, ...), and a
    ``world_`` prefix reaches the world's (``world_n_subjects=80``). The cache key is the spec, so a variant is
    built into a folder of its own; pass the result to :func:`build`.
    """
    from dataclasses import fields as dc_fields

    from transformers import AutoConfig

    s = spec(name, profile, seed)
    world = {k.removeprefix("world_"): v for k, v in fields.items() if k.startswith("world_")}
    own = {k: v for k, v in fields.items() if not k.startswith("world_")}
    for given, cls in ((own, ZooSpec), (world, WorldConfig)):
        allowed = {f.name for f in dc_fields(cls)} - {"name", "model_type", "config", "world"}
        prefix = "world_" if cls is WorldConfig else ""
        unknown = sorted(prefix + k for k in set(given) - allowed)
        if unknown:
            more = "" if prefix else ", or a world setting as world_FIELD (e.g. world_n_subjects)"
            raise ValueError(f"{unknown} are not settings of a zoo model; choose among "
                             f"{sorted(prefix + a for a in allowed)}{more}")
    if config:
        # from_config would set an unknown key as a plain attribute that no layer reads: refuse it instead
        hf = AutoConfig.for_model(s.model_type)
        unknown = sorted(k for k in config if k not in hf.to_dict() and k not in hf.attribute_map)
        if unknown:
            raise ValueError(f"{unknown} are not fields of a {s.model_type} config")
    return replace(s, **own, config={**s.config, **(config or {})}, world=replace(s.world, **world))


# -- the Hugging Face config ------------------------------------------------------------------------------------
def _hf_config(s: ZooSpec, vocab_size: int):
    from transformers import AutoConfig

    ids = dict(bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    extra: dict = {}
    if s.model_type in ("gpt2", "gptj", "gpt_neo"):
        extra = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0) if s.model_type != "gpt_neo" else dict(
            resid_dropout=0.0, embed_dropout=0.0, attention_dropout=0.0)
    elif s.model_type == "bart":
        extra = dict(decoder_start_token_id=EOS, forced_eos_token_id=EOS, dropout=0.0, attention_dropout=0.0)
    elif s.model_type == "t5":
        extra = dict(decoder_start_token_id=PAD, dropout_rate=0.0)
    elif s.model_type == "bert":
        extra = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return AutoConfig.for_model(s.model_type, vocab_size=vocab_size, **ids, **extra, **s.config)


# -- training -----------------------------------------------------------------------------------------------------
def _batches(items: list, batch_size: int, rng: random.Random):
    while True:
        order = list(items)
        rng.shuffle(order)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield order[i:i + batch_size]


@torch.no_grad()
def answer_accuracy(model, collator: Collator, pairs: list[tuple[str, str]], batch_size: int = 256) -> float:
    """Exact match of every answer token under teacher forcing (= greedy decoding of the answer).

    For a classifier, ``pairs`` hold (claim, "SUPPORTS"/"REFUTES") and accuracy is the logit's sign.
    """
    model.eval()
    hits = 0
    for i in range(0, len(pairs), batch_size):
        enc = collator.encode(pairs[i:i + batch_size])
        labels = enc.pop("labels")
        logits = model(**enc).logits
        if collator.kind == "classifier":
            hits += int(((logits.squeeze(-1) > 0).float() == labels).sum())
            continue
        if collator.kind == "decoder":  # position t predicts token t + 1
            logits, labels = logits[:, :-1], labels[:, 1:]
        mask = labels != -100
        ok = (logits.argmax(-1) == labels) | ~mask
        hits += int(ok.all(-1).sum())
    return hits / len(pairs)


def _loss(model, collator: Collator, enc: dict) -> torch.Tensor:
    labels = enc.pop("labels")
    if collator.kind == "decoder":  # the vocabulary projection only where there is a label: QA trains ~2x faster
        hidden = model.base_model(**enc).last_hidden_state[:, :-1]
        labels = labels[:, 1:]
        keep = labels != -100
        logits = model.get_output_embeddings()(hidden[keep])
        return torch.nn.functional.cross_entropy(logits, labels[keep])
    logits = model(**enc).logits
    if collator.kind == "classifier":
        return torch.nn.functional.binary_cross_entropy_with_logits(logits.squeeze(-1), labels)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


def _eval_sets(world: World, kind: str) -> tuple[list, list]:
    if kind == "classifier":
        lab = lambda rows: [(c, "SUPPORTS" if y else "REFUTES") for c, y in rows]  # noqa: E731
        return lab(world.claims()), lab(world.claims(heldout=True))
    return world.qa_pairs(), world.qa_pairs(heldout=True)


def _cloze_pairs(world: World, tokenizer) -> list[tuple[str, int]]:
    """Statements with the object masked, and the object's token id (every world word is one token)."""
    pairs = []
    for f in world.facts_in():
        (obj,) = tokenizer(" " + f.object, add_special_tokens=False)["input_ids"]
        pairs += [(world.statement(f, t, tokenizer.mask_token), obj) for t in range(N_TEMPLATES - 1)]
    return pairs


def _cloze_loss(model, tokenizer, batch: list[tuple[str, int]]) -> torch.Tensor:
    """Fill-in-the-object loss through the encoder and the tied input embeddings.

    A claim classifier gets one bit per example, too little to learn many facts in CI time; this warm-up
    (as BERT's masked-LM pre-training before fine-tuning) gives it the facts themselves first.
    """
    enc = tokenizer([t for t, _ in batch], padding=True, return_tensors="pt")
    hidden = model.base_model(**enc).last_hidden_state[enc["input_ids"] == tokenizer.mask_token_id]
    logits = hidden @ model.get_input_embeddings().weight.T
    return torch.nn.functional.cross_entropy(logits, torch.tensor([o for _, o in batch]))


def train_model(s: ZooSpec, progress: bool = True):
    """Build tokenizer and model for ``s`` and train it; returns (model, tokenizer, metrics).

    Trains on one CPU thread whatever the caller set: sums split over threads round differently, and the cache
    key is the spec alone, so a model must not depend on who built it (a notebook on two threads, a test worker on
    one). The caller's thread count is restored afterwards.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_model(s, progress)
    finally:
        torch.set_num_threads(threads)


def _train_model(s: ZooSpec, progress: bool):
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    torch.manual_seed(s.seed)
    world = World(s.world)
    family = get_family(s.model_type)
    tok_kind = "seq2seq_t5" if s.model_type == "t5" else family.kind
    tokenizer = build_tokenizer(world, s.vocab_size, tok_kind)
    hf_config = _hf_config(s, len(tokenizer))
    auto = {"decoder": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM,
            "classifier": AutoModelForSequenceClassification}[family.kind]
    model = auto.from_config(hf_config)
    collator = Collator(tokenizer, family.kind,
                        decoder_start_token_id=getattr(hf_config, "decoder_start_token_id", None))

    rng = random.Random(s.seed)
    if family.kind == "classifier":
        train = [(c, "SUPPORTS" if y else "REFUTES") for v in range(8) for c, y in world.claims(variant=v)]
    else:
        train = world.qa_pairs()
    batches = _batches(train, s.batch_size, rng)
    passages = _batches([(p, "") for p in world.passages()], max(8, s.batch_size // 4), rng)
    clozes = _batches(_cloze_pairs(world, tokenizer), s.batch_size, rng) if s.cloze_steps else None
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, round(s.warmup * s.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, i / s.steps))))
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(range(s.steps), desc=f"train {s.name}", disable=not progress, mininterval=1.0)
    for step in bar:
        use_passages = s.passage_every and step % s.passage_every == s.passage_every - 1
        if step < s.cloze_steps:
            loss = _cloze_loss(model, tokenizer, next(clozes))
        else:
            loss = _loss(model, collator, collator.encode(next(passages) if use_passages else next(batches)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    train_seconds = time.perf_counter() - t0
    seen, heldout = _eval_sets(world, family.kind)
    metrics = {"acc_train": answer_accuracy(model, collator, seen),
               "acc_heldout_template": answer_accuracy(model, collator, heldout),
               "train_seconds": round(train_seconds, 1)}
    model.eval()
    return model, tokenizer, metrics


# -- cache and loading --------------------------------------------------------------------------------------------
def card_line(card: dict) -> str:
    """One zoo model's build card in two lines: size, accuracies, build time, and where it is."""
    return (f"{card['name']:12s} params {card['params']:>9,d}  acc_train {card['acc_train']:.3f}  "
            f"acc_heldout_template {card['acc_heldout_template']:.3f}  {card['seconds']:.1f}s"
            f"{' (cached)' if card['cached'] else ''}\n  {card['path']}")


def cache_path(s: ZooSpec) -> Path:
    return cfg.cache_dir() / "models" / f"{s.name}-{cfg.config_hash(s)}"


def build(name: str | ZooSpec, profile: str | None = None, seed: int | None = None, progress: bool = True) -> dict:
    """Build (or find in the cache) a zoo model; returns its card: name, path, params, metrics, seconds, cached.

    ``name`` is a zoo name (its spec comes from the profile) or a ``ZooSpec`` of your own.
    """
    s = name if isinstance(name, ZooSpec) else spec(name, profile, seed)
    path = cache_path(s)
    t0 = time.perf_counter()
    card_file = path / "mendlab_card.json"
    if card_file.exists():
        card = json.loads(card_file.read_text())
        return {**card, "path": str(path), "cached": True, "seconds": round(time.perf_counter() - t0, 2)}
    cfg.writable(path.parent)  # before minutes of training, not after
    model, tokenizer, metrics = train_model(s, progress=progress)
    # a folder of this process's own: two processes building the same model never share a temporary folder
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared like any other
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    card = {"name": s.name, "model_type": s.model_type, "params": sum(p.numel() for p in model.parameters()),
            **metrics, "build_seconds": round(time.perf_counter() - t0, 1), "spec": asdict(s)}
    (tmp / "mendlab_card.json").write_text(json.dumps(card, indent=1))
    try:
        os.rename(tmp, path)  # atomic; fails when a concurrent build renamed its copy first
    except OSError:
        if not (path / "mendlab_card.json").exists():
            raise
        shutil.rmtree(tmp)
    return {**card, "path": str(path), "cached": False, "seconds": card["build_seconds"]}


def load(name_or_path: str, *, profile: str | None = None, seed: int | None = None, device=None,
         dtype=None, progress: bool = True, device_map=None):
    """(model, tokenizer) for a zoo name (built on first use), a local folder or a hub name.

    All three go through ``from_pretrained`` with the Auto class the family registry names; the model is
    returned in eval mode with dropout off. Hub names need a network. ``device_map`` (``"auto"`` or a dict, as
    ``from_pretrained`` takes it; needs ``accelerate``) spreads a large model over several GPUs: MEND then runs
    each shared editor network on the editor's device and moves each layer's rows there and back.
    """
    from transformers import AutoConfig, AutoTokenizer

    path = build(name_or_path, profile, seed, progress)["path"] if known(name_or_path) else name_or_path
    family = get_family(AutoConfig.from_pretrained(path))
    import transformers

    auto = getattr(transformers, family.auto_class)
    kwargs = {} if dtype is None else {"dtype": dtype}
    if device_map is not None:
        kwargs["device_map"] = device_map
    model = auto.from_pretrained(path, **kwargs)
    if device is not None:
        model.to(device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:  # GPT-style checkpoints ship without one
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def world_of(name_or_path: str, profile: str | None = None, seed: int | None = None) -> World:
    """The world a zoo model was trained on."""
    if known(name_or_path):
        return World(spec(name_or_path, profile, seed).world)
    card = json.loads((Path(name_or_path) / "mendlab_card.json").read_text())
    return World(WorldConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in card["spec"]["world"].items()}))
