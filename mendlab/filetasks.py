"""Your own data and your own model: a :class:`~mendlab.tasks.Task` from MEND's released data files, and the
checks that make ``--model`` a zoo name, a local Hugging Face folder or a hub name with clear errors.

Layouts (the readers in :mod:`mendlab.data` document each; ``mendlab world --out DIR`` writes all of them):

- ``zsre``: JSON-lines records ``input``, ``alternatives``, ``filtered_rephrases``, ``output`` (zsRE as MEND
  releases it); a QA task for decoders and encoder-decoders. Locality: ``--loc-file`` with Natural Questions
  (``{"questions": [...], "answers": [...]}``, as the paper pairs zsRE with NQ), else each record's
  ``loc``/``loc_ans``, else another record's gold answer;
- ``fever``: the same JSON-lines records with labels ``SUPPORTS``/``REFUTES``; a claim task for classifiers.
  Locality: other claims with their gold label (the paper's pairing), so no ``--loc-file``;
- ``wikitext``: MEND's ``self_sample`` JSON (``n_tokens``, ``completions``) for the edits, and ``--loc-file``
  with raw Wikitext passages, one per line (required): generation for decoders.

The files enter an editor's cache key by their *content* (:meth:`DataFiles.key`), so a copy under another name
reuses the editor and an edited file trains afresh.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from mendlab import data
from mendlab.tasks import Task

TASK_OF = {"zsre": "qa", "fever": "claim", "wikitext": "gen"}
KINDS_OF = {"zsre": ("decoder", "seq2seq"), "fever": ("classifier",), "wikitext": ("decoder", "seq2seq")}
ROLES = ("train", "val", "test", "loc")
OPTION = {"train": "--train-file", "val": "--val-file", "test": "--test-file", "loc": "--loc-file"}


@dataclass(frozen=True)
class DataFiles:
    """Which released layout (``data``: ``zsre``, ``fever`` or ``wikitext``) and the files of each split plus
    the locality source; a split left out is empty in the task (training needs train and val, evaluation the
    split it scores)."""

    data: str
    train: str | None = None
    val: str | None = None
    test: str | None = None
    loc: str | None = None

    def __post_init__(self):
        if self.data not in TASK_OF:
            raise ValueError(f"--data must be one of {sorted(TASK_OF)}, got {self.data!r}")
        if not any(getattr(self, r) for r in ("train", "val", "test")):
            raise ValueError(f"--data {self.data} needs its files: --train-file and --val-file to train, "
                             "--test-file (or --val-file) to evaluate")
        for role, path in self.paths().items():
            if not path.is_file():
                raise ValueError(f"{OPTION[role]} {path}: no such file")
        if self.data == "fever" and self.loc:
            raise ValueError("--data fever takes no --loc-file: a claim's unrelated facts are other claims with "
                             "their gold label, as in the paper")
        if self.data == "wikitext" and not self.loc:
            raise ValueError("--data wikitext needs --loc-file: raw Wikitext passages, one per line (the text "
                             "an edit must not change)")

    @property
    def task_name(self) -> str:
        return TASK_OF[self.data]

    def paths(self) -> dict[str, Path]:
        return {r: Path(getattr(self, r)).expanduser() for r in ROLES if getattr(self, r)}

    def key(self) -> dict:
        """What enters a cache key: the layout and the content hash (not the name) of each file training reads;
        the test file does not change a trained editor, so ``eval --test-file`` finds the editor ``train`` made."""
        return {"data": self.data, "files": {r: hashlib.sha256(p.read_bytes()).hexdigest()[:16]
                                             for r, p in self.paths().items() if r != "test"}}

    def describe(self) -> dict:
        """For a training card: the layout, the paths and the content key."""
        return {"data": self.data, **{r: str(p) for r, p in self.paths().items()}, "key": self.key()}

    @classmethod
    def from_card(cls, card: dict) -> DataFiles:
        return cls(card["data"], *(card.get(r) for r in ROLES))

    def require(self, *splits: str, command: str = "this command") -> None:
        missing = [OPTION[s] for s in splits if not getattr(self, s)]
        if missing:
            raise ValueError(f"{command} on --data {self.data} needs {' and '.join(missing)}")

    def task(self, kind: str, tokenizer=None, panel_size: int = 64, seed: int = 0) -> Task:
        """The task of these files for a model of ``kind``; see :func:`from_files`."""
        return from_files(self, kind, tokenizer, panel_size, seed)


def _split(files: DataFiles, split: str, tokenizer) -> list[data.EditExample]:
    path = files.paths().get(split)
    if path is None:
        return []
    if files.data == "zsre":
        edits = data.read_zsre(path)
    elif files.data == "fever":
        edits = data.read_fever(path)
    else:
        edits = data.read_self_sample(path, tokenizer)
    if not edits:
        raise ValueError(f"{path}: no usable {files.data} records (a record needs an alternative answer and a "
                         "rephrase other than its input)" if files.data != "wikitext" else f"{path}: no completions")
    return edits


def _with_locality(edits: list[data.EditExample], pairs: list[tuple[str, str]], offset: int):
    """Each edit gets the next pair of ``pairs`` (cycling from ``offset``) as its unrelated fact."""
    from dataclasses import replace

    return [replace(e, locality=pairs[(offset + i) % len(pairs)]) for i, e in enumerate(edits)]


def from_files(files: DataFiles, kind: str, tokenizer=None, panel_size: int = 64, seed: int = 0) -> Task:
    """The editing task of ``files`` for a model ``kind`` (``decoder``, ``seq2seq``, ``classifier``), as
    :func:`mendlab.tasks.from_world` builds one from the world: the same splits, locality pairs and ``panel``
    (``panel_size`` unrelated pairs drawn with ``seed`` from the locality source: the ``--loc-file``, else the
    locality pairs of the train split, else of the first split given). ``tokenizer``: the model's, which cuts
    Wikitext completions into prompt and ``n_tokens`` target tokens."""
    if kind not in KINDS_OF[files.data]:
        raise ValueError(f"--data {files.data} edits a {' or '.join(KINDS_OF[files.data])} model; this one is a "
                         f"{kind} (zsre and wikitext: decoders and encoder-decoders; fever: classifiers)")
    if files.data == "wikitext" and tokenizer is None:
        raise ValueError("Wikitext completions are cut into prompt and target by the model's tokenizer: pass it")
    splits = {s: _split(files, s, tokenizer) for s in ("train", "val", "test")}
    pool, loc = None, files.paths().get("loc")
    if loc is not None and files.data == "zsre":
        pool = data.read_nq(loc)
    elif loc is not None:
        pool = [(p, "") for p in data.read_wikitext(loc)]
    if pool is not None:
        if not pool:
            raise ValueError(f"--loc-file {files.loc}: no questions or passages in it")
        offsets = {"train": 0, "val": len(splits["train"]), "test": len(splits["train"]) + len(splits["val"])}
        splits = {s: _with_locality(e, pool, offsets[s]) for s, e in splits.items()}
    else:
        first = next(s for s in ("train", "val", "test") if splits[s])
        pool = [e.locality for e in splits[first] if e.locality is not None]
    panel = random.Random(seed).sample(pool, min(panel_size, len(pool)))
    return Task(files.task_name, splits["train"], splits["val"], splits["test"], panel)


# -- models -------------------------------------------------------------------------------------------------------
def check_model(name: str, files: DataFiles | None = None) -> None:
    """A clear error, before anything loads, for a ``--model`` that cannot be used here: a folder that is not a
    Hugging Face model, a hub name without a network, a model_type with no family, or a model with no world of
    its own (a folder not built by the zoo) and no ``--data``."""
    from transformers import AutoConfig

    from mendlab import zoo
    from mendlab.families import get_family

    if zoo.known(name):
        return
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(f"--model {name}: a folder without config.json is not a Hugging Face model (write one "
                             "with model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR))")
    elif name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ValueError(f"--model {name}: no such folder")
    try:
        config = AutoConfig.from_pretrained(str(path) if path.exists() else name)
    except OSError as err:
        raise ValueError(
            f"--model {name!r} is not a zoo model ({', '.join(zoo.names())}) or a local folder, and as a Hugging "
            f"Face hub name it needs internet, and it could not be loaded here ({str(err).splitlines()[0][:160]}). "
            "Where there is a network, save it with from_pretrained(NAME).save_pretrained(DIR) (its tokenizer "
            "too) and pass --model DIR") from None
    get_family(config)  # UnsupportedModelError (a ValueError) names the registered model types
    if files is None and not (path / "mendlab_card.json").is_file():
        raise ValueError(f"--model {name} was not built by the zoo, so it has no synthetic world to edit: give "
                         "your data with --data zsre|fever|wikitext and its files (see `mendlab train --help`)")


def evaluate(editor, model, tok, files: DataFiles, split: str = "test", n: int | None = None, n_edits: int = 1,
             progress: bool = True) -> dict:
    """:func:`mendlab.metrics.evaluate` of ``editor`` on the ``split`` file of ``files`` (its first ``n``
    requests), against the files' panel: what ``experiments.evaluate_editor`` does on the world."""
    from mendlab import metrics
    from mendlab.families import get_family

    files.require(split, command="evaluation")
    t = files.task(get_family(model).kind, tok)
    examples = t.split(split)[:n] if n else t.split(split)
    return metrics.evaluate(editor, model, tok, examples, t.panel, n_edits=n_edits, progress=progress)
