"""Config: presets, YAML, overrides, and errors that name the field."""
import pytest

from pairforge.degradations import ConfigError, DegradationConfig, available_presets, load_preset


def test_presets_exist_and_differ():
    assert {"realesrgan-x4plus", "osediff", "adcsr-mild", "resshift"} <= set(available_presets())
    x4, ose, mild, rs = (load_preset(n) for n in ("realesrgan-x4plus", "osediff", "adcsr-mild", "resshift"))
    assert x4.usm.enabled and not ose.usm.enabled and not mild.usm.enabled and not rs.usm.enabled
    assert (x4.hr_size, ose.hr_size, mild.hr_size, rs.hr_size) == (256, 512, 512, 256)
    # AdcSR's dataset.py hard-codes sizes 7-21 for both stages (config.yml's blur_kernel_size2: 11 is unused)
    assert mild.first.jpeg.quality_range == (60, 95) and mild.second.blur.kernel_sizes == tuple(range(7, 22, 2))
    assert (x4.second_order_prob, rs.second_order_prob) == (1.0, 0.5)
    assert len({x4.fingerprint(), ose.fingerprint(), mild.fingerprint(), rs.fingerprint()}) == 4


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_scales(scale):
    assert load_preset("osediff", scale=scale).scale == scale


def test_round_trip_through_dict_and_yaml(tmp_path):
    cfg = load_preset("adcsr-mild", jpeg_backend="differentiable")
    assert DegradationConfig.from_dict(cfg.to_dict()) == cfg
    path = tmp_path / "mine.yaml"
    path.write_text(cfg.to_yaml())
    assert load_preset(path) == cfg
    (tmp_path / "derived.yaml").write_text("base: osediff\nname: mine\nfirst:\n  jpeg: {quality_range: [70, 90]}\n")
    derived = load_preset(tmp_path / "derived.yaml")
    assert derived.first.jpeg.quality_range == (70, 90) and derived.hr_size == 512 and derived.name == "mine"


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"scale": 3}, "scale"),
        ({"first.noise.sigma_range": [30, 1]}, "first.noise.sigma_range"),
        ({"second.blur.kernel_sizes": [8]}, "second.blur.kernel_sizes"),
        ({"first.resize.probs": [0.5, 0.5, 0.5]}, "first.resize.probs"),
        ({"final.sinc_prob": 1.5}, "final.sinc_prob"),
        ({"jpeg_backend": "fast"}, "jpeg_backend"),
        ({"first.jpeg.quality_range": [0, 101]}, "first.jpeg.quality_range"),
        ({"hr_size": 250}, "hr_size"),
        ({"first.blur.family_probs": {"iso": 0.5, "gauss": 0.5}}, "first.blur.family_probs"),
    ],
)
def test_invalid_values_name_the_field(overrides, field):
    with pytest.raises(ConfigError) as err:
        load_preset("realesrgan-x4plus", **overrides)
    assert str(err.value).startswith(field), str(err.value)


def test_unknown_fields_and_wrong_types_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"^first\.nosie: unknown field"):
        DegradationConfig.from_dict({"first": {"nosie": {}}})
    with pytest.raises(ConfigError, match=r"^first\.noise\.gray_prob: expected a number"):
        DegradationConfig.from_dict({"first": {"noise": {"gray_prob": "often"}}})
    with pytest.raises(ConfigError, match="neither a bundled degradation preset"):
        load_preset("no-such-preset")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_preset(bad)
