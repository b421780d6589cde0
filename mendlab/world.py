"""The synthetic knowledge world: invented subjects, relations, facts, paraphrases and edit requests.

Nothing can be downloaded here, so the course edits facts about people who do not exist. The world is a
pure function of :class:`WorldConfig` (seeded, deterministic) and writes the file formats MEND used
(paper §5.1 and Appendix C), so the same readers load MEND's released files and ours:

- zsRE-style QA JSONL (``input``, ``prediction``, ``alternatives``, ``filtered_rephrases``, ``output``);
- FEVER-style claim JSONL (``logit``, ``input``, ``prediction``, ``alternatives``, ``filtered_rephrases``,
  ``output``);
- Wikitext-style generation edits in the ``self_sample`` JSON layout (``n_tokens``, ``original``,
  ``completions``) plus raw passages for perplexity.

Every relation has :data:`N_TEMPLATES` question and statement templates; the last one of each is *held out*:
it never appears in pre-training, so generalisation to new phrasing is measurable. Subjects are split
train/val/test with no subject in two splits. Files carry a few extra fields (``subject``, ``relation``,
``heldout_rephrases``, ``loc``, ``loc_ans``) that MEND's readers would ignore.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

from mendlab.data import EditExample
from mendlab.relations import RELATION_SPECS, Invented

SPLITS = ("train", "val", "test")
N_TEMPLATES = 5  # per relation and kind; the last one is held out of pre-training
PRETOKEN = re.compile(r"\w+|[^\w\s]")  # how ByteLevel BPE splits our plain-ASCII text before merging


@dataclass(frozen=True)
class Relation:
    name: str
    objects: tuple[str, ...]
    questions: tuple[str, ...]  # "{s}" marks the subject; the last is held out
    statements: tuple[str, ...]  # "{s}" and "{o}"; the last is held out


def _names(rng: random.Random, n: int, syllables: tuple[int, int], suffixes: tuple[str, ...] = ("",),
           taken: set[str] | None = None) -> list[str]:
    onsets = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr",
              "tr", "st", "th", "sh", "ch"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ei", "ou"]
    codas = ["", "", "", "n", "r", "l", "s", "th"]
    taken = set() if taken is None else taken
    out: list[str] = []
    while len(out) < n:
        k = rng.randint(*syllables)
        word = "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(k)) + rng.choice(codas)
        word = (word + rng.choice(suffixes)).capitalize()
        if word not in taken and len(word) <= 11:
            taken.add(word)
            out.append(word)
    return out


def _relations(rng: random.Random, taken: set[str]) -> tuple[Relation, ...]:
    """The relations with their invented objects drawn in table order (same seed, same names)."""
    return tuple(Relation(name, tuple(_names(rng, o.n, (2, 2), o.suffixes, taken)) if isinstance(o, Invented) else o,
                          questions, statements) for name, o, questions, statements in RELATION_SPECS)


@dataclass(frozen=True)
class WorldConfig:
    """Size and seed of the world. Same config, same world, byte for byte."""

    seed: int = 0
    n_subjects: int = 200
    n_alternatives: int = 3
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    gen_tokens: int = 10  # length of a generation-edit target, in pre-tokens (one token each in the zoo's BPE)


@dataclass(frozen=True)
class Fact:
    subject: str
    relation: str
    object: str


class World:
    """A seeded world of ``n_subjects`` subjects × 8 relations; see the module docstring."""

    def __init__(self, config: WorldConfig | None = None):
        self.config = config or WorldConfig()
        rng = random.Random(self.config.seed)
        taken: set[str] = set()
        self.relations: tuple[Relation, ...] = _relations(rng, taken)
        self.subjects: list[str] = _names(rng, self.config.n_subjects, (2, 3), taken=taken)
        self.facts: dict[tuple[str, str], str] = {
            (s, r.name): rng.choice(r.objects) for s in self.subjects for r in self.relations
        }
        order = list(self.subjects)
        rng.shuffle(order)
        n_train = round(self.config.split_fractions[0] * len(order))
        n_val = round(self.config.split_fractions[1] * len(order))
        bounds = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
        self.split_of: dict[str, str] = {s: name for name, group in bounds.items() for s in group}

    # -- lookups ---------------------------------------------------------------------------------------------
    @cached_property
    def relation(self) -> dict[str, Relation]:
        return {r.name: r for r in self.relations}

    @cached_property
    def _template_patterns(self) -> list[tuple[re.Pattern, str]]:
        return [(_pattern(t), r.name) for r in self.relations for t in (*r.questions, *r.statements)]

    def parse_question(self, text: str) -> tuple[str, str, int] | None:
        """(subject, relation, template index) when ``text`` is one of this world's questions about one of its
        subjects, else None."""
        for r in self.relations:
            for i, q in enumerate(r.questions):
                m = _pattern(q).match(text)
                if m and (m.group(1), r.name) in self.facts:
                    return m.group(1), r.name, i
        return None

    def relation_of(self, text: str) -> str | None:
        """The relation whose question or statement template ``text`` is written in (None for any other text,
        e.g. a passage): which relation an unrelated panel fact belongs to."""
        names = {name for rx, name in self._template_patterns if rx.match(text)}
        return names.pop() if len(names) == 1 else None

    def subjects_in(self, split: str) -> list[str]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return [s for s in self.subjects if self.split_of[s] == split]

    def facts_in(self, split: str | None = None) -> list[Fact]:
        subjects = self.subjects if split is None else self.subjects_in(split)
        return [Fact(s, r.name, self.facts[s, r.name]) for s in subjects for r in self.relations]

    def _rng(self, *key: object) -> random.Random:
        return random.Random(f"{self.config.seed}|" + "|".join(map(str, key)))

    def question(self, fact: Fact, template: int) -> str:
        return self.relation[fact.relation].questions[template].format(s=fact.subject)

    def statement(self, fact: Fact, template: int, obj: str | None = None) -> str:
        return self.relation[fact.relation].statements[template].format(s=fact.subject, o=obj or fact.object)

    def wrong_objects(self, fact: Fact) -> list[str]:
        """Every object of the fact's type except the true one."""
        return [o for o in self.relation[fact.relation].objects if o != fact.object]

    def alternatives(self, fact: Fact) -> list[str]:
        """``n_alternatives`` wrong objects of the right type; the first is the counterfactual edit target."""
        return self._rng("alt", fact.subject, fact.relation).sample(self.wrong_objects(fact),
                                                                     self.config.n_alternatives)

    # -- pre-training material (never the held-out template) ---------------------------------------------------
    def qa_pairs(self, heldout: bool = False, split: str | None = None) -> list[tuple[str, str]]:
        """(question, answer) for every fact: trained templates (all but the last), or only the held-out one."""
        templates = [N_TEMPLATES - 1] if heldout else range(N_TEMPLATES - 1)
        return [(self.question(f, t), f.object) for f in self.facts_in(split) for t in templates]

    def claims(self, heldout: bool = False, split: str | None = None, variant: int = 0) -> list[tuple[str, int]]:
        """(claim, label) with label 1 = SUPPORTS: each fact stated once true and once with a wrong object.

        ``variant`` reseeds the choice of wrong objects, so training can draw fresh false claims.
        """
        templates = [N_TEMPLATES - 1] if heldout else range(N_TEMPLATES - 1)
        out = []
        for f in self.facts_in(split):
            wrong = self.alternatives(f) if variant == 0 else self.wrong_objects(f)
            for t in templates:
                out.append((self.statement(f, t), 1))
                out.append((self.statement(f, t, self._rng("claim", f, t, variant).choice(wrong)), 0))
        return out

    def _relation_order(self, subject: str) -> list[Relation]:
        rels = list(self.relations)
        self._rng("order", subject).shuffle(rels)
        return rels

    def passage(self, subject: str, n_facts: int | None = None) -> str:
        """A short biography in trained statement templates, facts in a seeded order."""
        rng = self._rng("passage", subject)
        facts = [Fact(subject, r.name, self.facts[subject, r.name]) for r in self._relation_order(subject)[:n_facts]]
        return " ".join(self.statement(f, rng.randrange(N_TEMPLATES - 1)) for f in facts)

    def passages(self, split: str | None = None) -> list[str]:
        subjects = self.subjects if split is None else self.subjects_in(split)
        return [self.passage(s) for s in subjects]

    def corpus(self) -> list[str]:
        """Every string the world can produce (held-out templates included), for training a tokenizer."""
        texts = [q + " " + a for q, a in self.qa_pairs()] + [q for q, _ in self.qa_pairs(heldout=True)]
        texts += [c for c, _ in self.claims()] + [c for c, _ in self.claims(heldout=True)] + self.passages()
        texts += [" ".join(r.objects) for r in self.relations]
        return texts

    # -- edit requests ---------------------------------------------------------------------------------------
    def _locality_fact(self, fact: Fact, split: str) -> Fact:
        pool = [s for s in self.subjects_in(split) if s != fact.subject]
        rng = self._rng("loc", fact.subject, fact.relation)
        return Fact(s := rng.choice(pool), r := rng.choice(self.relations).name, self.facts[s, r])

    def _qa_template(self, fact: Fact) -> int:
        return self._rng("tmpl", fact.subject, fact.relation).randrange(N_TEMPLATES - 1)

    def qa_edits(self, split: str) -> list[EditExample]:
        """zsRE-style: ask in one trained template, rephrase in the other trained ones and the held-out one."""
        out = []
        for f in self.facts_in(split):
            t = self._qa_template(f)
            loc = self._locality_fact(f, split)
            out.append(EditExample(
                prompt=self.question(f, t), target=self.alternatives(f)[0],
                rephrases=tuple(self.question(f, k) for k in range(N_TEMPLATES - 1) if k != t),
                heldout_rephrases=(self.question(f, N_TEMPLATES - 1),),
                locality=(self.question(loc, self._qa_template(loc)), loc.object),
                original=f.object, kind="qa", subject=f.subject, relation=f.relation))
        return out

    def claim_edits(self, split: str, variant: int = 0) -> list[EditExample]:
        """FEVER-style: a true or false claim (half each) whose label the edit flips.

        ``variant`` > 0 redraws, per fact, the template, true or false, and a false claim's object among every
        wrong object of the type: more distinct training claims about the same subjects.
        """
        out = []
        for f in self.facts_in(split):
            rng = self._rng("fever", f.subject, f.relation, *([variant] if variant else []))
            t = rng.randrange(N_TEMPLATES - 1)
            true = rng.random() < 0.5
            obj = f.object if true else (self.alternatives(f)[0] if variant == 0 else rng.choice(self.wrong_objects(f)))
            gold, flipped = ("SUPPORTS", "REFUTES") if true else ("REFUTES", "SUPPORTS")
            loc = self._locality_fact(f, split)
            out.append(EditExample(
                prompt=self.statement(f, t, obj), target=flipped,
                rephrases=tuple(self.statement(f, k, obj) for k in range(N_TEMPLATES - 1) if k != t),
                heldout_rephrases=(self.statement(f, N_TEMPLATES - 1, obj),),
                locality=(self.statement(loc, self._qa_template(loc)), "SUPPORTS"),
                original=gold, kind="claim", subject=f.subject, relation=f.relation))
        return out

    def gen_edits(self, split: str, variant: int = 0) -> list[EditExample]:
        """Wikitext-style, one request per subject of ``split``: a passage x_e about the subject that stops at a
        random word, and a ``gen_tokens``-pre-token continuation y_e stating false facts about the subject.

        x_e is 2-5 true facts (relations, order and templates drawn per ``variant``) followed by the first words
        (possibly none) of a sentence that states a false fact; y_e continues that sentence and the next ones,
        each with a random wrong object. Like MEND's 10-token samples, y_e can start mid-sentence, so a request
        is about *this* passage and not about how sentences start. :func:`mendlab.selfsample.retarget` swaps y_e
        for a sample of the model itself, as the paper does. x'_e drops the first 1 to k//2 of the k true
        sentences: the paper removes a random prefix of up to half the tokens, and whole sentences keep x'_e
        starting where every passage the zoo models read starts. The locality text is another subject's true
        passage, scored on every token (answer ``""``).
        """
        others = self.subjects_in(split)
        return [self._gen_edit(s, others, variant) for s in others]

    def _gen_edit(self, s: str, pool: list[str], variant: int) -> EditExample:
        rng = self._rng("gen", s, variant)
        rels = list(self.relations)
        rng.shuffle(rels)
        k = rng.randint(2, 5)
        true = [self.statement(Fact(s, r.name, self.facts[s, r.name]), rng.randrange(N_TEMPLATES - 1))
                for r in rels[:k]]
        false = [self.statement(f, rng.randrange(N_TEMPLATES - 1), rng.choice(self.wrong_objects(f)))
                 for f in (Fact(s, r.name, self.facts[s, r.name]) for r in rels[k:])]
        words = PRETOKEN.findall(" ".join(false))
        # the words of the false sentence that x_e already has, leaving gen_tokens words for y_e
        # (never just before punctuation, which would follow a space)
        room = min(len(PRETOKEN.findall(false[0])), len(words) - self.config.gen_tokens + 1)
        cut = rng.choice([i for i in range(room) if words[i][0].isalnum()])
        prompt = " ".join([*true, _join_pretokens(words[:cut])]).strip()
        target = _join_pretokens(words[cut:cut + self.config.gen_tokens])
        rephrase = " ".join(true[rng.randint(1, k // 2):] + [_join_pretokens(words[:cut])]).strip()
        other = rng.choice([o for o in pool if o != s])
        return EditExample(prompt=prompt, target=" " + target, rephrases=(rephrase,),
                           locality=(self.passage(other, n_facts=4), ""), kind="gen", subject=s)

    def edits(self, task: str, split: str) -> list[EditExample]:
        makers = {"qa": self.qa_edits, "claim": self.claim_edits, "gen": self.gen_edits}
        if task not in makers:
            raise ValueError(f"unknown task {task!r}; expected one of {sorted(makers)}")
        return makers[task](split)

    # -- files ------------------------------------------------------------------------------------------------
    def write(self, out: str | Path) -> dict[str, Path]:
        """Write every split in MEND's layouts under ``out``; returns {name: path}."""
        out = Path(out)
        paths: dict[str, Path] = {}
        file_split = {"train": "train", "val": "dev", "test": "test"}
        for split, tag in file_split.items():
            paths[f"zsre_{split}"] = _write_jsonl(
                out / "zsre" / f"structured_zeroshot-{tag}-new_annotated_final.jsonl",
                [_zsre_record(e, self.alternatives(Fact(e.subject, e.relation, e.original)))
                 for e in self.qa_edits(split)])
            paths[f"fever_{split}"] = _write_jsonl(
                out / "fever" / f"fever-{tag}-kilt.jsonl", [_fever_record(e) for e in self.claim_edits(split)])
            gen = self.gen_edits(split)
            path = out / "10token" / "data" / "self_sample" / f"{'valid' if split == 'val' else split}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"n_tokens": self.config.gen_tokens,
                                        "original": [e.prompt for e in gen],
                                        "completions": [e.prompt + e.target for e in gen],
                                        "subjects": [e.subject for e in gen]}, indent=1))
            paths[f"gen_{split}"] = path
            wiki = out / "wikitext" / f"wiki.{'valid' if split == 'val' else split}.raw"
            wiki.parent.mkdir(parents=True, exist_ok=True)
            wiki.write_text("\n".join(self.passages(split)) + "\n")
            paths[f"wikitext_{split}"] = wiki
        (out / "world.json").write_text(json.dumps(asdict(self.config)))
        paths["config"] = out / "world.json"
        return paths


