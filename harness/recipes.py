"""Per-model defaults resolved while planning: a method's published recipe for the model, `rank: auto`, and a
learning-rate warm-up given as a fraction of the steps.

A method YAML may carry `recipes:`, a table keyed by model name whose entries have the shape of the method config
(`llama_1b: {optimizer: {rank: 512}}`), each written from the paper's published script or table (a comment names
which). Planning merges the entry for the job's model over the method's values, except where the command line or
the sweep's params set that key themselves (they win), then drops the table: the job's config, its row and
`--cfg job` show the values used, and the row's `recipe` lists what the table set. A model not in the table keeps the
YAML's values, and `rank: auto` there is a quarter of the hidden size (methods/lowrank.auto_rank), GaLore's rule.
"""
from __future__ import annotations

from harness import CONF_DIR
from harness.schema import ConfigError

PRETRAIN = "pretrain"  # the scenario whose recipes are keyed by model


def leaves(node: dict, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, value) of every leaf of a nested config mapping; an empty mapping is a leaf."""
    out = []
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else key
        out.extend(leaves(value, path) if isinstance(value, dict) and value else [(path, value)])
    return out


def _given(key: str, given: set[str]) -> bool:
    """Whether an override set `key` or a mapping above it (method.optimizer={...} sets every key under it)."""
    parts = key.split(".")
    return any(".".join(parts[:i]) in given for i in range(1, len(parts) + 1))


def _set(config: dict, key: str, value) -> None:
    *path, last = key.split(".")
    node = config
    for part in path:
        node = node[part]
    node[last] = value


def _exists(config: dict, key: str) -> bool:
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def apply_recipe(config: dict, given: set[str], models: tuple[str, ...],
                 scenarios: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """Merge method.recipes[<model name>] into the job's config (keys in `given` excepted), drop the table, and return
    the `key=value` pairs it set. `models` are the known model options: a table entry naming none is a typo. An entry
    named after a scenario (`finetune:`, one of `scenarios`) is the recipe of every job of that scenario; the model
    entries are pretraining recipes (scenario=pretrain), so another scenario without an entry keeps the YAML's values."""
    method = config.get("method")
    recipes = method.pop("recipes", None) if isinstance(method, dict) else None
    if recipes is None:
        return ()
    if not isinstance(recipes, dict) or not all(isinstance(v, dict) for v in recipes.values()):
        raise ConfigError(f"method.recipes of method {method.get('name')} must map model names to mappings of "
                          "method keys (llama_60m: {optimizer: {rank: 128}})")
    if scenarios is None:  # the scenario options of conf/scenario
        scenarios = tuple(sorted(p.stem for p in (CONF_DIR / "scenario").glob("*.yaml")))
    unknown = sorted(set(recipes) - set(models) - set(scenarios))
    if unknown:
        raise ConfigError(f"method.recipes.{unknown[0]} names no model or scenario; allowed: "
                          f"{', '.join((*models, *scenarios))}")
    scenario = config.get("scenario", {}).get("name", PRETRAIN)
    model = config.get("model", {}).get("name") if scenario == PRETRAIN else scenario
    applied = []
    for key, value in leaves(recipes.get(model) or {}, "method"):
        if not _exists(config, key):
            raise ConfigError(f"method.recipes.{model}: {key.removeprefix('method.')} is no key of method "
                              f"{method.get('name')}; a recipe may set only the method's own keys")
        if not _given(key, given):
            _set(config, key, value)
            applied.append(f"{key}={value}")
    return tuple(applied)


def resolve_auto_rank(config: dict) -> None:
    """rank=auto, of the optimizer or of a transform (method.transform_options.<t>.rank), becomes the number the
    low-rank rule gives for the model's width, in the job's config itself: rows and --cfg job show the rank used."""
    method, model = config.get("method"), config.get("model")
    if not isinstance(method, dict) or not isinstance(model, dict):
        return
    transforms = method.get("transform_options") if isinstance(method.get("transform_options"), dict) else {}
    places = {"method.optimizer": method.get("optimizer"),
              **{f"method.transform_options.{name}": options for name, options in transforms.items()}}
    for where, options in places.items():
        if not isinstance(options, dict) or options.get("rank") != "auto":
            continue
        if not isinstance(model.get("hidden_size"), int):
            raise ConfigError(f"{where}.rank=auto needs the model's hidden size, which model {model.get('name')} "
                              f"does not give while planning; set {where}.rank to a number")
        from methods.lowrank import auto_rank  # imported here: methods pulls in torch, which only jobs need

        options["rank"] = auto_rank(model["hidden_size"])


def resolve_warmup_fraction(config: dict, given: set[str]) -> None:
    """train.lr_warmup_fraction=f sets train.lr_warmup_steps = round(f · train.steps) (the GaLore and APOLLO scripts
    warm up over 10 % of the steps); giving both is refused, since one would silently lose."""
    train = config.get("train")
    fraction = train.get("lr_warmup_fraction") if isinstance(train, dict) else None
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool):
        return  # null, or a bad value the schema reports
    if _given("train.lr_warmup_steps", given) and train.get("lr_warmup_steps"):
        raise ConfigError(f"train.lr_warmup_steps={train['lr_warmup_steps']} and train.lr_warmup_fraction={fraction} "
                          "both set the warm-up; give one (lr_warmup_fraction=null to use the steps)")
    steps = train.get("steps")
    if isinstance(steps, int) and 0 <= fraction <= 1:
        train["lr_warmup_steps"] = round(fraction * steps)


def resolve_part_seeds(config: dict) -> None:
    """A method part's `seed: null` (APOLLO's projections, MeZO's and ZO-Adam's perturbations, LISA's layer draws,
    INT8 stochastic rounding) becomes train.seed, so that a sweep over seeds varies every random choice of the run;
    a number given in the YAML or on the command line stays."""
    method, seed = config.get("method"), config.get("train", {}).get("seed")
    if not isinstance(method, dict):
        return
    parts = [method.get("optimizer"), *(method.get("transform_options") or {}).values()]
    for options in parts:
        if isinstance(options, dict) and "seed" in options and options["seed"] is None:
            options["seed"] = seed
