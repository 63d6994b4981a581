"""Property-based: random valid overrides compose into jobs; random invalid ones give the one-line ConfigError;
nothing ever escapes as another exception (no traceback for the user). Every option of every method part refuses
values outside its range, not finite or of the wrong type, while planning."""
import dataclasses
import math
import string
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import methods
from harness.config import group_options, plan
from harness.schema import ConfigError, parse
from methods.options import rules_of

# derandomized: CI sees the same 40 examples every run (no flaky failures); run with --hypothesis-seed to explore
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def _runs_on_cpu(method: str) -> bool:
    import yaml

    import methods
    from harness import CONF_DIR

    cfg = yaml.safe_load((CONF_DIR / "method" / f"{method}.yaml").read_text())
    if "optimizer" not in cfg:  # a generate method (scenario=generate): not a training override
        return False
    parts = [methods.OPTIMIZERS[cfg["optimizer"]["name"]]] + [methods.TRANSFORMS[t] for t in cfg["transforms"]]
    return not any(getattr(part, "REQUIRES_CUDA", False) for part in parts)


CPU_METHODS = [m for m in group_options("method") if _runs_on_cpu(m)]

valid_override = st.one_of(
    st.sampled_from(CPU_METHODS).map(lambda m: f"method={m}"),
    st.sampled_from(["llama_60m", "llama_130m"]).map(lambda m: f"model={m}"),  # wide enough for every default rank
    st.integers(1, 64).map(lambda b: f"train.batch_size={b}"),
    st.integers(2, 512).map(lambda s: f"train.seq_len={s}"),
    st.integers(0, 10**6).map(lambda s: f"train.seed={s}"),
    st.floats(1e-6, 1.0).map(lambda lr: f"method.optimizer.lr={lr}"),
    st.sampled_from(["constant", "cosine"]).map(lambda s: f"train.lr_schedule={s}"),
    st.sampled_from(["fp32", "bf16", "auto"]).map(lambda d: f"train.dtype={d}"),
    st.sampled_from(["[]", "[checkpointing]"]).map(lambda t: f"method.transforms={t}"),
)

junk = st.text(alphabet=string.ascii_letters + string.digits + "._-=,[]{}$:'\" +~/\\", min_size=0, max_size=16)
invalid_override = st.one_of(
    junk,
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(["method", "model", "dataset", "gpu", "train.batch_size",
                                                         "train.dtype", "run.device", "train.foo", "method.loop"]), junk),
    st.integers(-10, 0).map(lambda b: f"train.batch_size={b}"),
    st.integers(513, 10**5).map(lambda s: f"train.seq_len={s}"),
)


def _distinct_keys(overrides):
    keys = [o.split("=")[0] for o in overrides]
    return len(keys) == len(set(keys))


@SETTINGS
@given(st.lists(valid_override, max_size=4).filter(_distinct_keys))
def test_valid_overrides_compose(tmp_path_factory, overrides):
    results_dir = tmp_path_factory.mktemp("r") / "results"
    if not any(o.startswith("model=") for o in overrides):
        overrides = [*overrides, "model=llama_60m"]
    if any(o.startswith("method.transforms=") for o in overrides):
        # a transform list replaces the method's own, whose transform_options would then be refused
        overrides = [o for o in overrides if not o.startswith("method=")]
    jobs = plan([*overrides, "run.device=cpu", f"run.results_dir={results_dir}"])
    assert len(jobs) == 1


@SETTINGS
@given(st.lists(st.one_of(valid_override, invalid_override), min_size=1, max_size=4))
def test_any_overrides_give_jobs_or_one_clear_line(tmp_path_factory, overrides):
    results_dir = tmp_path_factory.mktemp("r") / "results"
    try:
        plan([*overrides, "run.device=cpu", f"run.results_dir={results_dir}"])
    except ConfigError as e:
        assert str(e) and "\n" not in str(e) and "Traceback" not in str(e)
    assert not results_dir.exists()


# --- option ranges of every method part: random invalid values never get past planning ---------------------------

def _option_parts():
    """(where the options sit, part name, its Options class) of every optimizer and transform that takes options."""
    tables = (("method.optimizer", methods.OPTIMIZERS), ("method.transform_options.{}", methods.TRANSFORMS))
    return [(where.format(name), name, part.Options) for where, table in tables for name, part in table.items()
            if hasattr(part, "Options")]