def _pattern(template: str) -> re.Pattern:
    """A regex for ``template`` with each ``{s}`` / ``{o}`` a group."""
    parts = re.split(r"(\{s\}|\{o\})", template)
    return re.compile("".join("(.+)" if p in ("{s}", "{o}") else re.escape(p) for p in parts) + r"\Z")


def _join_pretokens(words: list[str]) -> str:
    text = " ".join(words)
    return re.sub(r" ([^\w\s])", r"\1", text)


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _zsre_record(e: EditExample, alternatives: list[str]) -> dict:
    return {"subject": e.subject, "relation": e.relation, "input": e.prompt, "prediction": e.original,
            "alternatives": alternatives, "filtered_rephrases": list(e.rephrases),
            "heldout_rephrases": list(e.heldout_rephrases), "output": [{"answer": e.original}],
            "loc": e.locality[0], "loc_ans": e.locality[1]}


def _fever_record(e: EditExample) -> dict:
    return {"subject": e.subject, "relation": e.relation, "logit": 1.0 if e.original == "SUPPORTS" else -1.0,
            "input": e.prompt, "prediction": e.original, "alternatives": [e.target],
            "filtered_rephrases": list(e.rephrases), "heldout_rephrases": list(e.heldout_rephrases),
            "output": [{"answer": e.original}], "loc": e.locality[0], "loc_ans": e.locality[1]}
