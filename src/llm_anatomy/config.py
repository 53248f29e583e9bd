"""Read and check params.yaml before any compute, with errors that name the key and the fix."""
from __future__ import annotations

import copy
import difflib
import functools
from contextlib import contextmanager
from pathlib import Path

import jsonschema
import yaml

from .layout import SCHEMA, mirror_file


class ParamsError(ValueError):
    """params.yaml holds a bad value; the message names the key and how to fix it."""


def load_params(path: str | Path) -> dict:
    """params.yaml as a dict; a YAML syntax error names the file, line and column (Snakemake's own
    loader says only that the file is not valid YAML)."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        context = f" ({err.context} at line {err.context_mark.line + 1})" if err.context and err.context_mark else ""
        raise ParamsError(f"{where}: {err.problem}{context}; fix the YAML there (an unclosed bracket or quote, "
                          "or a tab in the indentation, are the usual causes)") from None


@contextmanager
def exit_on_params_error():
    """In the Snakefile: a ParamsError ends the run with its message alone. Snakemake prints an exception
    raised while the workflow loads followed by traceback lines, which bury the one line that matters."""
    try:
        yield
    except ParamsError as err:
        raise SystemExit(f"ParamsError: {err}") from None


@functools.cache
def load_schema() -> dict:
    """params.yaml's JSON Schema, from the source checkout (the one place for every default)."""
    return yaml.safe_load((Path(__file__).resolve().parents[2] / SCHEMA).read_text())


def schema_properties(*path: str) -> dict:
    """The properties (type, default, description) of one object of the schema: `("$defs", "finetune")`, a
    nested object `("$defs", "pruning", "methods")`, or the top-level section `("properties", "anatomy")`."""
    node = load_schema()[path[0]][path[1]]
    for key in path[2:]:
        node = node["properties"][key]
    return node.get("properties", {})


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _filling_properties(validator, props, instance, schema):
    """JSON Schema's `properties` check that first writes each missing property's schema `default:` into the
    instance, so every default lives in the schema and nowhere else."""
    if isinstance(instance, dict):
        for name, sub in props.items():
            if isinstance(sub, dict) and "default" in sub:
                instance.setdefault(name, copy.deepcopy(sub["default"]))
    yield from jsonschema.Draft202012Validator.VALIDATORS["properties"](validator, props, instance, schema)


DefaultFillingValidator = jsonschema.validators.extend(jsonschema.Draft202012Validator,
                                                       {"properties": _filling_properties})


def _did_you_mean(value, choices) -> str:
    """' (did you mean <the closest choice>?)', or '' when none is close."""
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_method_curves(curves, key: str) -> None:
    """Each curve names a method; the message says which part of a bad name is unknown. Criteria may hold
    hyphens (wanda-sp); allocations and compensations hold none."""
    if curves == "all":
        return
    from .pruning.spec import ALLOCATIONS, COMPENSATIONS, CRITERIA, method_of
    for curve in curves:
        if not isinstance(curve, str) or method_of(curve) is None:
            head, _, compensation = str(curve).rpartition("-")
            criterion, _, allocation = head.rpartition("-")
            problems = "; ".join(f"{kind} {value!r} is unknown{_did_you_mean(value, choices)}" for kind, value, choices
                                 in (("criterion", criterion, CRITERIA), ("allocation", allocation, ALLOCATIONS),
                                     ("compensation", compensation, COMPENSATIONS)) if value not in choices)
            problems = problems or "three parts are needed"
            raise ParamsError(f"{key}: {curve!r} is not <criterion>-<allocation>-<compensation>: {problems}. "
                              f"Criteria {sorted(CRITERIA)}, allocations {list(ALLOCATIONS)}, compensations "
                              f"{list(COMPENSATIONS)} (e.g. fluctuation-uniform-refit), or `curves: all` for every one")


def check_schema(config: dict, schema_path: str | Path) -> None:
    """Validate `config` against the schema, filling in the schema's defaults for absent keys."""
    validator = DefaultFillingValidator(yaml.safe_load(Path(schema_path).read_text()))
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors[:10]:
            if err.validator == "additionalProperties" and isinstance(err.instance, dict) and err.schema.get("properties"):
                allowed = sorted(err.schema["properties"])
                for key in (k for k in err.instance if k not in allowed):  # each with the closest allowed key
                    close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
                    hint = f"did you mean {close[0]!r}?" if close else f"allowed here: {', '.join(allowed)}"
                    lines.append(f"  {_key([*err.absolute_path, key])}: unknown key {key!r}; {hint}")
                continue
            if err.validator == "required":
                missing = [k for k in err.validator_value if k not in err.instance]
                lines += [f"  {_key([*err.absolute_path, k])}: missing; add it (see docs/PARAMS.md and the offline "
                          "profile in params.yaml)" for k in missing]
                continue
            hint = err.schema.get("description") if isinstance(err.schema, dict) else None
            close = _did_you_mean(err.instance, map(str, err.validator_value)) if err.validator == "enum" else ""
            lines.append(f"  {_key(err.absolute_path)}: {err.message}{close}" + (f" (expected: {hint})" if hint else ""))
        raise ParamsError("params.yaml is invalid:\n" + "\n".join(lines))


