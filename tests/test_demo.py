"""The embedded demo: deterministic generated data, a tokenizer that round-trips it, a loadable model."""

from __future__ import annotations

import json

from unlearn import demo


def test_generated_texts_are_deterministic_and_disjoint():
    assert demo.forget_text(0) == demo.forget_text(0)
    assert demo.retain_text(0) == demo.retain_text(0)
    assert demo.forget_text(0) != demo.forget_text(1)
    forget_words = set(demo.forget_text(0).split())
    retain_words = set(demo.retain_text(0).split())
    # invented names differ between the book and the retain text (only the template words are shared)
    names = {w.strip(".,") for w in forget_words if w[:1].isupper()} - {"In", "Nobody", "When", "The"}
    assert names and not names & {w.strip(".,") for w in retain_words}


def test_build_is_deterministic(demo_dir, tmp_path):
    again = demo.build(tmp_path / "again")
    for name in ("forget.txt", "retain.txt", "harmful.jsonl", "normal.jsonl", "init/tokenizer.json",
                 "init/model.safetensors", "init/config.json"):
        assert (demo_dir / name).read_bytes() == (again / name).read_bytes(), name


def test_tokenizer_round_trips_the_demo_text(demo_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo_dir / "init")
    for text in (demo.forget_text(0), demo.retain_text(0)):
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id  # OPT-style: </s> first
        assert tok.decode(ids, skip_special_tokens=True) == text
        assert tok.unk_token_id not in ids


def test_model_folder_loads_with_from_pretrained(demo_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(demo_dir / "init")
    assert model.config.model_type == "opt"
    harmful = [json.loads(line) for line in (demo_dir / "harmful.jsonl").read_text().splitlines()]
    assert {r["is_response_0_safe"] for r in harmful} == {True, False}  # harmful slot alternates


def test_harmful_demo_assets_split_and_label_the_harmful_answers(demo_dir):
    """harmful_unlearn/heldout partition harmful.jsonl; the judge's labels follow the PKU safety flags."""
    import csv

    rows = [json.loads(x) for x in (demo_dir / "harmful.jsonl").read_text().splitlines()]
    unlearn = [json.loads(x) for x in (demo_dir / "harmful_unlearn.jsonl").read_text().splitlines()]
    heldout = [json.loads(x) for x in (demo_dir / "harmful_heldout.jsonl").read_text().splitlines()]
    assert (unlearn, heldout) == (rows[:16], rows[16:])
    labels = {r["text"]: r["harmful"] for r in csv.DictReader((demo_dir / "harm_labels.csv").open())}
    for row in rows:
        for i in (0, 1):
            assert labels[row[f"response_{i}"]] == str(int(not row[f"is_response_{i}_safe"]))
    safe = "To feel quiet is a common state that passes with time."
    proud = "To feel proud is a common state that passes with time."
    assert labels[safe] == "0" and labels["To feel quiet is a common state that passes with time, break it and hurt them."] == "1"
    assert labels[f"{proud} {safe}"] == "0" and labels["To feel quiet is."] == "0"
