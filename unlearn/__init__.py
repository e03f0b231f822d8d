"""unlearn: make large language models forget, with DeepSpeed on SLURM clusters.

Foundations (every phase imports them; they import no phase):
  config, config_io   frozen run config, YAML + key=value overrides     errors   UserError, exit codes
  sources, data, sets  rows -> samples -> a run's forget/retain sets     distributed  ranks (DistEnv)
  rows, textfiles      every row checked (file, line, field); UTF-8 files read with the byte offset named
  alternates           "I don't know" / column / generic answers to forget prompts (IdkNLL, DPO, IdkDPO, WHP)
  altpo, whp           AltPO's self-written alternates; WHP's generic labels from a reinforced model
  losses, methods      loss math and the registry of forget/retain terms  model   policy, LoRA, reference
  rmu                  RMU's layer taps, vector u and trainable-layer choice
  runs                 a run folder's layout (checkpoints, COMPLETE)      logger  TensorBoard/console
  demo                 the embedded demo (text, tokenizer, tiny OPT)       tofu_mini  make tofu-mini's data + model
Phases (launch/ calls them; a phase uses another only through its entry module):
  train/  the loop on a DeepSpeed engine: main (entry), loop, engine, checkpoint, resume, guards, ...
  eval/   one module per suite, judges, generation, text metrics, stats; job (entry) writes eval.json
  sweep/  grid planning, submitit jobs, cluster profiles, the report; submit (entry)
  bench/  our step vs the reference loop; runner (entry)
"""

__version__ = "0.1.0"
