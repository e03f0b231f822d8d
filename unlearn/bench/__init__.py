"""Benchmark of the unlearning step: this project's loop vs a re-implementation of the paper's loop.

presets.py   model shapes (tiny, OPT-125m ... OPT-6.7b), variants, random-weight model folders
baseline.py  the reference loop: fp32 AdamW, a full fp32 reference copy, three summed losses
ours.py      our step through unlearn.train.step / unlearn.train.engine (DeepSpeed)
measure.py   time and memory of one variant (run in its own process for an honest peak RSS)
runner.py    all variants side by side: JSON + a short table
"""
