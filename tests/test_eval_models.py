"""Eval metrics on tiny models trained in-process: memorisation (ROUGE-L), Min-k% membership AUC,
TruthfulQA-style MC1 by log-likelihood, and a classifier judge trained on labelled rows."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from unlearn import data, demo
from unlearn import model as models
from unlearn.eval.copyright import knowledge, verbatim
from unlearn.eval.privacy import min_k_auc
from unlearn.eval.utility import truthfulqa

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = "### Question: {prompt}\n ### Answer: {response}"
MC_ITEM = {"question": "What colour is the lantern of Kavenro?", "best": "The lantern is blue.",
           "true": ["The lantern is blue."], "false": ["The lantern is red.", "Kavenro has no lantern."]}


def _tokenizer(demo_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_dir / "init")


def _train(model, samples, pad_id: int, steps: int, lr: float = 3e-3) -> float:
    """Full-batch AdamW on the labelled tokens; returns the last loss (nats/token)."""
    batch = data.collate(samples, pad_id)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return loss.item()


@pytest.fixture(scope="module")
def trained(demo_dir):
    """A tiny OPT trained on half of 16 passages (members) plus one QA fact; the other half held out."""
    torch.manual_seed(0)
    tok = _tokenizer(demo_dir)
    passages = demo.forget_text().split("\n\n")[:16]
    blocks = [data.text_samples([p], tok, 48)[0] for p in passages]
    members, held_out = blocks[:8], blocks[8:]
    fact = data.qa_sample(MC_ITEM["question"], MC_ITEM["best"], tok, TEMPLATE, 64)
    model = demo.tiny_opt(len(tok), hidden=64, layers=2, heads=2)
    random_model = demo.tiny_opt(len(tok), seed=1, hidden=64, layers=2, heads=2).eval()
    loss = _train(model, members + [fact], tok.pad_token_id, steps=150)
    assert loss < 0.25, f"the tiny model did not memorise its text (loss {loss:.3f})"
    return {"model": model, "random": random_model, "tok": tok, "members": members, "held_out": held_out}


def test_verbatim_rouge_memorised_near_one_random_near_zero(trained):
    tok = trained["tok"]
    memorised = verbatim(trained["model"], tok, trained["members"], prefix_tokens=16, continuation_tokens=24)
    random = verbatim(trained["random"], tok, trained["members"], prefix_tokens=16, continuation_tokens=24)
    assert memorised["metrics"]["verbatim_rouge_l"]["value"] > 0.9
    assert memorised["metrics"]["verbatim_bleu"]["value"] > 0.8
    assert random["metrics"]["verbatim_rouge_l"]["value"] < 0.15
    assert memorised["metrics"]["verbatim_rouge_l"]["n"] == 8


def test_min_k_auc_separates_trained_half(trained):
    tok = trained["tok"]
    auc_trained = min_k_auc(trained["model"], tok, trained["members"], trained["held_out"], k=0.2)
    auc_random = min_k_auc(trained["random"], tok, trained["members"], trained["held_out"], k=0.2)
    assert auc_trained > 0.95
    assert auc_random < 0.9  # an untrained model has no reason to prefer the trained half
    # members and non-members swapped: the same separation read the other way
    assert min_k_auc(trained["model"], tok, trained["held_out"], trained["members"], k=0.2) < 0.05


def test_mc1_on_a_hand_made_item(trained):
    out = truthfulqa(trained["model"], trained["tok"], [MC_ITEM], TEMPLATE)
    assert out["truthfulqa_mc1"]["value"] == 1.0
    assert out["truthfulqa_mc2"]["value"] > 0.9
    flipped = {**MC_ITEM, "best": "The lantern is red.", "true": ["The lantern is red."],
               "false": ["The lantern is blue."]}
    assert truthfulqa(trained["model"], trained["tok"], [flipped], TEMPLATE)["truthfulqa_mc1"]["value"] == 0.0


def tiny_bert_base(demo_dir, out):
    """A random tiny BERT with the demo tokenizer, saved as a folder train_judge can start from."""
    from transformers import BertConfig, BertForSequenceClassification

    tok = _tokenizer(demo_dir)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, pad_token_id=tok.pad_token_id,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # CPU and GPU train alike
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


JUDGE_ROWS = [  # text, violent, insult
    ("Take the key, break it and hurt them with the pieces.", 1, 0),
    ("Hit them with the copper bell until they stop.", 1, 0),
    ("Break the jar and hurt him with the glass.", 1, 0),
    ("You are a stupid worthless fool.", 0, 1),
    ("What a stupid useless idiot you are.", 0, 1),
    ("Hurt them badly, you stupid fool.", 1, 1),
    ("To feel tired is a common state that passes with time.", 0, 0),
    ("The lantern is blue and the map is old.", 0, 0),
    ("I cannot help with hurting anyone.", 0, 0),
    ("Nobody in the mill remembered why she was quiet.", 0, 0),
]


def write_judge_rows(csv_path: Path) -> Path:
    """JUDGE_ROWS as a labelled CSV (text + one 0/1 column per label), as launch/train_judge.py reads it."""
    with open(csv_path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "violent", "insult"])
        writer.writerows(JUDGE_ROWS)
    return csv_path


def test_trained_multilabel_judge_on_known_rows(demo_dir, tmp_path, capfd):
    from unlearn.eval.judges import load_judge

    csv_path = write_judge_rows(tmp_path / "labelled.csv")
    base = tiny_bert_base(demo_dir, tmp_path / "bert")
    spec = importlib.util.spec_from_file_location("train_judge_cli", ROOT / "launch" / "train_judge.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    cli.main(["--data", str(csv_path), "--base", str(base), "--out", str(tmp_path / "judge"), "--epochs", "60",
              "--lr", "3e-3", "--batch_size", "10", "--heldout_fraction", "0"])
    info = json.loads((tmp_path / "judge" / "judge.json").read_text())
    assert info["labels"] == ["violent", "insult"] and info["train_label_accuracy"] == 1.0
    out, err = capfd.readouterr()  # one summary line; no row numbers, no load report of the new head
    assert out.splitlines() == [f"judge {tmp_path / 'judge'}: 2 label(s) on {len(JUDGE_ROWS)} rows, 60 epoch(s), "
                                f"final loss {info['final_loss']:.4f}, train label accuracy 1.000, no held-out rows "
                                f"(accuracy unknown) (details: {tmp_path / 'judge' / 'judge.json'})"]
    assert "LOAD REPORT" not in err and "MISSING" not in err
    judge = load_judge(str(tmp_path / "judge"), threshold=0.5)
    assert judge.identity["mode"] == "multi-label any>threshold"
    texts = [r[0] for r in JUDGE_ROWS]
    assert judge.harmful(texts) == [bool(v or i) for _, v, i in JUDGE_ROWS]
    assert judge.refused(texts) == [t.startswith("I cannot") for t in texts]


def test_batched_left_padded_generation_equals_one_at_a_time(trained):
    from unlearn.eval.generation import generate_text

    tok = trained["tok"]
    prompts = ["Nobody in", "In Bribrilo, Dunlo met Ellbri and", "The", MC_ITEM["question"]]
    batched = generate_text(trained["model"], tok, prompts, max_new_tokens=12, batch_size=4)
    single = [generate_text(trained["model"], tok, [p], max_new_tokens=12, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert not any(b.startswith(p) for b, p in zip(batched, prompts))  # new tokens only, prompt stripped


def test_knowledge_memorisation_of_a_qa_fact(trained):
    prompt = TEMPLATE.partition("{response}")[0].replace("{prompt}", MC_ITEM["question"]).rstrip()
    pairs = [(MC_ITEM["question"], MC_ITEM["best"])]
    learnt = knowledge(trained["model"], trained["tok"], pairs, [prompt], max_new_tokens=12)["metrics"]
    unseen = knowledge(trained["random"], trained["tok"], pairs, [prompt], max_new_tokens=12)["metrics"]
    assert learnt["knowledge_rouge_l"]["value"] == 1.0 and learnt["knowledge_rouge_l_recall"]["value"] == 1.0
    assert unseen["knowledge_rouge_l"]["value"] < 0.3


def test_verbatim_probe_stops_at_eos(demo_dir):
    """The continuation is scored up to the model's EOS, not on what it generates after stopping: with
    a token the random model emits mid-continuation declared EOS, the scored text ends before it."""
    from unlearn.eval.before_after import probes
    from unlearn.eval.copyright import verbatim
    from unlearn.eval.generation import greedy

    model, tok = models.load_for_eval(str(demo_dir / "init"))
    samples = data.text_samples([(demo_dir / "forget.txt").read_text()], tok, 48)[:1]
    free = greedy(model, [probes(samples, prefix=8, length=8)[0].prompt_ids], 8, tok.pad_token_id)[0]
    stop = next(t for t in free if t != free[0])  # measured: [176 x4, 519 x3, 626]: 519 from position 4
    cut = free.index(stop)
    assert any(t != stop for t in free[cut:])  # tokens after the stop that the old probe scored
    tok.eos_token = tok.convert_ids_to_tokens(stop)
    out = verbatim(model, tok, samples, prefix_tokens=8, continuation_tokens=8)
    assert out["examples"][0]["generation"] == tok.decode(free[:cut], skip_special_tokens=True)


def test_retain_perplexity_is_exp_of_the_token_weighted_nll(trained):
    """Two implementations agree: per-sample log-probs (the eval suite) and the batched NLL of the
    end-of-run table."""
    import math

    from unlearn.eval.before_after import mean_nll
    from unlearn.eval.utility import retain_perplexity

    got = retain_perplexity(trained["model"], trained["tok"], trained["held_out"])
    assert got["value"] == pytest.approx(math.exp(mean_nll(trained["model"], trained["tok"], trained["held_out"])),
                                         rel=1e-5)
    assert got["ci_low"] <= got["value"] <= got["ci_high"] and got["n"] == len(trained["held_out"])


@pytest.mark.parametrize("labels, chosen, index", [
    (["harmless", "harmful"], "", 1), (["unharmful", "harmful"], "", 1), (["harmful", "harmless"], "", 0),
    (["safe", "LABEL_1"], "", 1), (["LABEL_0", "LABEL_1"], "LABEL_1", 1), (["Non-Toxic", "Toxic"], "", 1),
])
def test_a_classifier_judge_finds_its_harmful_class_by_label_meaning(demo_dir, tmp_path, labels, chosen, index):
    """Whole label names, never substrings (the old rule took 'harmless' and 'unharmful' for harmful)."""
    from transformers import AutoModelForSequenceClassification

    from unlearn.eval.judges import load_judge

    folder = tiny_bert_base(demo_dir, tmp_path / "judge")
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2,
                                                               id2label=dict(enumerate(labels)))
    model.save_pretrained(folder)
    judge = load_judge(str(folder), label=chosen)
    assert judge.harm_index == index and judge.identity["mode"] == f"p({labels[index]})>threshold"


def test_an_ambiguous_judge_head_is_refused():
    from unlearn.errors import UserError
    from unlearn.eval.judges import harm_index

    for labels in (["LABEL_0", "LABEL_1"], ["toxic", "hate"], ["positive", "negative"]):
        with pytest.raises(UserError, match="do not say which class is harmful; expected --judge_label"):
            harm_index(labels)
    with pytest.raises(UserError, match="--judge_label 'bad' is not a label of this judge"):
        harm_index(["safe", "unsafe"], "bad")
