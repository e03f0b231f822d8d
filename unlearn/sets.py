"""The run's sample sets (forget, retain, random-mismatch answers) and their batch orders."""

from __future__ import annotations

from dataclasses import dataclass

from unlearn import alternates, data, methods
from unlearn.config import Config
from unlearn.distributed import DistEnv
from unlearn.errors import UserError


@dataclass
class Sets:
    forget: list[data.Sample]
    retain: list[data.Sample]
    mismatch: data.RandomAnswers | None = None  # random answers to the forget batch's prompts
    alternate: alternates.Alternates | None = None  # idk / column / generic answers to them (idknll, dpo, idkdpo, whp)


def load_sets(cfg: Config, tokenizer, env: DistEnv) -> Sets:
    d, m = cfg.data, cfg.method
    forget: list[data.Sample] = []
    if m.forget_loss != methods.NONE or m.mismatch_weight:
        forget = forget_samples(cfg, tokenizer)
    retain: list[data.Sample] = []
    if m.retain_loss != methods.NONE or m.mismatch_weight:
        retain = _samples(d.retain, "retain", tokenizer, d, d.max_retain_samples)
    sets = Sets(forget, retain)
    if m.mismatch_weight:
        sets.mismatch = data.random_answers(cfg, tokenizer, forget)
    obj = methods.forget_objective(m.forget_loss)
    if obj is not None and obj.alternate:
        sets.alternate = alternates.alternates(cfg, tokenizer, forget, obj.alternate,
                                               say=print if env.is_main else lambda line: None)
    return sets


def make_streams(cfg: Config, sets: Sets) -> dict[str, data.BatchStream]:
    """The forget and retain sample orders (seeds train.seed + 0 and + 1), length-grouped by default."""
    streams = {}
    for i, (name, samples) in enumerate((("forget", sets.forget), ("retain", sets.retain))):
        if samples:
            lengths = tuple(len(s["input_ids"]) for s in samples) if cfg.data.group_by_length else ()
            streams[name] = data.BatchStream(len(samples), cfg.train.global_batch_size, cfg.train.seed + i,
                                             lengths=lengths)
    return streams


def forget_samples(cfg: Config, tokenizer) -> list[data.Sample]:
    """The forget set's samples in data order (data.max_forget_samples applies)."""
    return _samples(cfg.data.forget, "forget", tokenizer, cfg.data, cfg.data.max_forget_samples)


def _samples(sources: str, role: str, tokenizer, d, limit: int) -> list[data.Sample]:
    out: list[data.Sample] = []
    for source in data.split_sources(sources):
        out += data.build_samples(source, role, tokenizer, d)
    if not out:
        raise UserError("a data source is empty; expected data.forget / data.retain to name files or datasets")
    return out[:limit] if limit else out


def check_lengths(sets: Sets, model_cfg, cfg: Config) -> None:
    limit = getattr(model_cfg, "max_position_embeddings", None)
    if limit and cfg.data.max_length > limit:
        raise UserError(f"data.max_length={cfg.data.max_length} exceeds the model's "
                        f"max_position_embeddings={limit}; expected data.max_length <= {limit}")


def primary_size(cfg: Config, sets: Sets) -> int:
    return len(sets.forget) if cfg.method.forget_loss != methods.NONE else len(sets.retain)


def max_steps_for(cfg: Config, sets: Sets) -> int:
    if cfg.train.epochs > 0:
        return data.steps_for_epochs(cfg.train.epochs, primary_size(cfg, sets), cfg.train.global_batch_size)
    return cfg.train.max_steps
