"""AltPO's first step: the model to be unlearned writes alternate answers to its forget prompts.

    python launch/generate_alternates.py --config RUN.yaml --out alternates.jsonl [--repeats 5] \
        [--max_new_tokens 200] [--temperature 1.0] [--greedy] [--template TEXT] [key.sub=value ...]

Reads model.name_or_path and data.forget of the run config (QA-like; `sentences` for a book) and writes
JSON lines {question, answer, alternate}; the run then reads that file as data.forget with
configs/methods/altpo.yaml (unlearn/altpo.py says how the answers are drawn).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from unlearn.errors import guarded  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    from unlearn.altpo import TEMPLATE, Sampling

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", default=[], help="run YAML (repeatable; later files win)")
    p.add_argument("--out", required=True, help="the JSON-lines file to write")
    p.add_argument("--repeats", type=int, default=Sampling.repeats, help="alternates per forget prompt")
    p.add_argument("--max_new_tokens", type=int, default=Sampling.max_new_tokens)
    p.add_argument("--temperature", type=float, default=Sampling.temperature)
    p.add_argument("--greedy", action="store_true", help="greedy decoding (one alternate per prompt: --repeats 1)")
    p.add_argument("--template", default=TEMPLATE, help="the instruction, with {question} and {answer}")
    p.add_argument("--stop", action="append", default=None, help="cut each alternate here (default: Question:)")
    p.add_argument("--batch_size", type=int, default=Sampling.batch_size)
    p.add_argument("--seed", type=int, default=Sampling.seed)
    p.add_argument("--tries", type=int, default=Sampling.tries, help="draws of an empty alternate before giving up")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="run config overrides")
    args = p.parse_args(argv)

    def job() -> None:
        from unlearn import altpo
        from unlearn.config_io import load_config

        cfg, _ = load_config(args.config, args.overrides)
        stop = tuple(args.stop) if args.stop is not None else Sampling.stop
        altpo.run(cfg, args.out, Sampling(args.repeats, args.max_new_tokens, args.temperature, args.greedy, stop,
                                          args.template, args.batch_size, seed=args.seed, tries=args.tries))

    guarded(job)


if __name__ == "__main__":
    main()
