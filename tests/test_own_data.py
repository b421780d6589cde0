"""Bring your own model and data, end to end and offline: MEND's released layouts written from the micro world,
a micro model saved as a plain Hugging Face folder, then `mendlab train`, `eval` and `edit` through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mendlab.cli import main
from mendlab.data import DataFileError, read_nq, read_self_sample, read_zsre
from mendlab.filetasks import DataFiles, from_files

N_RECORDS = 30  # records per file: a few dozen


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(autouse=True)
def _private_caches(tmp_path, monkeypatch):
    """Editors and ``datasets``' Arrow files under the test's own folder, never ~/.cache."""
    import datasets

    monkeypatch.setenv("MENDLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets")


@pytest.fixture(scope="module")
def released(micro, tmp_path_factory) -> dict[str, Path]:
    """The micro world's files in MEND's layouts (a few dozen records each) plus an NQ file of its facts."""
    _, _, world = micro("gpt2")
    out = tmp_path_factory.mktemp("released")
    paths = world.write(out)
    for key, path in paths.items():
        if key.startswith(("zsre_", "fever_")):
            path.write_text("".join(path.read_text().splitlines(keepends=True)[:N_RECORDS]))
        elif key.startswith("gen_"):
            blob = json.loads(path.read_text())
            path.write_text(json.dumps({k: v[:N_RECORDS] if isinstance(v, list) else v for k, v in blob.items()}))
    qa = world.qa_pairs(split="train")[:N_RECORDS]
    paths["nq"] = out / "nq" / "train.json"
    paths["nq"].parent.mkdir()
    paths["nq"].write_text(json.dumps({"questions": [q for q, _ in qa], "answers": [a for _, a in qa]}))
    return paths


def _hf_folder(micro, model_type: str, root: Path) -> str:
    """A micro model saved as a plain Hugging Face folder: config, weights and tokenizer, no mendlab card."""
    model, tok, _ = micro(model_type)
    path = root / f"plain-{model_type}"
    if not path.exists():
        model.save_pretrained(path)
        tok.save_pretrained(path)
    assert not (path / "mendlab_card.json").exists()
    return str(path)


def _files(released, data: str) -> list[str]:
    source = {"zsre": "zsre", "fever": "fever", "wikitext": "gen"}[data]
    args = ["--data", data, "--train-file", str(released[f"{source}_train"]), "--val-file",
            str(released[f"{source}_val"])]
    loc = {"zsre": ["--loc-file", str(released["nq"])], "fever": [],
           "wikitext": ["--loc-file", str(released["wikitext_train"])]}[data]
    return args + loc


TRAIN = ["--steps", "2", "--set", "val_size=4", "--set", "val_every=2", "--set", "edits_per_step=2"]


@pytest.mark.parametrize("model_type,data", [("gpt2", "zsre"), ("bart", "zsre"), ("t5", "zsre"), ("bert", "fever"),
                                             ("gpt2", "wikitext")])
def test_train_eval_edit_from_files(micro, released, tmp_path, capsys, model_type, data):
    model_dir = _hf_folder(micro, model_type, tmp_path)
    assert main(["train", "--model", model_dir, *_files(released, data), *TRAIN, "--json"]) == 0
    card = last_json(capsys)
    assert not card["cached"] and card["steps"] == 2 and card["data"]["data"] == data
    assert card["task"] == {"zsre": "qa", "fever": "claim", "wikitext": "gen"}[data]

    source = {"zsre": "zsre", "fever": "fever", "wikitext": "gen"}[data]
    test_file = str(released[f"{source}_test"])
    layout = ["--data", data] if model_type == "bart" else []  # else the layout of the editor's training card
    assert main(["eval", "--model", model_dir, "--editor", card["path"], *layout, "--test-file", test_file,
                 *(["--loc-file", str(released["wikitext_test"])] if data == "wikitext" else []),
                 "--n", "4", "--json"]) == 0
    result = last_json(capsys)
    assert result["data"] == data and result["split"] == "test" and 0 <= result["es_edit"] <= 1
    assert result["alg"] == "mend"

    _, tok, world = micro(model_type)
    example = (read_self_sample(test_file, tok) if data == "wikitext" else
               {"zsre": world.qa_edits, "fever": world.claim_edits}[data]("test"))[0]
    assert main(["edit", "--model", model_dir, "--editor", card["path"], "--prompt", example.prompt,
                 "--target", example.target.strip(), "--json"]) == 0
    rows = last_json(capsys)["rows"]
    assert [r["role"] for r in rows] == ["edit", "unrelated"]  # the unrelated fact from the card's files


def test_the_files_content_keys_the_cache(micro, released, tmp_path, capsys):
    model_dir = _hf_folder(micro, "gpt2", tmp_path)
    args = ["train", "--model", model_dir, *TRAIN, "--json"]
    assert main([*args, *_files(released, "zsre")]) == 0
    first = last_json(capsys)
    copies = tmp_path / "copies"
    copies.mkdir()
    train, val = (Path(shutil.copy(released[f"zsre_{s}"], copies / f"{s}.jsonl")) for s in ("train", "val"))
    files = ["--data", "zsre", "--train-file", str(train), "--val-file", str(val), "--loc-file", str(released["nq"])]
    assert main([*args, *files]) == 0  # the same content under other names: the same editor
    second = last_json(capsys)
    assert second["cached"] and second["path"] == first["path"]
    train.write_text("".join(train.read_text().splitlines(keepends=True)[:-1]))  # one record fewer
    assert main([*args, *files]) == 0
    third = last_json(capsys)
    assert not third["cached"] and third["path"] != first["path"]


def test_task_from_files_is_shaped_like_a_world_task(micro, released):
    _, tok, world = micro("gpt2")
    qa = from_files(DataFiles("zsre", str(released["zsre_train"]), str(released["zsre_val"]),
                              loc=str(released["nq"])), "decoder")
    assert qa.name == "qa" and qa.train == [
        e.__class__(**{**e.__dict__, "locality": qa.train[i].locality}) for i, e in
        enumerate(read_zsre(released["zsre_train"]))]
    assert qa.test == [] and set(qa.panel) <= set(read_nq(released["nq"]))
    assert {e.locality for e in qa.train} <= set(read_nq(released["nq"]))
    claims = from_files(DataFiles("fever", str(released["fever_train"])), "classifier")
    assert claims.name == "claim" and all(e.target in ("SUPPORTS", "REFUTES") for e in claims.train)
    assert all(a in ("SUPPORTS", "REFUTES") for _, a in claims.panel)
    gen = from_files(DataFiles("wikitext", str(released["gen_train"]), loc=str(released["wikitext_train"])),
                     "decoder", tok)
    assert gen.name == "gen" and all(e.locality[1] == "" for e in gen.train) and all(a == "" for _, a in gen.panel)
    with pytest.raises(ValueError, match="classifier"):
        from_files(DataFiles("fever", str(released["fever_train"])), "decoder")
    with pytest.raises(ValueError, match="--loc-file"):
        DataFiles("wikitext", str(released["gen_train"]))
    with pytest.raises(ValueError, match="no such file"):
        DataFiles("zsre", str(released["zsre_train"]) + ".missing")


def test_tasks_from_mends_real_layouts(micro):
    """The released files' own samples (real English, KILT fields) make tasks too."""
    data = Path(__file__).parent / "data"
    _, tok, _ = micro("gpt2")
    qa = from_files(DataFiles("zsre", test=str(data / "zsre_sample.jsonl"), loc=str(data / "nq_sample.json")),
                    "seq2seq")
    assert qa.test and {e.locality for e in qa.test} <= set(read_nq(data / "nq_sample.json"))
    claims = from_files(DataFiles("fever", val=str(data / "fever_sample.jsonl")), "classifier")
    assert [e.target for e in claims.val] == ["SUPPORTS", "REFUTES", "SUPPORTS"] and len(claims.panel) == 3
    gen = from_files(DataFiles("wikitext", test=str(data / "self_sample_sample.json"),
                               loc=str(data / "wikitext_sample.raw")), "decoder", tok)
    assert len(gen.test) == 3 and gen.test[0].locality == ("= Saprang Kalayanamitr =", "")


