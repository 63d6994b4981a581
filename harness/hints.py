"""Where keys that users bring from other tools (Hydra, Hugging Face's Trainer, training scripts) live in this
config: an unknown key found here gets its home in the planning error, e.g.
    error: unknown key 'train.lr'; use method.optimizer.lr (allowed keys under train: ...)
"""
from __future__ import annotations

# what to write instead: the keys people type for it
_HOMES = {
    "run.results_dir": ("hydra.run.dir", "hydra.sweep.dir", "output_dir", "train.output_dir", "run.output_dir"),
    "method.optimizer.lr": ("lr", "learning_rate", "train.lr", "train.learning_rate", "optimizer.lr", "method.lr"),
    "method.optimizer.weight_decay": ("weight_decay", "train.weight_decay", "method.weight_decay"),
    "method=NAME (conf/method/)": ("optimizer", "optim", "train.optimizer", "method.name"),
    "train.steps (optimizer steps; there are no epochs)": ("epochs", "train.epochs", "num_train_epochs",
                                                           "train.num_train_epochs", "max_steps", "train.max_steps"),
    "train.batch_size": ("batch_size", "per_device_train_batch_size", "train.per_device_train_batch_size"),
    "train.seq_len": ("seq_len", "max_seq_length", "train.max_seq_length", "train.seq_length", "model.seq_len"),
    "train.seed": ("seed", "run.seed"),
    "train.dtype (auto, fp32, bf16, fp16)": ("dtype", "precision", "bf16", "fp16", "train.precision", "train.bf16",
                                             "train.fp16", "model.dtype"),
    "run.device": ("device", "train.device"),
    "train.lr_schedule (constant, cosine)": ("lr_scheduler_type", "scheduler", "train.scheduler", "train.lr_scheduler"),
    "train.lr_warmup_steps (train.warmup_steps are the untimed steps)": ("warmup_steps", "train.lr_warmup"),
    "method.transforms=[checkpointing]": ("gradient_checkpointing", "train.gradient_checkpointing"),
    "model=hub model.hub_name=ID_OR_FOLDER": ("model_name_or_path", "model.name_or_path",
                                              "model.pretrained_model_name_or_path", "model.path", "model.hub_name"),
    "dataset=hub dataset.hub_name=ID": ("dataset_name", "dataset.name_or_path", "dataset.hub_name"),
    "dataset=text_file dataset.path=FILE": ("dataset.path", "data_path", "train_file"),
    "method.optimizer.rank with a low-rank method (method=galore, apollo, fira, ...) or "
    "method.transform_options.lora.rank with method=lora": ("rank", "method.rank", "method.optimizer.rank"),
    "run.timeout_s": ("timeout", "run.timeout"),
    "run.repeats": ("repeats",),
}
HINTS = {typed: home for home, typed_keys in _HOMES.items() for typed in typed_keys}


def hint(key: str) -> str:
    """'; use HOME' for a key with a well-known home, else ''."""
    return f"; use {HINTS[key]}" if key in HINTS else ""
