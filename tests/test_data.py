"""Data loaders on real files: PKU-SafeRLHF columns (XSTest pairs), TruthfulQA's CSV, books, demo sets."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from unlearn import data, sources
from unlearn.config import Config, DataConfig, TrainConfig
from unlearn.errors import UserError

TEMPLATE = DataConfig().prompt_template


@pytest.fixture(scope="module")
def tok(demo_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_dir / "init")


def _answer_text(tok, sample) -> str:
    return tok.decode([t for t, y in zip(sample["input_ids"], sample["labels"]) if y != data.IGNORE])


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------- PKU-SafeRLHF

def test_pku_one_sample_per_unsafe_response_whichever_slot(shared_data, tok):
    path = shared_data / "xstest" / "xstest_harmful_safe_pairs.jsonl"
    rows = sources.load_rows(str(path))
    slots = {0 if not r["is_response_0_safe"] else 1 for r in rows}
    assert slots == {0, 1}  # the harmful slot really varies in this file
    d = DataConfig(forget_format="auto", max_length=1024)
    samples = data.build_samples(str(path), "forget", tok, d)
    assert len(samples) == len(rows) == 116
    for row, sample in zip(rows, samples):
        unsafe = row["response_0"] if not row["is_response_0_safe"] else row["response_1"]
        assert sample["prompt"] == row["prompt"]
        assert _answer_text(tok, sample) == " " + unsafe + tok.eos_token


def test_pku_rows_with_two_none_or_string_flags(tmp_path, tok):
    rows = [{"prompt": "both", "response_0": "a", "response_1": "b", "is_response_0_safe": False,
             "is_response_1_safe": False},
            {"prompt": "none", "response_0": "c", "response_1": "d", "is_response_0_safe": True,
             "is_response_1_safe": True},
            {"prompt": "strings", "response_0": "e", "response_1": "f", "is_response_0_safe": "true",
             "is_response_1_safe": "False"}]
    pairs = sources.pku_pairs(rows, "x")
    assert pairs == [("both", "a"), ("both", "b"), ("strings", "f")]
    with pytest.raises(UserError, match="no unsafe responses"):
        sources.pku_pairs(rows[1:2], "x")
    with pytest.raises(UserError, match="lacks columns"):
        sources.pku_pairs([{"prompt": "p", "response_0": "r"}], "x")


# ----------------------------------------------------------------------------- TruthfulQA

def test_truthfulqa_csv_with_byte_order_mark_and_seeded_partition(shared_data, tok):
    path = str(shared_data / "truthfulqa" / "TruthfulQA.csv")
    rows = sources.load_rows(path)
    assert "Question" in rows[0] and sources.detect_format(rows, path) == "truthfulqa"  # BOM stripped
    n = len(rows)
    parts = sources.partition(n, (0.7, 0.1, 0.2), 8888)
    assert [len(parts[p]) for p in sources.PARTS] == [int(0.7 * n), int(0.1 * n), n - int(0.7 * n) - int(0.1 * n)]
    assert sorted(sum(parts.values(), [])) == list(range(n))
    assert parts == sources.partition(n, (0.7, 0.1, 0.2), 8888)
    assert parts["train"] != sources.partition(n, (0.7, 0.1, 0.2), 1)["train"]

    d = DataConfig(retain_format="auto", max_length=512)
    samples = data.build_samples(path, "retain", tok, d)
    train_questions = {rows[i]["Question"] for i in parts["train"]}
    assert len(samples) == len(parts["train"])
    assert {s["prompt"] for s in samples} == train_questions
    test = data.build_samples(path, "retain", tok, replace(d, truthfulqa_part="test"))
    assert not train_questions & {s["prompt"] for s in test}
    first = rows[min(parts["train"])]  # samples keep file order
    assert _answer_text(tok, samples[0]).strip() == first["Best Answer"] + tok.eos_token


def test_truthfulqa_answer_pool_is_best_correct_and_incorrect_split_on_semicolons(shared_data):
    rows = sources.load_rows(str(shared_data / "truthfulqa" / "TruthfulQA.csv"))[:3]
    pool = sources.answer_pool(rows, "truthfulqa", "x")
    expected = []
    for r in rows:
        expected.append(r["Best Answer"].strip())
        split = r["Correct Answers"].split(";") + r["Incorrect Answers"].split(";")
        expected += [a.strip() for a in split if a.strip()]
    assert pool == expected and all(";" not in a for a in pool)


def test_truthfulqa_hub_columns_with_answer_lists(tmp_path):
    """The hub dataset (truthfulqa/truthful_qa, generation) uses snake_case columns and lists."""
    path = _write_jsonl(tmp_path / "tqa.jsonl", [
        {"question": "Q1?", "best_answer": "B1", "correct_answers": ["C1", "C2"], "incorrect_answers": ["I1"]},
        {"question": "Q2?", "best_answer": "B2", "correct_answers": [], "incorrect_answers": ["I2", " "]}])
    rows = sources.load_rows(str(path))
    assert sources.detect_format(rows, "x") == "truthfulqa"
    assert sources.answer_pool(rows, "truthfulqa", "x") == ["B1", "C1", "C2", "I1", "B2", "I2"]
    assert sources.qa_pairs(rows, "truthfulqa", "x") == [("Q1?", "B1"), ("Q2?", "B2")]


def test_bad_partition_and_part_are_user_errors():
    with pytest.raises(UserError, match="sum to 1"):
        sources.partition(10, (0.7, 0.1, 0.1), 0)
    with pytest.raises(UserError, match="truthfulqa_part"):
        sources.truthfulqa_rows([{}], "holdout", (0.7, 0.1, 0.2), 0)


# ----------------------------------------------------------------------------- templates and labels

def test_labels_cover_the_answer_only_and_halves_tokenise_like_the_whole(tok):
    s = data.qa_sample("Where is Kalo?", "In the tower.", tok, TEMPLATE, 128)
    whole = tok(TEMPLATE.format(prompt="Where is Kalo?", response="In the tower."))["input_ids"]
    assert s["input_ids"] == whole + [tok.eos_token_id]
    first = next(i for i, y in enumerate(s["labels"]) if y != data.IGNORE)
    assert tok.decode(s["input_ids"][:first]) == tok.bos_token + "### Question: Where is Kalo?\n ### Answer:"
    assert s["labels"][first:] == s["input_ids"][first:]
    assert _answer_text(tok, s) == " In the tower." + tok.eos_token
    no_eos = data.qa_sample("Where is Kalo?", "In the tower.", tok, TEMPLATE, 128, append_eos=False)
    assert no_eos["input_ids"] == whole


def test_custom_template_and_bad_templates(tok):
    s = data.qa_sample("Q {x}", "A", tok, "<{prompt}> => {response} <end>", 64)
    assert _answer_text(tok, s) == " A <end>" + tok.eos_token
    assert tok.decode(s["input_ids"]).startswith(tok.bos_token + "<Q {x}> =>")
    for bad in ("{response} {prompt}", "no fields", "{prompt} {prompt} {response}"):
        with pytest.raises(UserError, match="prompt_template"):
            data.check_template(bad)


def test_collate_masks_padding_by_position_even_when_pad_is_eos(tok):
    a = data.qa_sample("Q", "a long answer here", tok, TEMPLATE, 64)
    b = data.qa_sample("Q", "x", tok, TEMPLATE, 64)
    batch = data.collate([a, b], pad_id=tok.eos_token_id)
    n = len(b["input_ids"])
    assert batch["attention_mask"][1].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
    assert (batch["labels"][1, n:] == data.IGNORE).all()
    assert batch["labels"][1, n - 1] == tok.eos_token_id  # the real EOS stays a label


# ----------------------------------------------------------------------------- text and books

def test_text_is_chunked_to_max_length_without_losing_tokens(demo_dir, tok):
    d = DataConfig(max_length=32)
    samples = data.build_samples(str(demo_dir / "forget.txt"), "forget", tok, d)
    assert all(2 <= len(s["input_ids"]) <= 32 for s in samples) and len(samples) > 5
    assert all(s["labels"] == s["input_ids"] for s in samples)
    text = (demo_dir / "forget.txt").read_text()
    assert sum(len(s["input_ids"]) for s in samples) >= len(tok(text)["input_ids"])


def test_book_sentences_as_prompt_continuation_pairs(shared_data, tok):
    book = shared_data / "books" / "alice_in_wonderland.txt"
    d = DataConfig(forget_format="sentences", prompt_template="{prompt} {response}", append_eos=False,
                   max_length=4096)
    samples = data.build_samples(str(book), "forget", tok, d)
    assert len(samples) > 500
    pairs = sources.sentence_pairs([book.read_text()])
    assert all(p.strip() and c.strip() for p, c in pairs)
    for (prompt, cont), s in list(zip(pairs, samples))[:50]:
        assert s["prompt"] == prompt and _answer_text(tok, s) == " " + cont
    assert pairs[1][0] == pairs[0][1]  # consecutive: each sentence is the next pair's prompt


def test_sentences_never_yield_empty_continuations():
    assert sources.sentence_pairs(["One.   Two!  ", "Solo.", "", "A? B.\n\n C"]) == [
        ("One.", "Two!"), ("A?", "B."), ("B.", "C")]


# ----------------------------------------------------------------------------- errors

def test_unknown_inputs_are_user_errors(tmp_path, tok):
    d = DataConfig()
    with pytest.raises(UserError, match="not found"):
        data.build_samples(str(tmp_path / "missing.jsonl"), "forget", tok, d)
    (tmp_path / "x.tsv").write_text("a\tb\n")
    with pytest.raises(UserError, match="unsupported type"):
        data.build_samples(str(tmp_path / "x.tsv"), "forget", tok, d)
    with pytest.raises(UserError, match="forget_format"):
        data.build_samples(str(tmp_path / "x.tsv"), "forget", tok, replace(d, forget_format="book"))
    odd = _write_jsonl(tmp_path / "odd.jsonl", [{"foo": 1}])
    with pytest.raises(UserError, match="columns"):
        data.build_samples(str(odd), "forget", tok, d)
    with pytest.raises(UserError, match="could not be loaded"):
        sources.load_rows("no-such-owner/no-such-dataset")


# ----------------------------------------------------------------------------- order and random answers

def test_stream_reshuffles_every_epoch_and_covers_each_sample_once_per_epoch():
    stream = data.BatchStream(size=10, global_batch=5, seed=3)
    epochs = [stream.global_indices(2 * e) + stream.global_indices(2 * e + 1) for e in range(4)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 4 and list(range(10)) not in epochs


def test_stream_gives_the_same_global_batch_whatever_the_world_size():
    one = data.BatchStream(size=12, global_batch=4, seed=0)
    two = [data.BatchStream(size=12, global_batch=4, seed=0) for _ in range(2)]
    for _ in range(5):
        whole = sum(one.take(1, 0, 1), [])
        per_rank = [s.take(1, r, 2) for r, s in enumerate(two)]
        assert sorted(whole) == sorted(sum(sum(per_rank, []), []))


def test_length_grouped_stream_keeps_epochs_and_world_sizes_and_pads_little():
    rng = random.Random(0)
    lengths = tuple(rng.randint(5, 300) for _ in range(437))  # 437 = 4 x 50 x 2 + 37: a short last run
    stream = data.BatchStream(size=437, global_batch=2, seed=1, lengths=lengths)
    n = -(-437 // 2)
    epoch0 = [i for b in range(n) for i in stream.global_indices(b)][:437]
    assert sorted(epoch0) == list(range(437))                      # every sample once per epoch
    other_seed = data.BatchStream(size=437, global_batch=2, seed=2, lengths=lengths)
    assert epoch0 != [i for b in range(n) for i in other_seed.global_indices(b)][:437]
    # inside a run of GROUP_BATCHES batches, batches hold disjoint slices of the sorted lengths ...
    run = [stream.global_indices(b) for b in range(data.GROUP_BATCHES)]
    spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in run)
    assert all(hi <= lo_next for (_, hi), (lo_next, _) in zip(spans, spans[1:]))
    # ... in a random order, not longest first
    maxima = [max(lengths[i] for i in b) for b in run]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)
    shuffled = data.BatchStream(size=437, global_batch=2, seed=1)
    real, padded = data.padded_tokens([{"input_ids": [0] * k} for k in lengths], shuffled, 2)
    g_real, g_padded = data.padded_tokens([{"input_ids": [0] * k} for k in lengths],
                                          data.BatchStream(size=437, global_batch=2, seed=1, lengths=lengths), 2)
    assert g_padded / g_real - 1 < 0.1 * (padded / real - 1)  # (the last batch reaches into epoch 1)
    # the same global batches whatever the world size, as without grouping
    one = data.BatchStream(size=437, global_batch=4, seed=0, lengths=lengths)
    two = [data.BatchStream(size=437, global_batch=4, seed=0, lengths=lengths) for _ in range(2)]
    for _ in range(60):
        whole = sum(one.take(1, 0, 1), [])
        assert sorted(whole) == sorted(sum(sum((s.take(1, r, 2) for r, s in enumerate(two)), []), []))


def test_padded_tokens_of_an_epoch():
    samples = [{"input_ids": [0] * k} for k in (3, 5, 4, 4)]
    stream = data.BatchStream(size=4, global_batch=2, seed=0, shuffle=False)
    assert data.padded_tokens(samples, stream, micro_batch=2) == (16, 18)  # (3,5)->10, (4,4)->8
    with pytest.raises(ValueError, match="3 lengths for 4 samples"):
        data.BatchStream(size=4, global_batch=2, seed=0, lengths=(1, 2, 3))


def test_random_answers_drawn_per_step_for_the_batch_prompts(demo_dir, tok):
    cfg = Config(data=DataConfig(forget=str(demo_dir / "harmful.jsonl"), retain=str(demo_dir / "normal.jsonl"),
                                 num_random_answers=3, max_length=64), train=TrainConfig(seed=5))
    forget = data.build_samples(cfg.data.forget, "forget", tok, cfg.data)
    sampler = data.random_answers(cfg, tok, forget)
    pool = set(sampler.pool)
    out = sampler.samples([forget[4], forget[7]], [4, 7], step=0)
    assert len(out) == 6 and [s["prompt"] for s in out] == [forget[4]["prompt"]] * 3 + [forget[7]["prompt"]] * 3
    answers = [_answer_text(tok, s)[1:-len(tok.eos_token)] for s in out]
    assert set(answers) <= pool and len(set(answers[:3])) == 3
    assert out == sampler.samples([forget[4], forget[7]], [4, 7], step=0)  # reproducible (resume, ranks)
    later = [sampler.samples([forget[4]], [4], step=s) for s in range(1, 6)]
    assert any(x != out[:3] for x in later)  # fresh answers on later steps
    text_forget = data.build_samples(str(demo_dir / "forget.txt"), "forget", tok, cfg.data)
    with pytest.raises(UserError, match="needs prompts"):
        data.random_answers(cfg, tok, text_forget)


def test_collated_batch_shapes(tok):
    batch = data.collate([data.qa_sample("Q", "A", tok, TEMPLATE, 32)] * 2, tok.pad_token_id)
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    assert all(v.dtype == torch.long and v.shape == batch["input_ids"].shape for v in batch.values())


def test_hub_sources_pass_subset_split_and_revision(monkeypatch, tok):
    """The presets' hub path (unreachable here): datasets.load_dataset gets the id, configuration
    name, split and pinned revision, and hub-style rows flow through the same formats."""
    import datasets

    calls = []
    tables = {"PKU-Alignment/PKU-SafeRLHF": [
        {"prompt": "p0", "response_0": "bad0", "response_1": "ok", "is_response_0_safe": False,
         "is_response_1_safe": True, "better_response_id": 1, "safer_response_id": 1}],
        "truthfulqa/truthful_qa": [{"type": "t", "category": "c", "question": f"Q{i}?", "best_answer": f"B{i}",
                                    "correct_answers": [f"C{i}"], "incorrect_answers": [f"I{i}"], "source": ""}
                                   for i in range(10)]}

    def fake_load_dataset(path, name=None, split=None, revision=None, **kwargs):
        calls.append((path, name, split, revision))
        return datasets.Dataset.from_list(tables[path])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    from tests.conftest import ROOT
    from unlearn.config_io import load_config

    cfg, _ = load_config([str(ROOT / "configs" / "harmful_opt1.3b.yaml")])
    forget = data.build_samples(cfg.data.forget, "forget", tok, cfg.data)
    retain = data.build_samples(cfg.data.retain, "retain", tok, cfg.data)
    assert calls == [("PKU-Alignment/PKU-SafeRLHF", None, "train", "v0"),
                     ("truthfulqa/truthful_qa", "generation", "validation", None)]
    assert [s["prompt"] for s in forget] == ["p0"] and _answer_text(tok, forget[0]) == " bad0"  # no EOS (preset)
    assert len(retain) == 7  # the 70% train part of 10 questions
    train_ids = [s["prompt"][1:-1] for s in retain]  # "Q3?" -> "3"
    pool = data.random_answers(cfg, tok, forget).pool  # best + correct + incorrect of the train part
    assert sorted(pool) == sorted(f"{kind}{i}" for i in train_ids for kind in "BCI")


def test_length_chunks_minimise_padding_plus_pass_cost():
    import itertools
    import random

    def best(lengths, cost):  # every cut of the sorted order
        s, n = sorted(lengths), len(lengths)
        return min(sum(cost + (b - a) * s[b - 1] for a, b in zip((0, *cuts), (*cuts, n)))
                   for k in range(n) for cuts in itertools.combinations(range(1, n), k))

    rng = random.Random(0)
    for _ in range(200):
        lengths, cost = [rng.randint(1, 60) for _ in range(rng.randint(1, 8))], rng.randint(0, 80)
        chunks = data.length_chunks(lengths, cost)
        assert sorted(i for c in chunks for i in c) == list(range(len(lengths)))
        assert sum(cost + len(c) * max(lengths[i] for i in c) for c in chunks) == best(lengths, cost)
    assert data.length_chunks([5, 3, 9, 100, 101, 4], 10) == [[1, 5, 0], [2], [3, 4]]
    assert data.length_chunks([5, 3, 9, 100, 101, 4], 10**9) == [[1, 5, 0, 2, 3, 4]]  # one pass
    assert data.length_chunks([7, 7, 7], 0) == [[0, 1, 2]]  # equal lengths never split
