"""Training: unlearning (and stage-1 fine-tuning) on a DeepSpeed engine.

main.py        the job behind launch/unlearn.py and launch/finetune.py (entry)
loop.py        the run: `train(cfg, ds_config, ...)`: inputs checked, engine, resume, steps, saves, guards
step.py        one optimizer step of the objective (Loop.step) and the reference model's logits
schedule.py    which phase each step runs (alternate | joint)
engine.py      the DeepSpeed engine from a declarative JSON plus the run config
zero_step.py   ZeRO-1/2's optimizer step with one host-device sync (train.one_sync_step)
preflight.py   config checks that run before anything is loaded
rundir.py      runs/<name>/: created once, never clobbered
checkpoint.py  atomic, self-describing checkpoints; export
resume.py      exact resume: step, guard counters, data positions
guards.py      non-finite steps skipped, preemption -> checkpoint -> exit 3
dual.py        PDU's dual variable lambda (per step or per micro-batch)
task_vector.py Task Vector: fine-tune on the forget set, then theta - alpha (theta_ft - theta)
"""