def _kind(hint) -> str | None:
    """How an option's values are drawn: number (int or float, maybe null), list, choice (Literal); None: bool."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if hint in (int, float) or (args and all(a in (int, float) for a in args)):
        return "number"
    if typing.get_origin(hint) is list:
        return "list"
    return "choice" if typing.get_origin(hint) is typing.Literal else None


OPTION_FIELDS = [(where, part, cls, f.name, typing.get_type_hints(cls)[f.name]) for where, part, cls in _option_parts()
                 for f in dataclasses.fields(cls) if _kind(typing.get_type_hints(cls)[f.name])]

INVALID_ANYWHERE = st.sampled_from([math.nan, math.inf, -math.inf, "abc", True, {"a": 1}])  # non-finite or wrong type
FINITE = st.floats(-1e6, 1e6, allow_nan=False)


def test_every_number_and_list_option_has_a_range():
    """A new numeric or list option without a rule in its class's RANGES would reach the job unchecked."""
    unchecked = [f"{cls.__module__}.{cls.__name__}.{name}" for _, _, cls, name, hint in OPTION_FIELDS
                 if _kind(hint) in ("number", "list") and name not in rules_of(cls)]
    assert not unchecked


@st.composite
def option_values(draw):
    """(where, part, class, field, value, whether the value must be refused) for any option of any part: values of the
    wrong type or not finite (always refused) or values of the right type, refused exactly where the field's rule says."""
    where, part, cls, name, hint = draw(st.sampled_from(OPTION_FIELDS))
    kind, rule = _kind(hint), rules_of(cls).get(name)
    if draw(st.booleans()):
        value = draw(INVALID_ANYWHERE if kind != "list" else st.one_of(INVALID_ANYWHERE, FINITE,
                                                                       st.just([0.5, math.nan])))
        return where, part, cls, name, value, True
    if kind == "choice":
        value = draw(st.one_of(st.sampled_from(typing.get_args(hint)), st.text(max_size=6)))
        return where, part, cls, name, value, value not in typing.get_args(hint)
    if kind == "list":
        items = st.text(alphabet=string.ascii_lowercase + "_", max_size=8) if typing.get_args(hint) == (str,) \
            else st.floats(-2, 2, allow_nan=False)
        value = draw(st.lists(items, max_size=3))
        return where, part, cls, name, value, not rule.ok(tuple(value))
    value = draw(st.one_of(st.integers(-10**6, 10**6), st.sampled_from([0, -1, 1, 2**32, -2**63 - 1]))
                 if int in (hint, *typing.get_args(hint)) and float not in (hint, *typing.get_args(hint))
                 else st.one_of(FINITE, st.sampled_from([0.0, -0.0, 1e-300, 1.0, -1.0])))
    return where, part, cls, name, value, not rule.ok(value)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(option_values())
def test_options_refuse_what_their_range_refuses(drawn):
    where, _, cls, name, value, refused = drawn
    try:
        parse(cls, {name: value}, where)
    except ConfigError as e:
        assert refused, f"{where}.{name}={value!r} is in range but was refused: {e}"
        assert str(e).startswith(f"{where}.{name}=") and "\n" not in str(e)
    else:
        assert not refused, f"{where}.{name}={value!r} was accepted"


def _method_with(where: str, part: str) -> tuple[str, dict, str] | None:
    """A method YAML that uses `part`, the section of it that holds the part's options, and the scenario it runs in
    (a method with a KV cache generates)."""
    import yaml

    from harness import CONF_DIR

    for method in group_options("method"):
        cfg = yaml.safe_load((CONF_DIR / "method" / f"{method}.yaml").read_text())
        scenario = "generate" if "cache" in cfg else "pretrain"
        if where == "method.optimizer" and (cfg.get("optimizer") or {}).get("name") == part:
            return method, cfg["optimizer"], scenario
        if where != "method.optimizer" and part in cfg.get("transforms", []):
            return method, (cfg.get("transform_options") or {}).get(part) or {}, scenario
    return None


PLANNED_FIELDS = [(where, name, *found) for where, part, _, name, _ in OPTION_FIELDS
                  if (found := _method_with(where, part)) is not None]


@settings(max_examples=16, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(PLANNED_FIELDS), st.sampled_from(["nan", "inf", "-inf", "abc", "[]", "'1e-3'"]))
def test_plan_refuses_invalid_options_in_one_line(tmp_path_factory, field, value):
    """Through the command line: a value no option takes (not finite, or of the wrong type) stops the plan with one
    line naming the key, and no job starts (nothing is written)."""
    where, name, method, section, scenario = field
    results_dir = tmp_path_factory.mktemp("r") / "results"
    key = f"{where}.{name}" if name in section else f"++{where}.{name}"
    with pytest.raises(ConfigError) as info:
        plan([f"method={method}", f"scenario={scenario}", f"{key}={value}", "run.device=cpu",
              f"run.results_dir={results_dir}"])
    assert f"{where}.{name}" in str(info.value) and "\n" not in str(info.value)
    assert not results_dir.exists()
