"""Verify any PyTorch model: a torch.nn.Module imported into manualbp (structure, weights,
buffers) and every gradient of the user's own module, run by autograd, compared with the
hand-written backward -- an MLP, a LeNet-style CNN with batch norm and dropout, and a small
ResNet shaped like torchvision's (BasicBlocks with downsampling), in training and evaluation
mode, float64; clear refusals for what cannot be imported; the command line."""
import json
from collections import Counter

import numpy as np
import pytest

from manualbp.verify.cli import main as verify_main
from manualbp.verify.walk import ConversionError


def torch_models():
    """``{name: (factory, input shape)}``: an MLP, a LeNet-style CNN and a ResNet shaped like
    torchvision's (its ``BasicBlock`` and ``ResNet`` written out: torchvision is not a
    dependency)."""
    import torch
    nn = torch.nn

    class BasicBlock(nn.Module):
        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample, self.stride = downsample, stride

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            identity = x if self.downsample is None else self.downsample(x)
            return self.relu(out + identity)

    class ResNet(nn.Module):
        """torchvision's layout at small width: stem, max-pool, two stages, pool, fc."""

        def __init__(self, width=4, classes=10):
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.layer1 = nn.Sequential(BasicBlock(width, width), BasicBlock(width, width))
            down = nn.Sequential(nn.Conv2d(width, 2 * width, 1, 2, bias=False), nn.BatchNorm2d(2 * width))
            self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, 2, down), BasicBlock(2 * width, 2 * width))
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(2 * width, classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.avgpool(self.layer2(self.layer1(x)))
            return self.fc(torch.flatten(x, 1))

    def mlp():
        return nn.Sequential(nn.Flatten(), nn.Linear(36, 20), nn.Sigmoid(), nn.Linear(20, 12), nn.LeakyReLU(0.1),
                             nn.Dropout(0.25), nn.Linear(12, 5))

    def lenet():
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False),
                             nn.BatchNorm2d(6, momentum=0.3, eps=1e-3), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
                             nn.Dropout(0.3), nn.Linear(24, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Identity(),
                             nn.Linear(16, 5))

    return {"mlp": (mlp, (1, 6, 6)), "lenet": (lenet, (1, 16, 16)), "resnet": (ResNet, (3, 32, 32))}


