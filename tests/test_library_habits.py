"""dp_zoo used as a library, with Keras' and timm's habits: a quiet import, keras.saving.load_model of a
dp_zoo model after ``import dp_zoo``, ``create_model(..., pretrained=True)``, ``list_models("wrn*")``
(tests/test_zoo.py) and ``train --recipe R --model M``."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import dp_zoo
from dp_zoo.publish import zoo

SHIPPED = zoo.REPO_SAVED_MODELS / "wrn_digits_eps8"
# TensorFlow's start-up lines on a machine without a GPU (TF 2.21).
TF_NOISE = re.compile(r"cudart_stub|cuda_platform|cuInit|cpu_feature_guard|To enable the following instructions|"
                      r"oneDNN|absl::InitializeLog|Unable to register cu")


def _python(code, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # the user set nothing
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow  # processes that import TensorFlow
def test_library_use_is_as_quiet_as_the_command_lines_and_keras_loads_dp_zoo_models():
    """``import dp_zoo`` then any call: no TensorFlow C++ start-up lines (cuInit...), and Keras' own loader
    reads a dp_zoo model.keras without ``import dp_zoo.models``, whichever of TensorFlow and Keras comes first."""
    for imports in ("import dp_zoo, keras", "import dp_zoo, tensorflow, keras"):
        r = _python(f"{imports}\nimport numpy as np\n"
                    f"m = keras.saving.load_model({str(SHIPPED / 'model.keras')!r})\n"
                    "print(m.name, keras.models.load_model is keras.saving.load_model)\n"
                    "z = dp_zoo.load('wrn_digits_eps8')\n"
                    "print(z.predict(np.zeros((2, 8, 8, 1), np.uint8), verbose=0).shape)\n")
        assert r.returncode == 0, r.stderr[-3000:]
        assert r.stdout.split("\n")[:2] == ["wrn_digits True", "(2, 10)"], r.stdout
        assert not [ln for ln in r.stderr.splitlines() if TF_NOISE.search(ln)], r.stderr[-3000:]


def test_import_dp_zoo_stays_cheap():
    r = _python("import sys, dp_zoo\nprint(sorted(m for m in ('tensorflow', 'keras', 'dp_accounting') "
                "if m in sys.modules))")
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr[-2000:])


def test_create_model_pretrained_loads_the_zoo_weights_or_names_the_entries_that_have_them():
    with pytest.raises(ValueError, match="several published zoo entries: pass pretrained=<entry>, one of "
                                         "wrn_digits_eps1, wrn_digits_eps2"):
        dp_zoo.create_model("wrn_digits", pretrained=True)
    with pytest.raises(ValueError, match="no published zoo weights for wrn16_4; architectures with weights: "
                                         "wrn_digits"):
        dp_zoo.create_model("wrn16_4", num_classes=10, pretrained=True)
    with pytest.raises(ValueError, match="trained with num_classes=10, not 3"):
        dp_zoo.create_model("wrn_digits", num_classes=3, pretrained="wrn_digits_eps8")
    with pytest.raises(ValueError, match="not a published zoo entry of wrn_digits"):
        dp_zoo.create_model("wrn_digits", pretrained="wrn16_4_cifar10_eps8")
    model = dp_zoo.create_model("wrn_digits", num_classes=10, pretrained="wrn_digits_eps8")
    net = dp_zoo.load("wrn_digits_eps8", include_preprocessing=False)
    assert model.card["name"] == "wrn_digits_eps8"
    for a, b in zip(model.get_weights(), net.get_weights()):
        np.testing.assert_array_equal(a, b)
    fresh = dp_zoo.create_model("wrn_digits", num_classes=10, input_shape=(8, 8, 1))
    assert not all(np.array_equal(a, b) for a, b in zip(fresh.get_weights(), net.get_weights()))
    assert [w.shape for w in fresh.get_weights()] == [w.shape for w in net.get_weights()]


def test_train_takes_a_recipe_and_a_model_as_tune_does():
    """``--recipe R --model M``: R's settings on architecture M, the run named after M (it was refused)."""
    from dp_zoo.commands import train as train_cli

    args = train_cli._parser().parse_args(["--recipe", "wrn_digits_eps4", "--model", "wrn_test"])
    name, config, recipe = train_cli.resolve(args)
    want = zoo.recipes.get("wrn_digits_eps4").config
    assert (name, config.model, recipe.name) == ("wrn_test_eps4", "wrn_test", "wrn_test_eps4")
    assert config.replace(model=want.model) == want
