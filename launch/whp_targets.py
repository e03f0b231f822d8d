"""WHP's generic targets: the run's model and its reinforced model (method.whp_reinforced) label the forget set.

    python launch/whp_targets.py --config RUN.yaml [--batch_size 16] [key.sub=value ...]

Writes data.whp_targets (the forget samples with labels argmax(v_base - alpha ReLU(v_reinforced - v_base)),
alpha = method.whp_alpha; unlearn/whp.py), which the run with method.forget_loss=whp then trains on.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from unlearn.errors import guarded  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", default=[], help="run YAML (repeatable; later files win)")
    p.add_argument("--batch_size", type=int, default=16, help="forget samples per forward pass")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="run config overrides")
    args = p.parse_args(argv)

    def job() -> None:
        from unlearn import whp
        from unlearn.config_io import load_config

        cfg, _ = load_config(args.config, args.overrides)
        whp.write_targets(cfg, args.batch_size)

    guarded(job)


if __name__ == "__main__":
    main()
