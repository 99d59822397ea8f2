"""Numerical parity with timm (PyTorch, CPU) for nf_resnet50 and dm_nfnet_f0.

timm's random initialisation (with every gain, bias and SkipInit scalar
randomised so that no path is trivially zero) is transferred into our Keras
model by ``dp_zoo.models.convert``; logits must agree to <= 1e-4 relative L2
in eval mode, and the per-block stochastic depth rates must be timm's. Our
defaults follow DeepMind's conventions; the model under test is built with
``TIMM_CONVENTIONS`` (explicit config fields) to match timm.

Runs in a subprocess that imports torch before TensorFlow: importing the CUDA
build of torch (its triton) after TensorFlow is loaded crashes the process.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dp_zoo
from dp_zoo.models.convert import from_timm_state_dict, to_timm_state_dict
from dp_zoo.models.nf_resnet import TIMM_CONVENTIONS

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, torch, timm
    import dp_zoo
    from dp_zoo.models.convert import from_timm_state_dict
    ours, theirs, res = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.manual_seed(0)
    # Drop path is identity in eval mode; it is on so that the per-block rates can be compared.
    tm = timm.create_model(theirs, pretrained=False, drop_path_rate=0.2).eval()
    with torch.no_grad():
        for n, p in tm.named_parameters():
            if n.endswith("gain") or "skipinit" in n:
                p.copy_(torch.rand_like(p) + 0.5)
            elif n.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.1)
    from dp_zoo.models.nf_resnet import TIMM_CONVENTIONS
    family = "nfnet" if ours.startswith("nfnet") else "nf_resnet"
    km = dp_zoo.create_model(ours, num_classes=1000, input_shape=(res, res, 3), drop_path_rate=0.2,
                             **TIMM_CONVENTIONS[family])
    theirs_rates = [getattr(blk.drop_path, "drop_prob", 0.0) for st in tm.stages for blk in st]
    names = {l.name: l.rate for l in km.layers if l.name.endswith("_drop_path")}
    ours_rates = [names.get(f"stage{s + 1}_block{b + 1}_drop_path", 0.0)
                  for s, st in enumerate(tm.stages) for b in range(len(st))]
    from_timm_state_dict(km, tm.state_dict())
    from dp_zoo.models.convert import to_timm_state_dict
    back, sd = to_timm_state_dict(km), tm.state_dict()
    exported_equal = set(back) == set(sd) and all(np.array_equal(back[k], sd[k].numpy()) for k in sd)
    x = np.random.default_rng(0).normal(size=(2, 3, res, res)).astype(np.float32)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    got = km(x.transpose(0, 2, 3, 1), training=False).numpy()
    print(json.dumps({"rel_l2": float(np.linalg.norm(got - ref) / np.linalg.norm(ref)),
                      "ref_norm": float(np.linalg.norm(ref)), "exported_equal": exported_equal,
                      "drop_path_max_diff": float(np.max(np.abs(np.subtract(ours_rates, theirs_rates))))}))
""")


@pytest.mark.slow
@pytest.mark.parametrize("ours,theirs", [("nf_resnet50", "nf_resnet50"), ("nfnet_f0", "dm_nfnet_f0")])
def test_logits_match_timm(ours, theirs):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    # An odd size (131 -> 66 -> 33 -> 17 ...): odd maps reach the stride-2 convolutions and the
    # shortcut pools, where TF SAME padding and ceil-mode pooling differ from the symmetric case.
    r = subprocess.run([sys.executable, "-c", SCRIPT, ours, theirs, "131"], capture_output=True, text=True,
                       timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["ref_norm"] > 0
    assert out["rel_l2"] <= 1e-4, out
    assert out["drop_path_max_diff"] < 1e-6, out  # the same stochastic depth schedule
    assert out["exported_equal"], out  # to_timm_state_dict gives timm's own tensors back


def test_conversion_errors_name_the_keys_and_leave_the_model_unchanged():
    m = dp_zoo.create_model("nf_resnet_test", num_classes=5)
    before = [w.copy() for w in m.get_weights()]
    with pytest.raises(ValueError, match="missing stem.conv.weight"):
        from_timm_state_dict(m, {})
    sd = to_timm_state_dict(m)
    with pytest.raises(ValueError, match="unexpected bogus.weight"):
        from_timm_state_dict(m, {**sd, "bogus.weight": np.zeros(3)})
    bad = {k: v + 1.0 for k, v in sd.items()}
    bad["head.fc.weight"] = np.zeros((7, 128), "float32")  # another number of classes
    with pytest.raises(ValueError, match=r"head.fc.weight: shape \(7, 128\), expected \(5, 128\)"):
        from_timm_state_dict(m, bad)
    for a, b in zip(m.get_weights(), before):  # nothing half-loaded
        np.testing.assert_array_equal(a, b)
    # timm's nf_resnet* have no SkipInit gains: the DeepMind-default model says what is missing.
    timm_like = dp_zoo.create_model("nf_resnet_test", num_classes=5, **TIMM_CONVENTIONS["nf_resnet"])
    with pytest.raises(ValueError, match="missing stages.0.0.skipinit_gain.*TIMM_CONVENTIONS|TIMM_CONVENTIONS.*missing stages.0.0.skipinit_gain"):
        from_timm_state_dict(m, to_timm_state_dict(timm_like))


@pytest.mark.parametrize("name", ["nf_resnet_test", "nfnet_test"])
def test_to_timm_and_back_is_exact(name):
    """Names and layouts (OIHW, [O,1,1,1] gains, [out, in] linear) invert exactly."""
    rng = np.random.default_rng(0)
    src = dp_zoo.create_model(name, num_classes=4)
    src.set_weights([rng.normal(size=w.shape).astype("float32") for w in src.get_weights()])
    sd = to_timm_state_dict(src)
    assert sd["stem.conv1.weight" if name == "nfnet_test" else "stem.conv.weight"].shape[:2] == (
        (2, 3) if name == "nfnet_test" else (8, 3))  # [out, in, kh, kw]
    assert sd["head.fc.weight"].shape == (4, src.get_layer("logits").kernel.shape[0])
    dst = from_timm_state_dict(dp_zoo.create_model(name, num_classes=4), sd)
    for a, b in zip(dst.get_weights(), src.get_weights()):
        np.testing.assert_array_equal(a, b)