def test_a_gpt_tokenizer_without_pad_token_gets_one(micro, released, tmp_path, capsys):
    """GPT checkpoints ship a tokenizer without a pad token; loading gives it the end-of-text token, as MEND's
    official code does, and training runs."""
    import copy

    from mendlab import zoo

    model, tok, _ = micro("gpt2")
    tok = copy.deepcopy(tok)
    tok.pad_token = None
    path = tmp_path / "no-pad"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    assert zoo.load(str(path))[1].pad_token == tok.eos_token
    assert main(["train", "--model", str(path), *_files(released, "zsre"), *TRAIN, "--json"]) == 0
    assert last_json(capsys)["steps"] == 2


def test_a_malformed_record_names_the_file_the_line_and_the_field(released, tmp_path, micro, capsys):
    lines = released["zsre_train"].read_text().splitlines(keepends=True)[:4]
    bad = json.loads(lines[2])
    bad["alternatives"] = "Kelvane"
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(lines[:2]) + json.dumps(bad) + "\n" + lines[3])
    with pytest.raises(DataFileError, match=rf"{path}, line 3, field 'alternatives': must be a list of strings"):
        read_zsre(path)
    kilt = {**bad, "alternatives": ["Kelvane"], "output": [{"answer": "Migoth"}, {"provenance": []}]}
    path.write_text(json.dumps(kilt) + "\n" + json.dumps({k: v for k, v in kilt.items() if k != "input"}) + "\n")
    with pytest.raises(DataFileError, match=rf"{path}, line 2, field 'input': missing"):
        read_zsre(path)  # KILT's provenance-only output items are fine; a record without input is not
    path.write_text(lines[0] + "{not json\n")
    with pytest.raises(DataFileError, match=rf"{path}, line 2: not a JSON record"):
        read_zsre(path)
    fever = json.loads(released["fever_train"].read_text().splitlines()[0])
    path.write_text(json.dumps({**fever, "alternatives": ["MAYBE"]}) + "\n")
    assert main(["train", "--model", _hf_folder(micro, "bert", tmp_path), "--data", "fever", "--train-file",
                 str(path), "--val-file", str(path), *TRAIN]) == 2
    err = capsys.readouterr().err
    assert f"{path}, line 1, field 'alternatives'" in err and "Traceback" not in err
    nq = tmp_path / "nq.json"
    nq.write_text(json.dumps({"questions": ["Who?", 3], "answers": ["Me", "You"]}))
    with pytest.raises(DataFileError, match=r"nq.json, field 'questions': must be a list of strings \(item 1"):
        read_nq(nq)


