"""Config plumbing shared by every experiment: dataclass <-> YAML, dotted overrides, provenance.

Each step defines its own small dataclass (``DataConfig``, ``LDMConfig``, ``DetectorConfig`` ...);
this module only knows how to save, load and override dataclasses, so a config object built in a
notebook flows unchanged into the package and is written next to every result.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import platform
import subprocess
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from memostudy.errors import ConfigError

T = TypeVar("T")
#: field metadata: leave the field out of :func:`to_dict` while it holds its default, so adding a setting
#: keeps the dict (and every hash of it naming a cached model) of configs that do not use it unchanged
OMIT_DEFAULT = {"omit_default": True}


def to_dict(cfg: Any, omit_defaults: bool = True) -> dict[str, Any]:
    """Return a plain, YAML-safe dict of a (nested) dataclass; tuples become lists. Fields marked
    :data:`OMIT_DEFAULT` are left out while they hold their default, unless ``omit_defaults`` is False."""
    if not dataclasses.is_dataclass(cfg):
        raise TypeError(f"expected a dataclass instance, got {type(cfg).__name__}")

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)
                    if not (omit_defaults and _omitted(v, f))}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(cfg)


def _omitted(obj: Any, f: dataclasses.Field) -> bool:
    """True when field ``f`` of ``obj`` is marked :data:`OMIT_DEFAULT` and holds its default."""
    if not f.metadata.get("omit_default"):
        return False
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return getattr(obj, f.name) == default


def _coerce(value: Any, typ: Any, name: str) -> Any:
    """Coerce ``value`` (possibly a string from the command line) to the annotated type ``typ``."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if typ is Any:
        return value
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, name)
            except (ConfigError, ValueError, TypeError) as e:
                errors.append(str(e))
        raise ConfigError(f"config value {name}={value!r} does not fit {typ}: {'; '.join(errors)}")
    if dataclasses.is_dataclass(typ):
        if isinstance(value, typ):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config section {name} must be a mapping, got {value!r}")
        return from_dict(typ, value, prefix=f"{name}.")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = yaml.safe_load(value if value.strip().startswith("[") else f"[{value}]")
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = args[0] if args else Any
        items = [_coerce(v, inner, name) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config value {name} must be a mapping, got {value!r}")
        return dict(value)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"config value {name} must be true or false, got {value!r}")
    if typ in (int, float, str):
        try:
            if typ is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            if typ is int and isinstance(value, str):
                return int(float(value)) if float(value).is_integer() else int(value)
            return typ(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config value {name} must be {typ.__name__}, got {value!r}") from None
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, coercing types; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in sorted(unknown))}; "
            f"known keys: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def apply_overrides(cfg: T, overrides: dict[str, Any] | None) -> T:
    """Return a copy of ``cfg`` with dotted-key overrides applied, e.g. ``{"ae.epochs": "3"}``.

    Values may be strings (from a command line or papermill); they are coerced to the field type.
    """
    if not overrides:
        return cfg
    data = to_dict(cfg, omit_defaults=False)
    for key, value in overrides.items():
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            if p not in node or not isinstance(node[p], dict):
                raise ConfigError(f"unknown config section {p!r} in override {key!r}")
            node = node[p]
        if parts[-1] not in node:
            raise ConfigError(f"unknown config key {key!r}; known here: {', '.join(sorted(node))}")
        node[parts[-1]] = value
    out = from_dict(type(cfg), data)
    validate = getattr(out, "validate", None)
    if callable(validate):
        validate()
    return out


def parse_set_options(items: list[str]) -> dict[str, str]:
    """``--set KEY=VALUE`` command-line items as an overrides dict for :func:`apply_overrides`.

    Raises:
        ConfigError: an item without ``=``.
    """
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set epochs=10")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def save_yaml(cfg: Any, path: str | Path) -> Path:
    """Write a dataclass (or mapping) as YAML at ``path`` and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def load_yaml(cls: type[T], path: str | Path) -> T:
    """Read a dataclass of type ``cls`` back from YAML written by :func:`save_yaml`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e.__class__.__name__}); fix or delete it") from None
    return from_dict(cls, data)


def _git_state() -> tuple[str, bool | None]:
    """The git commit of this package's checkout and whether its tracked files differ from it ("unknown", None
    outside a git checkout)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip()
        if not commit:
            return "unknown", None
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
        return commit, bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return "unknown", None


#: the code's git state when this process imported memostudy: a long run records the commit it ran, not the one
#: checked out when it finished (a run that spans a commit or merge otherwise claims code it did not run)
_GIT_AT_IMPORT = _git_state()


def provenance() -> dict[str, Any]:
    """What produced a result: package versions, the git commit of the code as this process imported it (and
    ``git_dirty``: tracked files differed from that commit), host, UTC time."""
    import monai
    import torch

    import memostudy

    commit, dirty = _GIT_AT_IMPORT
    return {
        "memostudy": memostudy.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "torch": str(torch.__version__),
        "monai": str(monai.__version__),
        "python": platform.python_version(),
        "host": platform.node(),
        "cuda": torch.cuda.is_available(),
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
