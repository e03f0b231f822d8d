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


DEFAULT_PORT = 29500
"""DeepSpeed's default rendezvous port (deepspeed.constants.TORCH_DISTRIBUTED_DEFAULT_PORT)."""


def test_make_demo_while_another_program_holds_port_29500(demo_dir, tmp_path):
    """A real listening socket on 29500: `make demo` gives each deepspeed command a free port of its own,
    and a deepspeed command pinned to the taken port stops with one line naming it, exit 2, nothing created."""
    import socket
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import ROOT, child_env

    other = socket.socket()
    try:
        try:
            other.bind(("", DEFAULT_PORT))
            other.listen()
        except OSError:  # some other program on this machine holds it already: the same situation
            pass
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "1", "--master_port", str(DEFAULT_PORT),
             str(ROOT / "launch" / "unlearn.py"), "--ds_config", str(ROOT / "ds_configs" / "zero2.json"), "--no_report",
             f"model.name_or_path={demo_dir / 'init'}", f"data.forget={demo_dir / 'forget.txt'}",
             f"data.retain={demo_dir / 'retain.txt'}", f"run.output_dir={tmp_path / 'runs'}", "run.name=port"],
            capture_output=True, text=True, timeout=300, cwd=ROOT, env=child_env())
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert errors == [f"error: port {DEFAULT_PORT} (MASTER_PORT, where the ranks meet) is in use by another "
                          "program; expected a free port: deepspeed --master_port N ... (make demo PORT=N; make picks "
                          "a free one itself)"] and "Traceback" not in proc.stderr
        assert not (tmp_path / "runs" / "port").exists()
        # -W: as if the stage-1 config had changed, so both fine-tunes show even where they are built
        recipe = subprocess.run(["make", "-n", "-W", "configs/demo_finetune.yaml", "demo"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.replace("\\\n", " ")
        commands = [line.split() for line in recipe.splitlines() if line.split()[:1] == ["deepspeed"]]
        assert [c[c.index("--master_port") + 2] for c in commands] == ["launch/finetune.py", "launch/finetune.py",
                                                                        "launch/unlearn.py"]  # base, oracle, job
        for words in commands:
            with socket.socket() as probe:  # the port make chose is free while 29500 is taken
                probe.bind(("", int(words[words.index("--master_port") + 1])))
    finally:
        other.close()