def _scalar(text: str):
    """A --config leaf as the YAML value it spells (1.5 -> float, true -> bool, 1e-3 -> float)."""
    value = yaml.safe_load(text) if text.strip() else text
    if isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        except ValueError:
            return value
    return value


def retype_overrides(config: dict, overrides: dict) -> None:
    """Snakemake reads nested `--config key={a: 1.5}` values with YAML's BaseLoader, so every leaf
    arrives as a string; give the leaves of nested overrides their YAML types in `config`."""
    def walk(target, over):
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                walk(target[key], value)
            elif isinstance(value, str) and isinstance(target.get(key), str) and target[key] == value:
                target[key] = _scalar(value)
            elif isinstance(value, list) and isinstance(target.get(key), list):
                target[key] = [_scalar(v) if isinstance(v, str) else v for v in value]

    walk(config, {k: v for k, v in overrides.items() if isinstance(v, dict)})  # top-level scalars are typed already


def active_profile(config: dict) -> dict:
    name = config.get("profile")
    if name not in config.get("profiles", {}):
        raise ParamsError(f"profile: {name!r} is not defined; choose one of {sorted(config.get('profiles', {}))} "
                          "(e.g. --config profile=tiny)")
    return config["profiles"][name]


def profile_anatomy(config: dict, prof: dict) -> dict:
    """The anatomy settings a profile runs with: each top-level key of its `anatomy:` section replaces the
    section's whole value (a shallow merge: the tiny profile's `probe:` block replaces the default block)."""
    return {**config["anatomy"], **prof.get("anatomy", {})}


def resolve_path(path: str | Path, root: str | Path) -> Path:
    path = Path(path)
    return path if path.is_absolute() else (Path(root) / path).resolve()


def validate(config: dict, schema_path: str | Path, root: str | Path) -> dict:
    """The schema, then what JSON Schema cannot express (files that must exist, values bounded by other values),
    then the pruning configurations (`check_pruning`); returns the active profile."""
    check_schema(config, schema_path)
    prof = active_profile(config)
    name = config["profile"]
    data = config["data"]
    if data["source"] == "mirror":
        for split in ("train", "test"):
            path = mirror_file(resolve_path(data["mirror_dir"], root), split)
            if not path.exists():
                raise ParamsError(f"data.mirror_dir: {path} does not exist; point it at the IMDB Parquet mirror (default "
                                  "../shared/data/imdb) or set data.source: hub")
    anatomy = profile_anatomy(config, prof)
    from .probes import ProbeError, read_probes
    try:  # read now, so a bad probe file stops the run before any fine-tuning
        read_probes(resolve_path(anatomy["probes"], root))
    except ProbeError as err:
        raise ParamsError(f"anatomy.probes: {err}") from None
    for key, split in (("calibration_size", "train"), ("validation_size", "val"), ("probe.train_reviews", "train")):
        value = anatomy["probe"]["train_reviews"] if key.startswith("probe.") else anatomy[key]
        if value > prof["split"][split]:
            raise ParamsError(f"anatomy.{key} = {value} exceeds profiles.{name}.split.{split} = "
                              f"{prof['split'][split]}; lower it (a profile's anatomy: section may override it)")
    if anatomy["ablation"]["reviews"] > prof["split"]["val"]:
        raise ParamsError(f"anatomy.ablation.reviews = {anatomy['ablation']['reviews']} exceeds profiles.{name}.split.val"
                          f" = {prof['split']['val']}; lower it")
    for model, spec in prof["models"].items():
        key = f"profiles.{name}.models.{model}"
        ft = spec["finetune"]
        if ft["train_limit"] > prof["split"]["train"]:
            raise ParamsError(f"{key}.finetune.train_limit: {ft['train_limit']} exceeds the split's "
                              f"{prof['split']['train']} training reviews; lower it or raise profiles.{name}.split.train")
        if ft.get("freeze_bottom_layers", 0) > spec["num_layers"]:
            raise ParamsError(f"{key}.finetune.freeze_bottom_layers: {ft['freeze_bottom_layers']} exceeds the "
                              f"model's {spec['num_layers']} layers")
        if spec["source"].startswith("path:") and not resolve_path(spec["source"][5:], root).exists():
            raise ParamsError(f"{key}.source: folder {spec['source'][5:]} does not exist")
    check_pruning(config, prof, name)
    return prof