def test_models_that_cannot_load_are_clear_errors(micro, released, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    files = _files(released, "zsre")
    assert main(["train", "--model", "someone/not-a-cached-model", *files, *TRAIN]) == 2
    err = capsys.readouterr().err
    assert "needs internet" in err and "save_pretrained" in err and "Traceback" not in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--model", str(empty), *files, *TRAIN]) == 2
    assert "config.json" in capsys.readouterr().err
    plain = _hf_folder(micro, "gpt2", tmp_path)
    assert main(["train", "--model", plain, *TRAIN]) == 2  # no world of its own, and no --data
    assert "--data" in capsys.readouterr().err
    assert main(["train", "--model", plain, "--train-file", str(released["zsre_train"]), *TRAIN]) == 2
    assert "need --data" in capsys.readouterr().err
    assert main(["train", "--model", plain, *_files(released, "fever"), *TRAIN]) == 2
    assert "classifier" in capsys.readouterr().err


def test_compare_on_your_own_files_writes_a_table_with_provenance(micro, released, tmp_path, capsys):
    from mendlab.experiments import report

    model_dir = _hf_folder(micro, "gpt2", tmp_path)
    out = tmp_path / "compare_own.csv"
    argv = ["compare", "--setup", f"{model_dir}:qa", "--algs", "mend,ft", "--seeds", "0", "--steps", "2", "--n", "4",
            "--n-val", "4", *_files(released, "zsre"), "--test-file", str(released["zsre_val"]), "--out", str(out)]
    assert main(argv) == 0
    frame, meta = report.load(out)
    assert list(frame["alg"]) == ["mend", "ft"] and (frame["n"] == 4).all()
    assert meta["data"] == "zsre" and meta["test_file"] == str(released["zsre_val"]) and meta["complete"]
    assert main(["compare", "--algs", "mend", "--seeds", "0", *_files(released, "zsre")]) == 2  # no --setup
    assert "needs --setup" in capsys.readouterr().err