def batch(torch, shape, n=6, classes=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((n, *shape), generator=gen, dtype=torch.float64), torch.randint(0, classes, (n,), generator=gen)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", ["mlp", "lenet", "resnet"])
def test_every_gradient_of_a_torch_model_agrees(torch, name, mode):
    from manualbp.verify.torch_import import compare_torch
    torch.manual_seed(1)
    make, shape = torch_models()[name]
    module = getattr(make(), mode)()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    x, y = batch(torch, shape, classes=10 if name == "resnet" else 5)
    report = compare_torch(module, x, y)
    assert report.passed, report.format()
    rows = {row.name for row in report.rows}
    assert {"output", "loss", "input"} <= rows and {n for n, _ in module.named_parameters()} <= rows
    statistics = {n for n in module.state_dict() if n.endswith(("running_mean", "running_var"))}
    assert statistics <= rows
    for key, value in module.state_dict().items():               # the user's module is left alone
        assert torch.equal(value, before[key]), key
    assert module.training == (mode == "train")
    assert json.loads(json.dumps(report.to_dict()))["passed"] is True


def test_the_import_has_the_weights_buffers_and_mode(torch):
    """The traced import holds copies of every parameter and buffer under its torch name, in the
    module's mode, and computes what the module computes, at a batch other than the traced one."""
    from manualbp.layers import Apply
    from manualbp.verify.torch_import import from_torch
    torch.manual_seed(2)
    module = torch_models()["resnet"][0]().double()
    module.train()
    module(torch.rand(4, 3, 32, 32, dtype=torch.float64))          # running statistics away from 0 / 1
    module.eval()
    model = from_torch(module, (3, 32, 32))
    state = model.state_dict()
    assert set(model.named_parameters()) == {n for n, _ in module.named_parameters()}
    np.testing.assert_array_equal(state["layer2.0.downsample.1.running_var"],
                                  module.layer2[0].downsample[1].running_var.numpy())
    np.testing.assert_array_equal(state["fc.weight"], module.fc.weight.detach().numpy())
    assert not model.training
    assert all(not m.training for _, m in model.modules() if isinstance(m, Apply) and m.op.name == "batch_norm")
    counts = Counter(m.op.name for _, m in model.modules() if m.op is not None)
    assert counts == {"conv2d": 10, "batch_norm": 10, "relu": 9, "max_pool2d": 1, "add": 4, "global_avg_pool2d": 1,
                      "reshape": 1, "linear": 1}, counts
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    np.testing.assert_allclose(model.forward(model.bk.asarray(x.numpy())), module(x).detach().numpy(),
                               rtol=1e-12, atol=1e-14)


def test_unsupported_settings_are_refused_with_the_node_and_module(torch):
    from manualbp.verify.torch_import import from_torch
    nn = torch.nn
    module = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ELU()))
    with pytest.raises(ConversionError, match=r"cannot import node 'elu' \(aten.elu.default\) in 1.0: no op traces "
                                              r"aten.elu.default; supported are .*aten.linear.default"):
        from_torch(module, (4,))
    refused = ((nn.Conv2d(2, 2, 2, padding="same"), "in 0: padding 'same'"),
               (nn.Conv2d(2, 2, 3, padding_mode="reflect"), "in 0: .*reflect"),
               (nn.MaxPool2d(2, dilation=2), "in 0: .*dilation"),
               (nn.AvgPool2d(2, divisor_override=3), "in 0: .*divisor_override"))
    for bad, words in refused:
        with pytest.raises(ConversionError, match=words):
            from_torch(nn.Sequential(bad), (2, 8, 8))


def factory():
    import torch
    torch.manual_seed(3)
    return torch_models()["lenet"][0]().double().train()


def test_command_line_compares_a_factory(torch, capsys, tmp_path):
    out = tmp_path / "report.json"
    status = verify_main(["--torch-model", "test_from_torch:factory", "--input-shape", "1", "16", "16", "--train",
                          "--batch", "4", "--json", str(out)])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "PASS" in printed and "training mode" in printed and "4.weight" in printed
    assert json.loads(out.read_text())[0]["passed"] is True
    with pytest.raises(SystemExit, match="--torch-model nocolon: expected package.module:factory"):
        verify_main(["--torch-model", "nocolon", "--input-shape", "3"])
    with pytest.raises(SystemExit, match="--torch-model needs --input-shape"):
        verify_main(["--torch-model", "test_from_torch:factory"])


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_the_import_passes_the_zoo_checks_in_both_directions(torch, framework):
    """The imported LeNet (Tanh, dropout, padded pooling, adaptive pooling, batch norm) through
    the manualbp -> framework rules of ``verify_model``, and back to torch by ``to_torch``."""
    if framework == "jax":
        pytest.importorskip("jax")
    from manualbp.verify import from_torch, to_torch, verify_model
    torch.manual_seed(4)
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh(), nn.MaxPool2d(3, 2, 1),
                        nn.AvgPool2d(2, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5),
                        nn.Linear(3, 4)).double().train()
    model = from_torch(net, (1, 12, 12))
    x, y = batch(torch, (1, 12, 12), classes=4)
    xb, yb = model.bk.asarray(x.numpy()), model.bk.asarray(y.numpy(), dtype="int64")
    report = verify_model(model, xb, yb, against=framework)
    assert report.passed, report.format()
    model.eval()
    twin = to_torch(model).eval()
    np.testing.assert_allclose(twin(x).detach().numpy(), model.forward(xb), rtol=1e-12, atol=1e-14)
