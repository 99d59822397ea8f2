"""Numerical parity with timm (PyTorch, CPU) for nf_resnet50 and dm_nfnet_f0.

timm's random initialisation (with every gain, bias and SkipInit scalar
randomised so that no path is trivially zero) is transferred into our Keras
model by ``dp_zoo.models.convert``; logits must agree to <= 1e-4 relative L2
in eval mode. Our defaults follow DeepMind's conventions; the model under test
is built with ``TIMM_CONVENTIONS`` (explicit config fields) to match timm.

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
from dp_zoo.models.convert import from_timm_state_dict

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, torch, timm
    import dp_zoo
    from dp_zoo.models.convert import from_timm_state_dict
    ours, theirs, res = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.manual_seed(0)
    tm = timm.create_model(theirs, pretrained=False).eval()
    with torch.no_grad():
        for n, p in tm.named_parameters():
            if n.endswith("gain") or "skipinit" in n:
                p.copy_(torch.rand_like(p) + 0.5)
            elif n.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.1)
    from dp_zoo.models.nf_resnet import TIMM_CONVENTIONS
    family = "nfnet" if ours.startswith("nfnet") else "nf_resnet"
    km = dp_zoo.create_model(ours, num_classes=1000, input_shape=(res, res, 3), **TIMM_CONVENTIONS[family])
    from_timm_state_dict(km, tm.state_dict())
    x = np.random.default_rng(0).normal(size=(2, 3, res, res)).astype(np.float32)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    got = km(x.transpose(0, 2, 3, 1), training=False).numpy()
    print(json.dumps({"rel_l2": float(np.linalg.norm(got - ref) / np.linalg.norm(ref)),
                      "ref_norm": float(np.linalg.norm(ref))}))
""")


@pytest.mark.slow
@pytest.mark.parametrize("ours,theirs", [("nf_resnet50", "nf_resnet50"), ("nfnet_f0", "dm_nfnet_f0")])
def test_logits_match_timm(ours, theirs):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    r = subprocess.run([sys.executable, "-c", SCRIPT, ours, theirs, "128"], capture_output=True, text=True,
                       timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["ref_norm"] > 0
    assert out["rel_l2"] <= 1e-4, out


def test_conversion_errors_name_the_keys():
    m = dp_zoo.create_model("nf_resnet_test", num_classes=5)
    with pytest.raises(ValueError, match="missing stem.conv.weight"):
        from_timm_state_dict(m, {})
    sd = {"stem.conv.weight": np.zeros((8, 3, 7, 7)), "bogus.weight": np.zeros(3)}
    with pytest.raises(ValueError, match="unexpected bogus.weight"):
        from_timm_state_dict(m, sd)
