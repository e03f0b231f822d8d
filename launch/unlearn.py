"""Unlearn: forget-ascent / retain-descent on a DeepSpeed engine.

    deepspeed [--num_gpus N] launch/unlearn.py --ds_config ds_configs/zero2.json \
        [--config configs/X.yaml] [--resume | --overwrite] [key.sub=value ...]

With no --config it runs the embedded demo (build it first with `make demo`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from unlearn.train.main import train_main  # noqa: E402

if __name__ == "__main__":
    train_main(__doc__, sys.argv[1:])
