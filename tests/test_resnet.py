"""Residual blocks and the ResNet18/34 builders: finite differences of blocks and of a whole small
ResNet, PyTorch parity of a full ResNet18-AN, and the shapes and names of every variant."""
import numpy as np
import pytest

from manualbp import get_backend, named_eps
from manualbp.gradcheck import check_gradients, directional_check
from manualbp.layers import BasicBlock, BatchNorm2d, GaussianNoise, SoftmaxCrossEntropy
from manualbp.model import noise_layers
from manualbp.zoo import RESNET18_VARIANTS, RESNET34_VARIANTS, resnet18, resnet34

TOL = 1e-7


def host_normal(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape)


# --- BasicBlock ------------------------------------------------------------------------------

@pytest.mark.parametrize("in_c, out_c, stride, size", [(3, 3, 1, 4), (2, 4, 2, 5)],
                         ids=["identity", "projection"])
@pytest.mark.parametrize("noise", [None, "learned"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_basic_block_gradients(bk64, in_c, out_c, stride, size, noise, training):
    out = (size - 1) // stride + 1
    layer = None if noise is None else GaussianNoise(bk64, (out_c, out, out), mode=noise, learn_mean=True)
    block = BasicBlock(bk64, in_c, out_c, stride, noise=layer)
    if layer is not None:
        layer.params["sigma"][...] = bk64.asarray(0.5 + np.abs(host_normal(7, layer.shape)))
        layer.params["mu"][...] = bk64.asarray(0.1 * host_normal(8, layer.shape))
    for name, module in block.modules():
        if isinstance(module, BatchNorm2d):      # non-trivial scale, shift and running statistics
            c = module.num_features
            module.params["weight"][...] = bk64.asarray(1 + 0.3 * host_normal(len(name), (c,)))
            module.params["bias"][...] = bk64.asarray(0.2 * host_normal(len(name) + 1, (c,)))
            module.buffers["running_mean"][...] = bk64.asarray(0.1 * host_normal(2, (c,)))
            module.buffers["running_var"][...] = bk64.asarray(1 + 0.5 * host_normal(3, (c,)) ** 2)
    if not training:
        block.eval(noise=True)
    x = bk64.asarray(host_normal(1, (3, in_c, size, size)))
    errors = check_gradients(block, x)
    expected = {"conv1.weight", "bn1.weight", "bn1.bias", "conv2.weight", "bn2.weight", "bn2.bias", "input"}
    if stride != 1:
        expected |= {"shortcut.conv.weight", "shortcut.bn.weight", "shortcut.bn.bias"}
    if noise:
        expected |= {"conv2.noise.sigma", "conv2.noise.mu"}
    assert set(errors) == expected
    assert max(errors.values()) < TOL, errors


def test_basic_block_structure(bk32):
    block = BasicBlock(bk32, 4, 8, stride=2)
    assert list(block.children) == ["conv1", "bn1", "act1", "conv2", "bn2", "shortcut", "add", "act2"]
    assert dict(block.edges)["add"] == ("bn2", "shortcut")
    identity = BasicBlock(bk32, 4, 4)
    assert list(identity.children) == ["conv1", "bn1", "act1", "conv2", "bn2", "add", "act2"]
    assert dict(identity.edges)["add"] == ("bn2", "input")
    assert block.output_shape((4, 9, 9)) == (8, 5, 5)
    x = bk32.asarray(host_normal(0, (2, 4, 9, 9)))
    y = block.forward(x)
    assert y.shape == (2, 8, 5, 5) and y.dtype == bk32.dtype and float(y.min()) >= 0
    assert block.backward(bk32.asarray(host_normal(1, y.shape)), input_grad=False) is None
    assert "BasicBlock(4, 8, stride=2, shortcut=projection)" == repr(block)


# --- whole models: finite differences -----------------------------------------------------------

@pytest.mark.parametrize("activation, h, tol", [("sigmoid", 1e-5, TOL), ("relu", 1e-6, 1e-5)])
def test_small_resnet_directional(bk64, activation, h, tol):
    """The whole ResNet18-AN (base width 4, 8x8 inputs) along one random direction of every
    parameter and the input. A smooth activation makes the check exact; with ReLU a step may
    cross a kink, so the step is smaller and the bound looser."""
    bk64.seed(1)
    model = resnet18(bk64, "resnet18-an", width=4, input_size=8, activation=activation)
    x = bk64.asarray(np.random.default_rng(0).random((4, 3, 8, 8)))
    y = bk64.asarray(np.array([1, 5, 9, 0]), dtype="int64")
    assert directional_check(model, x, SoftmaxCrossEntropy(bk64), y, h=h, seed=2) < tol


# --- PyTorch parity ------------------------------------------------------------------------------

def torch_resnet18(torch, p, buffers, eps, x):
    """ResNet18-AN written with torch.nn.functional on the given tensors (training mode)."""
    F = torch.nn.functional

    def conv(name, v, stride, padding):
        out = F.conv2d(v, p[f"{name}.weight"], None, stride, padding)
        if f"{name}.noise.eps" in eps:
            out = out + p[f"{name}.noise.sigma"] * eps[f"{name}.noise.eps"] + p[f"{name}.noise.mu"]
        return out

    def bn(name, v):
        return F.batch_norm(v, buffers[f"{name}.running_mean"], buffers[f"{name}.running_var"],
                            p[f"{name}.weight"], p[f"{name}.bias"], training=True, momentum=0.1, eps=1e-5)

    def fc(name, v):
        out = F.linear(v, p[f"{name}.weight"], p[f"{name}.bias"])
        if f"{name}.noise.eps" in eps:
            out = out + p[f"{name}.noise.sigma"] * eps[f"{name}.noise.eps"]
        return out

    mean = buffers["normalize.mean"].reshape(1, 3, 1, 1)
    std = buffers["normalize.std"].reshape(1, 3, 1, 1)
    v = F.relu(bn("bn1", conv("conv1", (x - mean) / std, 1, 1)))
    for stage in range(4):
        for b in range(2):
            name = f"layer{stage + 1}.{b}"
            stride = 2 if stage > 0 and b == 0 else 1
            out = F.relu(bn(f"{name}.bn1", conv(f"{name}.conv1", v, stride, 1)))
            out = bn(f"{name}.bn2", conv(f"{name}.conv2", out, 1, 1))
            skip = v
            if stride != 1:
                skip = bn(f"{name}.shortcut.bn", conv(f"{name}.shortcut.conv", v, stride, 0))
            v = F.relu(out + skip)
    v = v.mean(dim=(2, 3))
    v = F.relu(fc("fc1", v))
    v = F.relu(fc("fc2", v))
    return fc("fc3", v)


def test_resnet18_an_matches_torch(torch):
    """A full ResNet18-AN (CIFAR-10 head) on a 2x3x32x32 float64 batch: loss, every gradient
    (weights, BN scale and shift, sigma, mu, the input) and the running statistics after the step."""
    bk = get_backend("numpy", "float64", 0)
    model = resnet18(bk, "resnet18-an")
    for i, noise in enumerate(noise_layers(model).values()):  # distinct noise levels and means
        noise.params["sigma"][...] = bk.asarray(0.5 * np.abs(host_normal(i, noise.shape)))
        if "mu" in noise.params:
            noise.params["mu"][...] = bk.asarray(0.1 * host_normal(100 + i, noise.shape))
    x = np.random.default_rng(0).random((2, 3, 32, 32))
    y = np.array([3, 7])
    params = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in model.named_parameters().items()}
    buffers = {k: torch.tensor(v.copy()) for k, v in model.named_buffers().items()}

    loss = SoftmaxCrossEntropy(bk)
    value = float(loss.forward(model.forward(bk.asarray(x)), bk.asarray(y, dtype="int64")))
    dx = model.backward(loss.backward())

    eps = {k: torch.tensor(v) for k, v in named_eps(model).items()}
    assert len(eps) == 8 + 2                                   # conv2 of 8 blocks, fc1 and fc2
    xt = torch.tensor(x, requires_grad=True)
    torch_loss = torch.nn.functional.cross_entropy(torch_resnet18(torch, params, buffers, eps, xt),
                                                   torch.tensor(y))
    torch_loss.backward()
    assert abs(value - torch_loss.item()) <= 1e-12 * abs(value)
    grads = dict(model.named_gradients(), input=dx)
    refs = dict({k: t.grad for k, t in params.items()}, input=xt.grad)
    assert len(grads) == len(refs) and any(k.endswith("bn2.bias") for k in grads)
    for name, ref in refs.items():
        ref = ref.numpy()
        err = np.abs(grads[name] - ref).max() / np.abs(ref).max()
        assert err < 1e-9, f"{name}: relative error {err:.2e}"
    for name, buf in model.named_buffers().items():             # updated by the training step
        np.testing.assert_allclose(buf, buffers[name].numpy(), rtol=1e-12, atol=1e-15, err_msg=name)


# --- builders ----------------------------------------------------------------------------------

def noise_summary(model):
    return {name: (layer.mode, "mu" in layer.params, layer.shape) for name, layer in noise_layers(model).items()}


def test_resnet18_structure_and_size(bk32):
    plain = resnet18(bk32, "resnet18", hidden=())
    assert list(plain.children) == ["normalize", "conv1", "bn1", "act1", "layer1", "layer2", "layer3",
                                    "layer4", "pool", "fc"]
    # the usual CIFAR ResNet18 (3x3 stem, no bias before batch norm, one FC layer): 11,173,962
    assert sum(int(p.size) for p in plain.named_parameters().values()) == 11_173_962
    model = resnet18(bk32, "resnet18")
    assert [k for k in model.children][-5:] == ["fc1", "act_fc1", "fc2", "act_fc2", "fc3"]
    assert [model.children[f"fc{i}"].out_features for i in (1, 2, 3)] == [256, 128, 10]
    assert "layer2.0.shortcut.conv.weight" in model.named_parameters()
    assert "layer2.1.shortcut.conv.weight" not in model.named_parameters()
    assert not noise_layers(model)
    assert set(model.named_buffers()) >= {"normalize.mean", "layer4.1.bn2.running_var"}


@pytest.mark.parametrize("suffix, conv, fc", [
    ("", None, None), ("-mlp+", None, "fixed"), ("-a+", "fixed", "fixed"),
    ("-mlpn", None, "learned"), ("-an", "learned", "learned")])
def test_resnet_variants_place_noise(bk32, suffix, conv, fc):
    model = resnet18(bk32, "resnet18" + suffix, width=4, input_size=8)
    found = noise_summary(model)
    expected = {}
    if conv:
        shapes = {1: (4, 8, 8), 2: (8, 4, 4), 3: (16, 2, 2), 4: (32, 1, 1)}
        for stage, shape in shapes.items():
            for b in range(2):
                expected[f"layer{stage}.{b}.conv2.noise"] = (conv, conv == "learned", shape)
    if fc:
        expected.update({"fc1.noise": (fc, False, (256,)), "fc2.noise": (fc, False, (128,))})
    assert found == expected
    assert all(not layer.eval_noise for layer in noise_layers(model).values())


def test_resnet34_tiny_imagenet_shapes(bk32):
    model = resnet34(bk32, "resnet34-an", width=4)
    assert model.input_shape == (3, 64, 64)
    assert model.children["conv1"].stride == (2, 2)            # 64x64 stem: 3x3, stride 2
    found = noise_summary(model)
    assert len([n for n in found if ".conv2." in n]) == 3 + 4 + 6 + 3
    assert found["layer1.0.conv2.noise"][2] == (4, 32, 32) and found["layer4.2.conv2.noise"][2] == (32, 4, 4)
    assert [model.children[f"fc{i}"].out_features for i in (1, 2, 3, 4)] == [1024, 512, 256, 200]
    x = bk32.asarray(np.random.default_rng(0).random((2, 3, 64, 64)))
    assert model.forward(x).shape == (2, 200)
    assert RESNET34_VARIANTS == ("resnet34", "resnet34-mlp+", "resnet34-a+", "resnet34-mlpn", "resnet34-an")
    assert RESNET18_VARIANTS[-1] == "resnet18-an"


def test_resnet_builder_errors(bk32):
    with pytest.raises(ValueError, match="unknown resnet18 variant 'resnet34-an': expected one of resnet18, "):
        resnet18(bk32, "resnet34-an")
    with pytest.raises(ValueError, match="puts noise on hidden FC layers, but hidden=\\(\\) has none"):
        resnet18(bk32, "resnet18-mlpn", hidden=())
    with pytest.raises(ValueError, match="no ResNet set-up for dataset 'mnist'"):
        resnet18(bk32, "resnet18", "mnist")
    with pytest.raises(ValueError, match=r"model input must have shape \(N, 3, 8, 8\)"):
        resnet18(bk32, "resnet18", width=4, input_size=8).forward(bk32.zeros((2, 3, 32, 32)))


def test_resnet_trains_and_checkpoints(tmp_path):
    """float32 training with augmentation lowers the loss of a small ResNet18-AN on a fixed batch;
    a checkpoint restores the running statistics."""
    from manualbp.data import random_crop_flip
    from manualbp.train import Trainer, make_optimizers
    bk = get_backend("numpy", "float32", 0)
    model = resnet18(bk, "resnet18-an", width=4, input_size=8)
    rng = np.random.default_rng(0)
    x = bk.asarray(rng.random((32, 3, 8, 8)))
    y = bk.asarray(rng.integers(0, 10, 32), dtype="int64")
    trainer = Trainer(model, make_optimizers(model)[0], batch_size=32, augment=random_crop_flip, progress=False)
    before = trainer.evaluate(x, y)[0]
    for epoch in range(15):
        trainer.train_epoch(x, y, epoch)
    assert trainer.evaluate(x, y)[0] < before
    trainer.save(tmp_path / "ckpt.npz")
    running = model.named_buffers()["layer3.1.bn2.running_mean"].copy()
    model.named_buffers()["layer3.1.bn2.running_mean"][...] = 0
    trainer.load(tmp_path / "ckpt.npz")
    np.testing.assert_array_equal(model.named_buffers()["layer3.1.bn2.running_mean"], running)
