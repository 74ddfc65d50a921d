"""Config plumbing: dataclass <-> YAML, dotted overrides with type coercion, --set parsing, provenance."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from memostudy.config import (
    OMIT_DEFAULT,
    apply_overrides,
    from_dict,
    load_yaml,
    parse_set_options,
    provenance,
    save_yaml,
    to_dict,
)
from memostudy.errors import ConfigError


@dataclass
class Inner:
    lr: float = 1e-3
    sizes: tuple[int, ...] = (8, 16)


@dataclass
class Outer:
    name: str = "x"
    epochs: int = 3
    flag: bool = False
    limit: int | None = None
    inner: Inner = field(default_factory=Inner)
    extra: dict = field(default_factory=dict)

    def validate(self) -> Outer:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        return self


def test_to_dict_is_plain_and_from_dict_rebuilds_it():
    cfg = Outer(inner=Inner(sizes=(1, 2, 3)))
    d = to_dict(cfg)
    assert d["inner"]["sizes"] == [1, 2, 3] and isinstance(d["inner"], dict)
    assert from_dict(Outer, d) == cfg


def test_overrides_coerce_strings_from_a_command_line():
    cfg = apply_overrides(Outer(), {"epochs": "7", "flag": "yes", "limit": "none", "inner.lr": "3e-4",
                                    "inner.sizes": "[4, 5]"})
    assert (cfg.epochs, cfg.flag, cfg.limit, cfg.inner.lr, cfg.inner.sizes) == (7, True, None, 3e-4, (4, 5))
    assert apply_overrides(Outer(), {"limit": "12"}).limit == 12
    assert apply_overrides(Outer(), {"epochs": 4.0}).epochs == 4


@pytest.mark.parametrize("overrides, message", [
    ({"epochs": "many"}, "epochs must be int"),
    ({"epochs": 2.5}, "epochs must be int"),
    ({"flag": "maybe"}, "flag must be true or false"),
    ({"colour": 1}, "unknown config key 'colour'"),
    ({"nope.lr": 1}, "unknown config section 'nope'"),
    ({"epochs": 0}, "epochs must be >= 1"),  # the dataclass's own validate() runs
])
def test_bad_overrides_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Outer(), overrides)


def test_set_options_split_at_the_first_equals_sign():
    assert parse_set_options(["a=1", "b.c = x=y"]) == {"a": "1", "b.c": "x=y"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set_options(["novalue"])


def test_yaml_round_trip_and_its_errors(tmp_path):
    cfg = Outer(name="run", inner=Inner(lr=0.5))
    assert load_yaml(Outer, save_yaml(cfg, tmp_path / "c.yaml")) == cfg
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(Outer, tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(Outer, tmp_path / "bad.yaml")


def test_provenance_names_versions_and_the_commit():
    p = provenance()
    assert {"memostudy", "git_commit", "torch", "monai"} <= set(p)
    assert p["git_commit"] == "unknown" or len(p["git_commit"]) == 40
    assert p["git_dirty"] in (True, False, None)


def test_provenance_records_the_commit_the_process_started_with(monkeypatch) -> None:
    # a run that spans a commit must not claim the code checked out when it finished
    import memostudy.config as config

    monkeypatch.setattr(config, "_GIT_AT_IMPORT", ("a" * 40, False))
    p = provenance()
    assert p["git_commit"] == "a" * 40 and p["git_dirty"] is False


def test_a_field_omitted_at_its_default_can_still_be_overridden() -> None:
    from memostudy.ldm.config import preset

    cfg = preset("test-16", {"diffusion.loop.steps": 7})
    assert cfg.diffusion.loop.steps == 7 and cfg.autoencoder.loop.steps is None
    assert "steps" not in to_dict(cfg)["autoencoder"]["loop"] and to_dict(cfg)["diffusion"]["loop"]["steps"] == 7

@dataclass
class _WithOptional:
    a: int = 1
    views: tuple[str, ...] = field(default=(), metadata=OMIT_DEFAULT)


def test_a_field_marked_omit_default_leaves_the_dict_only_while_at_its_default():
    assert to_dict(_WithOptional()) == {"a": 1}  # so hashes of configs that never set it stay as they were
    assert to_dict(_WithOptional(views=("x",))) == {"a": 1, "views": ["x"]}
    assert to_dict(_WithOptional(), omit_defaults=False) == {"a": 1, "views": []}
    assert apply_overrides(_WithOptional(), {"views": "x,y"}).views == ("x", "y")  # still settable from a command line
    assert from_dict(_WithOptional, {"a": 2}).views == ()
