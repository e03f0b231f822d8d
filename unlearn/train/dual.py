"""PDU's dual variable: the retain weight lambda of GradDiff, moved by projected dual ascent.

Entesari et al. 2025 ("Constrained Entropic Unlearning: A Primal-Dual Framework for LLMs") and
open-unlearning's PDU trainer: minimise L_forget + lambda (L_retain - eps); after each step that
measured a retain loss, lambda <- max(0, lambda + eta (L_retain - eps)). lambda starts at
method.retain_weight (their alpha) and moves only once warm-up is over (method.pdu_warmup_epochs
forget-set epochs; theirs counts the same anchor set's epochs).

When it moves (method.pdu_update):
  step         (default) once per optimizer step, with the retain loss averaged over the step's
               micro-batches and ranks: the same under every layout (ZeRO stage, world size,
               gradient accumulation).
  micro_batch  after every micro-batch, with that micro-batch's retain loss averaged over ranks (one
               more all-reduce of a float per micro-batch): open-unlearning's rule, where lambda is
               moved inside compute_loss, so a step with gradient accumulation k moves it k times and
               each micro-batch's retain term is weighted by the lambda its predecessors left. At one
               rank this is theirs exactly; across ranks theirs lets each rank's lambda drift apart
               on its own data, ours keeps one lambda. At their accumulation of 4, lambda moves 4x as
               fast as under `step`.
Under the alternate schedule it moves after each retain step (or micro-batch); with Adam a
retain-only step's scale mostly cancels, so lambda acts through the joint schedule (the paper's) and
gradient clipping.

lambda lives in the run State (`State.dual`), saved in every checkpoint and restored on resume.
"""

from __future__ import annotations

import math

from unlearn import distributed
from unlearn.errors import UserError

KEY = "pdu_lambda"
METRIC = "pdu/lambda"
UPDATES = ("step", "micro_batch")
"""Values of method.pdu_update."""


def check(method) -> None:
    """forget_loss=pdu needs eps and a retain loss; other methods ignore the pdu_* fields."""
    if method.forget_loss != "pdu":
        return
    if method.pdu_eps is None:
        raise UserError("method.forget_loss=pdu needs method.pdu_eps, the retain-loss bound of its dual update; "
                        "expected a value a little above the model's retain loss at the start (e.g. 0.3)")
    if method.retain_loss == "none":
        raise UserError("method.forget_loss=pdu constrains the retain loss, but method.retain_loss=none; "
                        "expected nll or kl")
    if method.pdu_update not in UPDATES:
        raise UserError(f"method.pdu_update '{method.pdu_update}' is unknown; expected one of: {', '.join(UPDATES)}")
    if method.pdu_eta < 0 or method.pdu_warmup_epochs < 0:
        raise UserError(f"method.pdu_eta={method.pdu_eta}, method.pdu_warmup_epochs={method.pdu_warmup_epochs}; "
                        "expected both >= 0")


class RetainDual:
    """Reads and moves lambda in a `State.dual` dict."""

    def __init__(self, method):
        self.start, self.eta, self.eps = method.retain_weight, method.pdu_eta, method.pdu_eps
        self.warmup_epochs = method.pdu_warmup_epochs
        self.per_micro_batch = method.pdu_update == "micro_batch"

    def weight(self, dual: dict[str, float]) -> float:
        """lambda for this step."""
        return dual.get(KEY, self.start)

    def update(self, dual: dict[str, float], retain_loss: float, forget_epoch: float) -> None:
        """After a step that measured `retain_loss` (mean over micro-batches and ranks)."""
        if forget_epoch >= self.warmup_epochs:
            dual[KEY] = max(0.0, self.weight(dual) + self.eta * (retain_loss - self.eps))

    def update_micro_batch(self, dual: dict[str, float], retain_loss: float, forget_epoch: float, env) -> None:
        """pdu_update=micro_batch: after one micro-batch, by its retain loss averaged over the ranks (a
        non-finite loss leaves lambda as it is: that step is skipped)."""
        loss = distributed.all_reduce_mean({"retain": retain_loss}, env)["retain"]
        if math.isfinite(loss):
            self.update(dual, loss, forget_epoch)
