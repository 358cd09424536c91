"""torchvision's classification models, imported by tracing and every gradient compared with
PyTorch's autograd, in training and evaluation mode, float64 (``python -m manualbp.verify
--torchvision NAME`` does the same from the command line)."""
import pytest

from manualbp.verify.cli import main as verify_main
from manualbp.verify.torchvision_zoo import CLASSIFIERS as MODELS

@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", list(MODELS))
def test_torchvision_model_agrees(torch, torchvision_models, name, mode):
    from manualbp.verify.torch_import import compare_torch
    from manualbp.verify.torchvision_zoo import build
    options, shape = MODELS[name]
    torch.manual_seed(0)
    module = build(name, 10, **options).train(mode == "train")
    gen = torch.Generator().manual_seed(1)
    x = torch.rand((2, *shape), generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (2,), generator=gen)
    report = compare_torch(module, x, y)
    assert report.passed, report.format()
    assert {n for n, _ in module.named_parameters()} <= {row.name for row in report.rows}
