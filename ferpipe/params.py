"""Read params.yaml and validate every value before any work starts."""
from __future__ import annotations

import math
import re
from pathlib import Path

import yaml

from ferpipe import MODELS, TTA_MODES, FerError


class ParamsError(FerError):
    pass


def _number(lo=None, hi=None, lo_open=False, hi_open=False, integer=False):
    kind = "an integer" if integer else "a number"
    bounds = []
    if lo is not None:
        bounds.append(f"{'>' if lo_open else '>='} {lo}")
    if hi is not None:
        bounds.append(f"{'<' if hi_open else '<='} {hi}")
    allowed = kind + (" " + " and ".join(bounds) if bounds else "")

    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return allowed
        if integer and not isinstance(value, int):
            return allowed
        if not math.isfinite(value):  # .nan passes every comparison below
            return allowed
        if lo is not None and (value <= lo if lo_open else value < lo):
            return allowed
        if hi is not None and (value >= hi if hi_open else value > hi):
            return allowed
        return None

    return check


def _choice(*options):
    def check(value):
        return None if value in options else "one of " + ", ".join(repr(o) for o in options)

    return check


def _boolean(value):
    return None if isinstance(value, bool) else "true or false"


def _models(value):
    """A model name, or a list of names: one per member (train.members)."""
    names = value if isinstance(value, list) and value else [value]
    if all(isinstance(name, str) and name in MODELS for name in names):
        return None
    return "one of " + ", ".join(repr(m) for m in MODELS) + ", or a list of them (one per member)"


def _text(value):
    return None if isinstance(value, str) and value.strip() else "a non-empty string"


def _teacher(value):
    """'none', or a .keras file inside teachers/ (the folder the train stage depends on)."""
    if value == "none":
        return None
    parts = value.split("/") if isinstance(value, str) else []
    if len(parts) >= 2 and parts[0] == "teachers" and value.endswith(".keras") and value == value.strip() \
            and ".." not in parts and "" not in parts:
        return None
    return "'none' or a trained Keras model inside teachers/, e.g. teachers/compact.keras (DVC tracks that folder)"


MAX_SEED = 2**32 - 1  # keras.utils.set_random_seed's limit

SCHEMA = {
    "prepare": {
        "data_root": _text,
        "val_fraction": _number(0, 0.9, lo_open=True),
        "seed": _number(0, integer=True),
        "drop_defects": _boolean,
    },
    "train": {
        "model": _models,
        "members": _number(1, 20, integer=True),
        "width": _number(4, 512, integer=True),
        "dropout": _number(0, 0.9),
        "epochs": _number(1, 1000, integer=True),
        "batch_size": _number(1, 4096, integer=True),
        "lr": _number(0, 1, lo_open=True),
        "optimizer": _choice("adam", "sgd"),
        "weight_decay": _number(0, 0.1),
        "schedule": _choice("plateau", "cosine", "onecycle"),
        "plateau_factor": _number(0, 1, lo_open=True, hi_open=True),  # ReduceLROnPlateau refuses a factor >= 1
        "plateau_patience": _number(0, 100, integer=True),
        "early_stopping_patience": _number(0, 1000, integer=True),
        "select_by": _choice("val_loss", "val_accuracy"),
        "time_budget_minutes": _number(0),
        "anneal_within_budget": _boolean,
        "ema": _number(0, 1, hi_open=True),
        "label_smoothing": _number(0, 0.5),
        "class_weight": _choice("none", "balanced"),
        "precision": _choice("auto", "float32", "bfloat16"),
        "deterministic": _boolean,
        "seed": _number(0, MAX_SEED, integer=True),
        "augment": {
            "rotation": _number(0, 180),
            "zoom": _number(0, 0.9),
            "flip": _boolean,
            "translate": _number(0, 0.5),
            "erasing": _number(0, 1),
            "crop": _boolean,
            "fused": _boolean,
        },
        "distill": {
            "teacher": _teacher,
            "weight": _number(0, 1),
            "tta": _choice(*TTA_MODES),
        },
    },
    "evaluate": {
        "tta": _choice(*TTA_MODES),
        "batch_size": _number(1, 8192, integer=True),
    },
    "visualize": {
        "seed": _number(0, integer=True),
        "sample_images": _number(1, 100, integer=True),
        "grid_images": _number(1, 200, integer=True),
    },
}


