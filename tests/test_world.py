"""Tests for mendlab.world: determinism, relations and names, splits, held-out templates, edits, files."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from mendlab import tasks
from mendlab.data import EditExample
from mendlab.world import N_TEMPLATES, PRETOKEN, SPLITS, Fact, World, WorldConfig

SMALL = WorldConfig(seed=0, n_subjects=40)
HELDOUT = N_TEMPLATES - 1
TRAINED = range(N_TEMPLATES - 1)
NAME = re.compile(r"[A-Z][a-z]+")


@pytest.fixture(scope="module")
def world() -> World:
    return World(SMALL)


def _pattern(template: str) -> re.Pattern:
    """A template as a regex: any capitalised name for {s}, any word(s) for {o}."""
    rx = re.escape(template).replace(re.escape("{s}"), r"[A-Z][a-z]+").replace(re.escape("{o}"), r"[A-Za-z]+")
    return re.compile(rx)


def _heldout_questions(world: World) -> list[re.Pattern]:
    return [_pattern(r.questions[HELDOUT]) for r in world.relations]


def _heldout_statements(world: World) -> list[re.Pattern]:
    return [_pattern(r.statements[HELDOUT]) for r in world.relations]


def _sentences(passage: str) -> list[str]:
    return re.split(r"(?<=\.) ", passage)


def _question_index(world: World) -> dict[str, tuple[str, str, int]]:
    """Every question the world can ask → (subject, relation, template); asserts the map is injective."""
    index = {}
    for f in world.facts_in():
        for t in range(N_TEMPLATES):
            q = world.question(f, t)
            assert q not in index, f"two facts share the question {q!r}"
            index[q] = (f.subject, f.relation, t)
    return index


def _statement_index(world: World) -> dict[str, tuple[str, str, str, int]]:
    """Every statement with every object of the right type → (subject, relation, object, template)."""
    index = {}
    for s in world.subjects:
        for r in world.relations:
            for o in r.objects:
                for t in range(N_TEMPLATES):
                    text = world.statement(Fact(s, r.name, world.facts[s, r.name]), t, o)
                    assert text not in index, f"two statements coincide: {text!r}"
                    index[text] = (s, r.name, o, t)
    return index


def _subjects_named(world: World, text: str) -> set[str]:
    return set(NAME.findall(text)) & set(world.subjects)


# -- determinism ---------------------------------------------------------------------------------------------------
def test_same_config_same_world():
    a, b = World(SMALL), World(WorldConfig(seed=0, n_subjects=40))
    assert a.subjects == b.subjects
    assert a.facts == b.facts
    assert a.relations == b.relations
    assert a.split_of == b.split_of
    for split in SPLITS:
        assert a.qa_edits(split) == b.qa_edits(split)
        assert a.claim_edits(split) == b.claim_edits(split)
        assert a.gen_edits(split) == b.gen_edits(split)
    assert a.corpus() == b.corpus()


def test_other_seed_other_world():
    a, b = World(SMALL), World(WorldConfig(seed=1, n_subjects=40))
    assert a.subjects != b.subjects
    assert set(a.subjects) != set(b.subjects)
    assert a.relations[0].objects != b.relations[0].objects  # invented objects are seeded too
    assert a.qa_edits("train") != b.qa_edits("train")
    assert a.gen_edits("test") != b.gen_edits("test")


def _digest(out: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(out.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(out)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def test_written_files_are_byte_identical_across_processes(tmp_path):
    """'Same config, same world, byte for byte', also under another PYTHONHASHSEED."""
    World(SMALL).write(tmp_path / "here")
    code = ("import sys; from mendlab.world import World, WorldConfig; "
            "World(WorldConfig(seed=0, n_subjects=40)).write(sys.argv[1])")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "there")], check=True, env=env)
    assert _digest(tmp_path / "here") == _digest(tmp_path / "there")


# -- relations, names -------------------------------------------------------------------------------------------------
def test_relations_and_templates(world):
    assert len(world.relations) >= 8
    names = [r.name for r in world.relations]
    assert len(set(names)) == len(names)
    for r in world.relations:
        assert len(r.questions) >= 5 and len(r.questions) == N_TEMPLATES
        assert len(r.statements) >= 5 and len(r.statements) == N_TEMPLATES
        assert len(set(r.questions)) == len(r.questions)
        assert len(set(r.statements)) == len(r.statements)
        for q in r.questions:
            assert q.count("{s}") == 1 and "{o}" not in q and q.endswith("?"), q
        for s in r.statements:
            assert s.count("{s}") == 1 and s.count("{o}") == 1 and s.endswith("."), s
        assert len(set(r.objects)) == len(r.objects) > WorldConfig().n_alternatives
    assert world.relation["pet"].name == "pet"


def test_names_unique_and_pronounceable():
    world = World()
    assert WorldConfig().n_subjects >= 200
    assert len(world.subjects) == WorldConfig().n_subjects
    invented = [o for r in world.relations for o in r.objects if o[0].isupper()]
    assert len(invented) >= 40  # birthplaces, languages, teams and countries are invented words
    names = world.subjects + invented
    assert len(set(names)) == len(names)
    for n in names:
        assert NAME.fullmatch(n), n  # letters only, capitalised
        assert 4 <= len(n) <= 11, n
        assert re.search(r"[aeiou]", n), n
        assert not re.search(r"[^aeiou]{5}", n.lower()), n  # no unpronounceable consonant pile-ups
        assert not re.search(r"[aeiou]{5}", n.lower()), n  # "Vuchouia" is fine


def test_facts_cover_every_subject_and_relation(world):
    assert len(world.facts) == len(world.subjects) * len(world.relations)
    for (_, r), o in world.facts.items():
        assert o in world.relation[r].objects
    assert len(world.facts_in()) == len(world.facts)


def test_unknown_split_and_task_raise(world):
    with pytest.raises(ValueError, match="unknown split"):
        world.subjects_in("dev")
    with pytest.raises(ValueError, match="unknown task"):
        world.edits("nli", "train")


# -- splits ------------------------------------------------------------------------------------------------------------
def test_splits_are_disjoint_and_cover(world):
    groups = {s: world.subjects_in(s) for s in SPLITS}
    assert [len(groups[s]) for s in SPLITS] == [28, 4, 8]  # (0.7, 0.1, 0.2) of 40
    seen = [x for s in SPLITS for x in groups[s]]
    assert len(seen) == len(set(seen)) == len(world.subjects)
    assert set(seen) == set(world.subjects)
    for split in SPLITS:
        assert {f.subject for f in world.facts_in(split)} == set(groups[split])
        assert len(world.facts_in(split)) == len(groups[split]) * len(world.relations)


@pytest.mark.parametrize("split", SPLITS)
def test_edits_stay_inside_their_split(world, split):
    members = set(world.subjects_in(split))
    qa, claims, gen = world.qa_edits(split), world.claim_edits(split), world.gen_edits(split)
    assert len(qa) == len(claims) == len(members) * len(world.relations)
    assert len(gen) == len(members)
    for e in qa + claims + gen:
        assert e.subject in members
        texts = [e.prompt, *e.rephrases, *e.heldout_rephrases]
        assert all(_subjects_named(world, t) == {e.subject} for t in texts), texts
    for e in qa + claims:
        loc_subjects = _subjects_named(world, e.locality[0])
        assert len(loc_subjects) == 1
        (loc_subject,) = loc_subjects
        assert loc_subject in members
        assert loc_subject != e.subject


def test_locality_answers_are_true(world):
    questions, statements = _question_index(world), _statement_index(world)
    for e in world.qa_edits("val"):
        s, r, t = questions[e.locality[0]]
        assert t in TRAINED
        assert e.locality[1] == world.facts[s, r]
    for e in world.claim_edits("val"):
        s, r, o, t = statements[e.locality[0]]
        assert t in TRAINED and o == world.facts[s, r]
        assert e.locality[1] == "SUPPORTS"


# -- held-out template -------------------------------------------------------------------------------------------------
def test_pretraining_material_never_uses_heldout_template(world):
    hq, hs = _heldout_questions(world), _heldout_statements(world)
    questions = [q for q, _ in world.qa_pairs()]
    assert len(questions) == len(world.facts) * (N_TEMPLATES - 1)
    assert not [q for q in questions if any(p.fullmatch(q) for p in hq)]
    claims = [c for c, _ in world.claims()] + [c for c, _ in world.claims(variant=3)]
    assert not [c for c in claims if any(p.fullmatch(c) for p in hs)]
    sentences = [x for p in world.passages() for x in _sentences(p)]
    assert len(sentences) == len(world.subjects) * len(world.relations)
    assert not [x for x in sentences if any(p.fullmatch(x) for p in hs)]
    # and, more bluntly, no held-out string of any fact appears anywhere in that material
    heldout_q = {world.question(f, HELDOUT) for f in world.facts_in()}
    heldout_s = {world.statement(f, HELDOUT) for f in world.facts_in()}
    assert not heldout_q & set(questions)
    assert not heldout_s & set(claims)
    assert not [p for p in world.passages() for h in heldout_s if h in p]


def test_heldout_material_uses_only_heldout_template(world):
    facts = world.facts_in()
    assert world.qa_pairs(heldout=True) == [(world.question(f, HELDOUT), f.object) for f in facts]
    hq, hs = _heldout_questions(world), _heldout_statements(world)
    assert all(any(p.fullmatch(q) for p in hq) for q, _ in world.qa_pairs(heldout=True))
    assert all(any(p.fullmatch(c) for p in hs) for c, _ in world.claims(heldout=True))
    assert len(world.claims(heldout=True)) == 2 * len(facts)
    assert world.qa_pairs(heldout=True, split="test") == [
        (world.question(f, HELDOUT), f.object) for f in world.facts_in("test")]


def test_corpus_contains_heldout_strings_for_the_tokenizer(world):
    corpus = set(world.corpus())
    assert {world.question(f, HELDOUT) for f in world.facts_in()} <= corpus


def test_qa_edit_rephrases(world):
    for e in world.qa_edits("train"):
        f = Fact(e.subject, e.relation, e.original)
        trained = [world.question(f, t) for t in TRAINED]
        assert e.prompt in trained
        assert e.prompt not in e.rephrases
        assert list(e.rephrases) == [q for q in trained if q != e.prompt]
        assert len(e.rephrases) == N_TEMPLATES - 2
        assert e.heldout_rephrases == (world.question(f, HELDOUT),)
        assert e.kind == "qa"


def test_claim_edit_rephrases_keep_the_object(world):
    statements = _statement_index(world)
    for e in world.claim_edits("train"):
        s, r, o, t = statements[e.prompt]
        assert (s, r) == (e.subject, e.relation) and t in TRAINED
        f = Fact(s, r, world.facts[s, r])
        assert list(e.rephrases) == [world.statement(f, k, o) for k in TRAINED if k != t]
        assert e.heldout_rephrases == (world.statement(f, HELDOUT, o),)


# -- counterfactuals, claims -------------------------------------------------------------------------------------------
def test_counterfactual_targets(world):
    for split in SPLITS:
        for e in world.qa_edits(split):
            rel = world.relation[e.relation]
            assert e.original == world.facts[e.subject, e.relation]
            assert e.target in rel.objects
            assert e.target != e.original
            assert e.target == world.alternatives(Fact(e.subject, e.relation, e.original))[0]


def test_alternatives(world):
    n = world.config.n_alternatives
    for f in world.facts_in():
        alts = world.alternatives(f)
        assert len(alts) == n == len(set(alts))
        assert f.object not in alts
        assert set(alts) <= set(world.relation[f.relation].objects)
        assert alts == world.alternatives(f)  # deterministic per fact
    firsts = {world.alternatives(f)[0] for f in world.facts_in() if f.relation == "occupation"}
    assert len(firsts) > 3  # not a constant


@pytest.mark.parametrize("variant", [0, 1])
def test_claims_balanced_and_false_ones_false(world, variant):
    statements = _statement_index(world)
    claims = world.claims(variant=variant)
    labels = [y for _, y in claims]
    assert set(labels) == {0, 1}
    assert sum(labels) * 2 == len(labels) == 2 * len(world.facts) * (N_TEMPLATES - 1)
    for text, label in claims:
        s, r, o, t = statements[text]
        assert t in TRAINED
        assert (o == world.facts[s, r]) == (label == 1), text


def test_claim_variants_draw_other_false_claims(world):
    false0 = {c for c, y in world.claims() if y == 0}
    false1 = {c for c, y in world.claims(variant=1) if y == 0}
    assert false0 != false1
    assert {c for c, y in world.claims() if y == 1} == {c for c, y in world.claims(variant=1) if y == 1}


def test_claim_edits_flip_the_truth(world):
    statements = _statement_index(world)
    edits = [e for split in SPLITS for e in world.claim_edits(split)]
    gold = [e.original for e in edits]
    assert 0.3 < gold.count("SUPPORTS") / len(gold) < 0.7
    for e in edits:
        assert {e.original, e.target} == {"SUPPORTS", "REFUTES"}
        s, r, o, _ = statements[e.prompt]
        is_true = o == world.facts[s, r]
        assert is_true == (e.original == "SUPPORTS")
        if not is_true:
            assert o == world.alternatives(Fact(s, r, world.facts[s, r]))[0]
        assert e.kind == "claim"


def test_claim_edit_variants_redraw_claims_about_the_same_facts(world):
    statements = _statement_index(world)
    base, redrawn = world.claim_edits("train"), world.claim_edits("train", variant=3)
    assert redrawn == world.claim_edits("train", variant=3) and redrawn != base
    assert [(e.subject, e.relation) for e in base] == [(e.subject, e.relation) for e in redrawn]
    for e in redrawn:
        s, r, o, _ = statements[e.prompt]
        assert (o == world.facts[s, r]) == (e.original == "SUPPORTS") and e.target != e.original


def test_claim_variants_join_only_the_train_split(world):
    plain, more = tasks.from_world(world, "classifier"), tasks.from_world(world, "classifier", claim_variants=2)
    assert len(more.train) == 3 * len(plain.train) and more.train[:len(plain.train)] == plain.train
    assert more.val == plain.val and more.test == plain.test and more.panel == plain.panel


# -- generation edits --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", [0, 3])
def test_gen_edits(world, variant):
    statements = _statement_index(world)
    n = world.config.gen_tokens
    for split in SPLITS:
        for e in world.gen_edits(split, variant=variant):
            assert e.kind == "gen" and e.heldout_rephrases == ()
            loc_text, loc_answer = e.locality  # another subject of the same split, language-modelled
            other = [o for o in world.subjects_in(split) if world.passage(o, n_facts=4) == loc_text]
            assert loc_answer == "" and other and other[0] != e.subject
            assert e.target.startswith(" ") and not e.target.startswith("  ")
            assert len(PRETOKEN.findall(e.target)) == n
            assert len(PRETOKEN.findall(e.prompt + e.target)) == len(PRETOKEN.findall(e.prompt)) + n
            # x_e: 2-5 true facts about the subject, each relation once, in trained templates, then the first words
            # of a false one; y_e finishes that sentence and goes on
            *whole, rest = _sentences(e.prompt + e.target)
            told = [statements[x] for x in whole]
            true = [f for f in told if f[2] == world.facts[f[0], f[1]]]
            assert 2 <= len(true) <= 5 and told[:len(true)] == true and len(told) > len(true)
            assert len({r for _, r, _, _ in told}) == len(told)
            assert all(s == e.subject and t in TRAINED for s, _, _, t in told)
            assert all(o != world.facts[s, r] for s, r, o, _ in told[len(true):])
            assert e.prompt.startswith(" ".join(whole[:len(true)]))
            assert e.target[1].isalnum()  # y_e never starts with a space before punctuation
            # x'_e drops 1 to k//2 whole true sentences from the front
            (x,) = e.rephrases
            dropped = len(_sentences(e.prompt)) - len(_sentences(x))
            assert e.prompt.endswith(x) and 1 <= dropped <= len(true) // 2


def test_gen_variants_are_distinct_requests(world):
    edits = [e for v in range(6) for e in world.gen_edits("train", variant=v)]
    assert len({(e.prompt, e.target) for e in edits}) == len(edits)
    assert world.gen_edits("val", variant=2) == World(SMALL).gen_edits("val", variant=2)
    t = tasks.from_world(world, "decoder", "gen", gen_variants=3, gen_eval_variants=2)
    assert len(t.train) == 3 * len(world.subjects_in("train"))
    assert len(t.val) == 2 * len(world.subjects_in("val")) and len(t.test) == 2 * len(world.subjects_in("test"))
    assert t.val[:len(world.subjects_in("val"))] == world.gen_edits("val")


def test_gen_tokens_is_respected():
    world = World(WorldConfig(n_subjects=40, gen_tokens=6))
    for e in world.gen_edits("val"):
        assert len(PRETOKEN.findall(e.target)) == 6


def test_passages_are_biographies_in_trained_templates(world):
    statements = _statement_index(world)
    for s, p in zip(world.subjects, world.passages(), strict=True):
        facts = [statements[x] for x in _sentences(p)]
        assert {f[0] for f in facts} == {s}
        assert sorted(f[1] for f in facts) == sorted(r.name for r in world.relations)
        assert all(o == world.facts[s, r] and t in TRAINED for _, r, o, t in facts)


# -- files -------------------------------------------------------------------------------------------------------------
def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_write_layout(world, tmp_path):
    paths = world.write(tmp_path)
    expected = {
        "zsre/structured_zeroshot-train-new_annotated_final.jsonl",
        "zsre/structured_zeroshot-dev-new_annotated_final.jsonl",
        "zsre/structured_zeroshot-test-new_annotated_final.jsonl",
        "fever/fever-train-kilt.jsonl", "fever/fever-dev-kilt.jsonl", "fever/fever-test-kilt.jsonl",
        "10token/data/self_sample/train.json", "10token/data/self_sample/valid.json",
        "10token/data/self_sample/test.json",
        "wikitext/wiki.train.raw", "wikitext/wiki.valid.raw", "wikitext/wiki.test.raw",
        "world.json",
    }
    written = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    assert written == expected
    assert {str(p.relative_to(tmp_path)) for p in paths.values()} == expected
    assert paths["zsre_val"] == tmp_path / "zsre/structured_zeroshot-dev-new_annotated_final.jsonl"
    assert paths["gen_val"] == tmp_path / "10token/data/self_sample/valid.json"
    assert json.loads((tmp_path / "world.json").read_text()) == json.loads(json.dumps(asdict(world.config)))


@pytest.mark.parametrize("split,tag", [("train", "train"), ("val", "dev"), ("test", "test")])
def test_write_zsre_records(world, tmp_path, split, tag):
    world.write(tmp_path)
    records = _jsonl(tmp_path / "zsre" / f"structured_zeroshot-{tag}-new_annotated_final.jsonl")
    edits = world.qa_edits(split)
    assert len(records) == len(edits)
    for r, e in zip(records, edits, strict=True):
        assert {"input", "prediction", "alternatives", "filtered_rephrases", "output"} <= set(r)
        assert r["input"] == e.prompt
        assert r["prediction"] == e.original == r["output"][0]["answer"]
        assert isinstance(r["alternatives"], list) and r["alternatives"][0] == e.target
        assert r["alternatives"] == world.alternatives(Fact(e.subject, e.relation, e.original))
        assert r["filtered_rephrases"] == list(e.rephrases) and r["input"] not in r["filtered_rephrases"]
        assert isinstance(r["output"], list) and isinstance(r["output"][0], dict)
        assert r["heldout_rephrases"] == list(e.heldout_rephrases)
        assert (r["loc"], r["loc_ans"]) == e.locality
        assert (r["subject"], r["relation"]) == (e.subject, e.relation)


@pytest.mark.parametrize("split,tag", [("train", "train"), ("val", "dev"), ("test", "test")])
def test_write_fever_records(world, tmp_path, split, tag):
    world.write(tmp_path)
    records = _jsonl(tmp_path / "fever" / f"fever-{tag}-kilt.jsonl")
    edits = world.claim_edits(split)
    assert len(records) == len(edits)
    for r, e in zip(records, edits, strict=True):
        assert {"logit", "input", "prediction", "alternatives", "filtered_rephrases", "output"} <= set(r)
        assert isinstance(r["logit"], float)
        assert (r["logit"] > 0) == (r["prediction"] == "SUPPORTS")
        assert r["prediction"] == e.original == r["output"][0]["answer"]
        assert r["alternatives"] == [e.target]
        assert {r["prediction"], r["alternatives"][0]} == {"SUPPORTS", "REFUTES"}
        assert r["input"] == e.prompt and r["filtered_rephrases"] == list(e.rephrases)
        assert (r["loc"], r["loc_ans"]) == e.locality


@pytest.mark.parametrize("split,name", [("train", "train"), ("val", "valid"), ("test", "test")])
def test_write_self_sample_and_wikitext(world, tmp_path, split, name):
    world.write(tmp_path)
    blob = json.loads((tmp_path / "10token" / "data" / "self_sample" / f"{name}.json").read_text())
    assert {"n_tokens", "original", "completions"} <= set(blob)
    assert blob["n_tokens"] == world.config.gen_tokens == 10
    edits = world.gen_edits(split)
    assert blob["original"] == [e.prompt for e in edits]
    assert blob["completions"] == [e.prompt + e.target for e in edits]
    lines = (tmp_path / "wikitext" / f"wiki.{name}.raw").read_text().splitlines()
    assert lines == world.passages(split)


def test_edit_examples_are_hashable_values(world):
    e = world.qa_edits("val")[0]
    assert isinstance(e, EditExample)
    assert hash(e) == hash(World(SMALL).qa_edits("val")[0])
    with pytest.raises(AttributeError):
        e.target = "x"  # frozen


def test_relation_of_reads_every_template(world):
    for fact in world.facts_in("train")[:40]:
        for t in range(N_TEMPLATES):
            assert world.relation_of(world.question(fact, t)) == fact.relation
            assert world.relation_of(world.statement(fact, t)) == fact.relation
            assert world.relation_of(world.statement(fact, t, world.wrong_objects(fact)[0])) == fact.relation
    assert world.relation_of(world.passages("train")[0]) is None
    assert world.relation_of("Nothing like a template.") is None
