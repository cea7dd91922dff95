"""The one config layer (pairforge.config) behind degradation presets and training configs."""
from __future__ import annotations

import pytest
import yaml

from pairforge.config import ConfigError, Presets, fingerprint
from pairforge.degradations import ConfigError as DegradationConfigError
from pairforge.degradations import DegradationConfig
from pairforge.training import ConfigError as TrainingConfigError
from pairforge.training.config import from_dict as training_from_dict


def test_one_error_class():
    assert DegradationConfigError is ConfigError is TrainingConfigError


@pytest.mark.parametrize("scalar, expected", [("5e-5", 5e-5), ("0.25", 0.25), ("1", 1.0), ("3.0", 3.0)])
def test_same_yaml_scalar_same_float_in_both_packages(scalar, expected):
    """PyYAML reads `5e-5` as a string; both sides must still see the number."""
    value = yaml.safe_load(f"v: {scalar}")["v"]
    deg = DegradationConfig.from_dict({"usm": {"weight": value}}).usm.weight
    train = training_from_dict({"base": "tiny", "optim_g": {"lr": value}}).optim_g.lr
    assert deg == train == pytest.approx(expected)
    assert type(deg) is type(train) is float


@pytest.mark.parametrize("scalar, ok", [("3", True), ("3.0", True), ("3.5", False), ("'3'", False), ("true", False)])
def test_same_yaml_scalar_same_integer_rule_in_both_packages(scalar, ok):
    value = yaml.safe_load(f"v: {scalar}")["v"]
    results = []
    for build in (lambda: DegradationConfig.from_dict({"first": {"jpeg": {"quality_range": [value, 95]}}}).first.jpeg.quality_range[0],
                  lambda: training_from_dict({"base": "tiny", "steps": value}).steps):
        try:
            results.append(build())
        except ConfigError as exc:
            results.append(str(exc).split(":")[1].strip())  # "expected an integer, got …"
    if ok:
        assert results == [3, 3] and all(type(r) is int for r in results)
    else:
        assert results[0] == results[1] and results[0].startswith("expected an integer"), results


def test_errors_start_with_the_dotted_path_on_both_sides():
    with pytest.raises(ConfigError, match=r"^first\.noise\.sigmaa: unknown field"):
        DegradationConfig.from_dict({"first": {"noise": {"sigmaa": 1}}})
    with pytest.raises(ConfigError, match=r"^engine\.zero_stagee: unknown field"):
        training_from_dict({"base": "tiny", "engine": {"zero_stagee": 2}})


def test_presets_inherit_with_base_and_refuse_cycles(tmp_path):
    (tmp_path / "a.yaml").write_text("x: 1\nsub: {p: 1, q: 2}\n")
    (tmp_path / "b.yaml").write_text("base: a\nsub: {q: 5}\n")
    (tmp_path / "c.yaml").write_text("base: d\n")
    (tmp_path / "d.yaml").write_text("base: c\n")
    presets = Presets(tmp_path, "test preset")
    assert presets.names() == ["a", "b", "c", "d"]
    assert presets.load("b") == {"x": 1, "sub": {"p": 1, "q": 5}}
    with pytest.raises(ConfigError, match="inherits from itself"):
        presets.load("c")
    with pytest.raises(ConfigError, match="^base: 'zzz' is neither a bundled test preset"):
        presets.load("zzz")


def test_user_yaml_starts_from_a_degradation_preset(tmp_path):
    from pairforge.degradations import load_preset

    f = tmp_path / "mine.yaml"
    f.write_text("base: osediff\nname: mine\nfirst:\n  jpeg: {quality_range: [70, 90]}\n")
    cfg = load_preset(f)
    ref = load_preset("osediff")
    assert cfg.first.jpeg.quality_range == (70, 90)
    assert cfg.first.blur == ref.first.blur and cfg.hr_size == ref.hr_size


def test_fingerprint_is_shared_and_content_based():
    a, b = DegradationConfig(), DegradationConfig()
    assert a.fingerprint() == b.fingerprint() == fingerprint(a)
    assert a.replace(**{"first.noise.gray_prob": 0.3}).fingerprint() != a.fingerprint()
    t = training_from_dict({"base": "tiny"})
    assert t.fingerprint() == fingerprint(t) and len(t.fingerprint()) == 64