KIND_BY_SOURCE = {"tiny:bert": "encoder", "tiny:gpt2": "decoder", "tiny:llama": "decoder",
                  "embedded:minilm": "encoder", "embedded:smollm2": "decoder",
                  "hub:bert-base-uncased": "encoder", "hub:gpt2": "decoder"}


def model_kind(spec: dict, where: str = "model") -> str:
    """encoder or decoder: which pruning rule applies (the model's `kind`, else known from its source)."""
    kind = spec.get("kind") or KIND_BY_SOURCE.get(spec["source"])
    if not kind:
        raise ParamsError(f"{where}.kind: cannot tell whether {spec['source']!r} is an encoder or a decoder; "
                          "add `kind: encoder` or `kind: decoder` to the model")
    return kind


def check_pruning(config: dict, prof: dict, name: str) -> None:
    """Pruning configurations must fit every model they apply to (focusing layers within depth)."""
    pruning = config.get("pruning")
    if not pruning:
        return
    from .pruning.rules import RuleError, resolve_focusing
    from .pruning.spec import method_of

    configs = pruning["configs"]
    for kind, ref in pruning.get("sweep", {}).items():
        if kind not in ("encoder", "decoder"):
            continue
        if ref not in configs:
            raise ParamsError(f"pruning.sweep.{kind}: {ref!r} is not a configuration under pruning.configs; "
                              f"choose one of {sorted(configs)}")
        if configs[ref]["rule"] != kind:
            raise ParamsError(f"pruning.sweep.{kind}: {ref!r} uses rule {configs[ref]['rule']!r}, not {kind!r}")
    if "pruning" not in prof:
        raise ParamsError(f"profiles.{name}.pruning is missing; add batch_size, repeats and "
                          "encoder/decoder sizing (see the offline profile)")
    for kind in ("encoder", "decoder"):
        sizing = prof["pruning"].get(kind)
        if sizing is None:  # the schema requires both; a caller that skipped it gets the other checks
            continue
        key = f"profiles.{name}.pruning.{kind}"
        reviews = sizing.get("calibration_reviews", 0)
        methods = sizing.get("methods", {})
        if (sizing.get("flap") or methods.get("percents")) and reviews > prof["split"]["train"]:
            raise ParamsError(f"{key}.calibration_reviews = {reviews} exceeds "
                              f"split.train = {prof['split']['train']}; lower it (calibration statistics come from "
                              "the train split)")
        curves = methods.get("curves", [])
        _check_method_curves(curves, f"{key}.methods.curves")
        searched = curves == "all" or any(method_of(c)[1] == "searched" for c in curves)
        if searched and methods.get("percents") and methods.get("search_reviews", 0) > prof["split"]["val"]:
            raise ParamsError(f"{key}.methods.search_reviews = {methods['search_reviews']} exceeds split.val = "
                              f"{prof['split']['val']}; lower it (the searched allocation reads the validation split)")
        for limit in ("test_limit", "headline_limit"):
            if sizing.get(limit, 0) > prof["split"]["test"]:
                raise ParamsError(f"{key}.{limit} = {sizing[limit]} exceeds split.test = "
                                  f"{prof['split']['test']}; lower it or enlarge profiles.{name}.split.test")
        if sizing.get("headline_limit", sizing.get("test_limit", 0)) < sizing.get("test_limit", 0):
            raise ParamsError(f"{key}.headline_limit = {sizing['headline_limit']} is below test_limit = "
                              f"{sizing['test_limit']}; the baselines are paired with the first test_limit of the "
                              "headline reviews, so raise headline_limit (or drop it: it defaults to test_limit)")
        for limit in ("time_limit", "sweep_time_limit"):
            if sizing.get(limit, 0) > sizing.get("test_limit", 0):
                raise ParamsError(f"{key}.{limit} = {sizing[limit]} exceeds test_limit = {sizing['test_limit']}; "
                                  "the timed reviews are the first of the evaluated ones")
    for model, spec in prof["models"].items():
        key = f"profiles.{name}.models.{model}"
        kind = model_kind(spec, key)
        for cname, cfg in configs.items():
            if cfg["rule"] != kind:
                continue
            try:
                resolve_focusing(cfg.get("focusing", "none"), spec["num_layers"])
            except RuleError as err:
                raise ParamsError(f"pruning.configs.{cname}.focusing: {err} ({key} has num_layers "
                                  f"{spec['num_layers']})") from None