def _validate(values, schema, prefix, errors):
    if not isinstance(values, dict):
        errors.append(f"{prefix or 'params'}: expected a mapping of keys, got {values!r}")
        return
    for key in values:
        if key not in schema:
            where = f"{prefix}." if prefix else ""
            errors.append(
                f"{where}{key}: unknown key; allowed keys here: {', '.join(schema)}"
            )
    for key, rule in schema.items():
        name = f"{prefix}.{key}" if prefix else key
        if key not in values:
            errors.append(f"{name}: missing")
        elif isinstance(rule, dict):
            _validate(values[key], rule, name, errors)
        else:
            problem = rule(values[key])
            if problem:
                errors.append(f"{name}: got {values[key]!r}, expected {problem}")


def _check_members_models(train, errors):
    if isinstance(train["model"], list) and len(train["model"]) != train["members"]:
        errors.append(f"train.model: a list of {len(train['model'])} models needs train.members: "
                      f"{len(train['model'])} (one model per member), got train.members: {train['members']}")


def _check_member_seeds(train, errors):
    last = train["seed"] + train["members"] - 1  # member k trains with seed + k - 1
    if last > MAX_SEED:
        errors.append(f"train.seed: {train['members']} members use seeds {train['seed']} to {last}, above "
                      f"{MAX_SEED}; lower train.seed")


def _check_ten_crop(params, errors):
    if params["evaluate"]["tta"] == "ten_crop" and not params["train"]["augment"]["crop"]:
        errors.append("evaluate.tta: ten_crop needs train.augment.crop: true (a model trained on 44 px crops); "
                      "choose another mode or turn crops on")


def _check_anneal_within_budget(train, errors):
    if train["anneal_within_budget"] and (train["schedule"] == "plateau" or not train["time_budget_minutes"]):
        errors.append("train.anneal_within_budget: true needs train.schedule cosine or onecycle and a "
                      f"train.time_budget_minutes above 0, got schedule {train['schedule']!r} and "
                      f"time_budget_minutes {train['time_budget_minutes']!r}")


def validate(params: object, sections=None, source="params.yaml") -> dict:
    """Check `params` (read from `source`) against SCHEMA (every section, or only `sections`); raise ParamsError."""
    schema = SCHEMA if sections is None else {s: SCHEMA[s] for s in sections}
    if not isinstance(params, dict):
        raise ParamsError(f"invalid {source}: expected a mapping of sections ({', '.join(schema)}), "
                          f"got {params!r}")
    errors: list[str] = []
    if sections is None:
        _validate(params, schema, "", errors)
    else:
        for section in sections:
            if section not in params:
                errors.append(f"{section}: missing section")
            else:
                _validate(params[section], schema[section], section, errors)
    if not errors and "train" in schema:
        _check_members_models(params["train"], errors)
        _check_member_seeds(params["train"], errors)
        _check_anneal_within_budget(params["train"], errors)
    if not errors and "train" in schema and "evaluate" in schema:
        _check_ten_crop(params, errors)
    if errors:
        raise ParamsError(f"invalid {source}:\n  " + "\n  ".join(errors))
    return params


class _Loader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where 5e-4 (no dot) is a string; DVC (`dvc exp run -S`, `dvc params diff`) reads
    YAML 1.2, where it is a number. This loader reads it as DVC does."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
                              list("-+0123456789."))


def load(path="params.yaml", sections=None) -> dict:
    """Load and validate params.yaml; return the whole mapping."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found (run from the project root)")
    try:
        params = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    except UnicodeDecodeError:
        raise ParamsError(f"{path}: not a text file in UTF-8 (is it the params file?)") from None
    except OSError as err:
        raise ParamsError(f"{path}: cannot be read: {err.strerror}") from None
    return validate(params, sections, source=path)
