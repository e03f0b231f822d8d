"""Fine-tune (stage 1 of the copyright pipeline): NLL descent on data.retain, so the model knows a text.

    deepspeed [--num_gpus N] launch/finetune.py --ds_config ds_configs/zero2.json \
        [--config configs/X.yaml] [--resume | --overwrite] [key.sub=value ...]

Same config as unlearning, with method.forget_loss=none and method.retain_loss=nll by default.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from unlearn.config import FINETUNE_DEFAULTS  # noqa: E402
from unlearn.train.main import train_main  # noqa: E402

if __name__ == "__main__":
    train_main(__doc__, sys.argv[1:], defaults=FINETUNE_DEFAULTS)
