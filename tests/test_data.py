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


# ----------------------------------------------------------------------------- rows that cannot be used

def _tables(root: Path) -> dict[str, tuple[str, str, str]]:
    """One table per format, its third row unusable: name -> (file, format, where the error must point)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    qa = [{"question": "q1", "answer": "a1"}, {"question": "q2", "answer": "a2"}, {"question": "q3", "answer": None}]
    root.mkdir(exist_ok=True)
    _write_jsonl(root / "qa.jsonl", qa[:1]).write_text(json.dumps(qa[0]) + "\n\n" + json.dumps(qa[1]) + "\n"
                                                       + json.dumps({"question": "q3"}) + "\n")  # a blank line
    (root / "qa.json").write_text(json.dumps(qa))
    (root / "qa.csv").write_text('question,answer\nq1,a1\n"q2\nwraps",a2\nq3,\n')  # a cell over two lines
    pq.write_table(pa.Table.from_pylist(qa), root / "qa.parquet")
    pku = {"response_0": "r0", "response_1": "r1", "is_response_0_safe": True, "is_response_1_safe": False}
    _write_jsonl(root / "pku.jsonl", [{"prompt": "p1", **pku}, {"prompt": "p2", **pku},
                                      {"prompt": "p3", **pku, "response_1": " "}])  # its unsafe slot is blank
    tqa = "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers\n"
    (root / "tqa.csv").write_text(tqa + "".join(f"A,B,Q{i}?,best {i},c,w\n" for i in range(9)) + "A,B,Q9?,,c,w\n")
    return {"jsonl": (str(root / "qa.jsonl"), "qa", "line 4 has no 'answer'"),
            "json": (str(root / "qa.json"), "qa", "row 3 has no 'answer'"),
            "csv": (str(root / "qa.csv"), "qa", "line 5 has no 'answer'"),
            "parquet": (str(root / "qa.parquet"), "qa", "row 3 has no 'answer'"),
            "pku": (str(root / "pku.jsonl"), "pku", "line 3 has no 'response_1'"),
            "truthfulqa": (str(root / "tqa.csv"), "truthfulqa", "line 11 has no 'Best Answer'")}


def test_a_row_that_cannot_be_used_is_an_error_naming_file_line_and_field(tmp_path, tok, capsys):
    """A forget row without `answer` was dropped silently (3 rows -> 2 samples): in every tabular format it
    is now an error naming the file, the row's line and the field; data.skip_bad_rows=true leaves it out
    and says how many. TruthfulQA rows are named by their line in the file, not in the seeded part."""
    for name, (path, fmt, where) in _tables(tmp_path).items():
        d = replace(DataConfig(), forget_format=fmt, truthfulqa_part="all" if fmt == "truthfulqa" else "train")
        with pytest.raises(UserError) as info:
            data.build_samples(path, "forget", tok, d)
        assert f"data '{path}' {where} (null or blank); expected" in str(info.value), name
        assert "data.skip_bad_rows=true" in str(info.value)
        kept = data.build_samples(path, "forget", tok, replace(d, skip_bad_rows=True))
        assert len(kept) == {"pku": 2, "truthfulqa": 9}.get(fmt, 2), name
        assert f"skipped 1 of {10 if fmt == 'truthfulqa' else 3} rows" in capsys.readouterr().out, name
    tqa = _tables(tmp_path)["truthfulqa"][0]
    d = replace(DataConfig(), retain_format="truthfulqa", truthfulqa_part="test", truthfulqa_fractions=(0.0, 0.0, 1.0))
    with pytest.raises(UserError, match="line 11 has no 'Best Answer'"):
        data.read(tqa, "retain", d)


def test_tofu_splits_and_eval_tables_check_every_row(tmp_path):
    from unlearn.eval import mc, tofu

    folder = tmp_path / "tofu"
    folder.mkdir()
    row = {"question": "q", "answer": "a", "paraphrased_answer": "p", "perturbed_answer": ["x", "y"]}
    (folder / "forget01.json").write_text(json.dumps([row, {**row, "paraphrased_answer": ""}]))
    with pytest.raises(UserError, match=r"forget01.json' row 2 has no 'paraphrased_answer'"):
        tofu.load_split(str(folder), "forget01_perturbed", fields=tofu.SPLIT_FIELDS["forget"])
    assert len(tofu.load_split(str(folder), "forget01_perturbed", fields=tofu.SPLIT_FIELDS["forget"], skip=True)) == 1
    with pytest.raises(UserError, match="row 2 has no 'question'"):
        mc.items([{"question": "Q", "choices": ["a", "b"], "answer": 0}, {"choices": ["a", "b"], "answer": 0}], "f")


def test_files_that_are_not_utf8_are_one_line_naming_the_byte_offset(tmp_path, tok):
    """A .txt gave a 69-line DatasetGenerationError, a .jsonl a UnicodeDecodeError: every local format and
    every other user file read as text (answers, configs, DeepSpeed JSON, saved evaluations) now names
    the file, the byte and its offset."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from unlearn import alternates
    from unlearn.config_io import load_config
    from unlearn.eval import harmful, judge_eval, tofu_metrics
    from unlearn.train.engine import read_ds_config

    latin1 = "Caf\u00e9 society".encode("latin-1")  # byte 0xe9 at offset 3 of its line
    files = {"book.txt": b"line one\n" + latin1 + b"\n", "rows.jsonl": b'{"text": "ok"}\n{"text": "' + latin1 + b'"}\n',
             "rows.json": b'[{"text": "' + latin1 + b'"}]', "rows.csv": b"text\n" + latin1 + b"\n",
             "answers.txt": latin1, "config.yaml": b"run:\n  name: " + latin1, "ds.json": b'{"a": "' + latin1 + b'"}',
             "TOFU_EVAL.json": b'{"a": "' + latin1 + b'"}', "prompts.json": b'["' + latin1 + b'"]',
             "labels.csv": b"prompt,completion,final_label\n" + latin1 + b",x,1_full_compliance\n"}
    for name, raw in files.items():
        (tmp_path / name).write_bytes(raw)
    readers = {"book.txt": lambda p: data.build_samples(p, "forget", tok, DataConfig()),
               "rows.jsonl": sources.load_rows, "rows.json": sources.load_rows, "rows.csv": sources.load_rows,
               "answers.txt": alternates.read_answers, "config.yaml": lambda p: load_config([p]),
               "ds.json": read_ds_config, "TOFU_EVAL.json": lambda p: tofu_metrics.read_ratios(Path(p), 1, "forget01"),
               "prompts.json": harmful.load_prompts, "labels.csv": judge_eval.read_labels}
    for name, read in readers.items():
        path = str(tmp_path / name)
        with pytest.raises(UserError) as info:
            read(path)
        offset = files[name].index(b"\xe9")  # the first byte that is not UTF-8, and its line
        lines = files[name][:offset].count(b"\n") + 1
        assert f"'{path}' is not UTF-8 text: byte 0xe9 at offset {offset} (line {lines})" in str(info.value), name
    cell = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"text": pa.array([b"ok", latin1], pa.binary())}), cell)
    with pytest.raises(UserError, match="row 2 column 'text' is not UTF-8 text: byte 0xe9 at offset 3"):
        sources.load_rows(str(cell))
    (tmp_path / "broken.jsonl").write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(UserError, match="could not be read as jsonl: line 2: Expecting value"):
        sources.load_rows(str(tmp_path / "broken.jsonl"))


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
