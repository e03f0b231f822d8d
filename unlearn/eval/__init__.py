"""Evaluation: suites that score a checkpoint, and the tables a person reads.

job.py           evaluate a checkpoint or a run: check every suite's inputs, then run the suites (entry)
inputs.py        each suite's inputs checked before the first suite runs (every suite module has check(ctx))
record.py        eval.json after every suite (`incomplete` until all finished), TensorBoard scalars, the table
context.py       what every suite needs: model (loaded at first use), run config, options (CLI flags), reference cache
harmful.py       harmful rate, refusal rate, effectiveness E (judged on the response only)
copyright.py     verbatim and knowledge memorisation
utility.py       retain perplexity, TruthfulQA MC1/MC2, similarity to the original, degeneration
privacy.py       Min-k% membership AUC, PrivLeak (MUSE's: per document)
judges.py        load_judge: keyword_judge.py (refusal rules), classifier, generative_judge.py (Llama-Guard style)
judge_eval.py    a judge's accuracy against human labels (XSTest); judge_training.py trains a classifier judge
mc.py            multiple-choice accuracy (WMDP, MMLU) as lm-evaluation-harness scores it
muse.py          MUSE's KnowMem (forget/retain) and VerbMem
truthfulqa.py    TruthfulQA MC1/MC2, lm-evaluation-harness's standard variant (utility suite)
tofu.py          TOFU as open-unlearning reports it: tofu_metrics.py formulas, tofu_logs.py per-sample values ->
                 metrics and files, tofu_mia.py mia_min_k and privleak
loglik.py        continuation log-likelihoods as the harness computes them; specs.py hub ID:CONFIG
generation.py    batched greedy decoding, per-token log-probs; textmetrics.py ROUGE-L, BLEU
stats.py         bootstrap intervals, AUC
summary.py       a run's evals across checkpoints: CSV, PNG
before_after.py  the table at the end of a training run (entry for unlearn.train.main)
"""
