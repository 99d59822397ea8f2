"""Architecture registry: clear errors, the list of WRN variants, each family's default recipes."""

import dataclasses

import pytest

import dp_zoo
from dp_zoo.models import _registry


def test_unknown_name_suggests_close_names():
    with pytest.raises(ValueError, match=r"Did you mean: .*wrn16_4"):
        dp_zoo.create_model("wrn16_5", num_classes=10)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "10", True])
def test_bad_num_classes(bad):
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        dp_zoo.create_model("wrn_test", num_classes=bad)


def test_missing_num_classes_says_what_to_pass():
    with pytest.raises(ValueError, match="num_classes is required .*pass e.g. num_classes=10"):
        dp_zoo.create_model("wrn_test", num_classes=None)


@pytest.mark.parametrize("bad", [(8, 8), (8, 8, 1, 1), (0, 8, 1), (8.0, 8, 1)])
def test_bad_input_shape(bad):
    with pytest.raises(ValueError, match=r"input_shape must be \(height, width, channels\)"):
        dp_zoo.create_model("wrn_test", num_classes=10, input_shape=bad)


def test_bad_overrides_are_clear():
    with pytest.raises(ValueError, match="6n\\+4"):
        dp_zoo.create_model("wrn_test", num_classes=10, depth=11)
    with pytest.raises(ValueError, match=r"Unknown wrn_test override 'scalenorm'. Did you mean: .*scale_norm"):
        dp_zoo.create_model("wrn_test", num_classes=10, scalenorm=True)
    # Every family registers through the same builder: the same error.
    with pytest.raises(ValueError, match=r"Unknown nf_resnet_test override 'skip_int'. Did you mean: .*skip_init"):
        dp_zoo.create_model("nf_resnet_test", num_classes=10, skip_int=False)
    with pytest.raises(ValueError, match=r"Unknown nfnet_test override 'se_ration'. Did you mean: .*se_ratio"):
        dp_zoo.create_model("nfnet_test", num_classes=10, se_ration=0.5)
    with pytest.raises(ValueError, match="groups"):
        dp_zoo.create_model("wrn_digits", num_classes=10, groups=5)


def test_list_architectures_has_the_wrn_variants():
    names = dp_zoo.list_architectures()
    expected = {"wrn16_4", "wrn16_4_scalenorm", "wrn28_10", "wrn40_4", "wrn_test", "wrn_digits"}
    assert expected <= set(names)
    assert names == sorted(names)
    assert set(dp_zoo.list_architectures("wrn")) >= expected


@pytest.mark.parametrize("name", ["nf_resnet_test", "nfnet_test"])
def test_nf_old_spelling_skipinit_is_accepted(name):
    """Saved configs (a run's model_kwargs, e.g. TIMM_CONVENTIONS recorded by --init) spell it skipinit."""
    def gains(m):
        return sum(l.name.endswith("_skipinit") for l in m.layers)

    assert gains(dp_zoo.create_model(name, num_classes=3)) == 4
    assert gains(dp_zoo.create_model(name, num_classes=3, skipinit=False)) == 0
    assert gains(dp_zoo.create_model(name, num_classes=3, skip_init=False)) == 0
    assert gains(dp_zoo.create_model(name, num_classes=3, skipinit=False, skip_init=False)) == 0
    with pytest.raises(ValueError, match="disagree"):
        dp_zoo.create_model(name, num_classes=3, skipinit=True, skip_init=False)


def test_a_new_family_registers_its_default_recipes(monkeypatch):
    """register_family: the family's default recipe, a variant's own; a stray variant name is refused."""
    @dataclasses.dataclass(frozen=True)
    class Cfg:
        depth: int = 1

    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))
    monkeypatch.setattr(_registry, "_DEFAULT_RECIPES", dict(_registry._DEFAULT_RECIPES))
    _registry.register_family({"toy_a": Cfg(), "toy_b": Cfg(2)}, lambda cfg, **kw: None, default_shape=(8, 8, 1),
                              default_recipe="wrn16_4_cifar10_eps8", variant_recipes={"toy_b": "wrn_digits_eps8"})
    assert _registry.default_recipe("toy_a") == "wrn16_4_cifar10_eps8"
    assert _registry.default_recipe("toy_b") == "wrn_digits_eps8"
    assert "toy_a" in _registry.list_architectures()
    with pytest.raises(ValueError, match=r"variant_recipes names variants the family does not have: \['toy_z'\]"):
        _registry.register_family({"toy_c": Cfg()}, lambda cfg, **kw: None, default_shape=(8, 8, 1),
                                  default_recipe="wrn_digits_eps8", variant_recipes={"toy_z": "wrn_digits_eps8"})
