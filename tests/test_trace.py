"""Import by tracing (manualbp.verify.trace): a module whose forward is code -- torch functions,
methods, operators, parameters used directly -- becomes a graph of ops; what cannot be imported
stops with one line naming the node, its ATen op, where it is and what is supported; verdicts
tell round-off from a wrong gradient; JAX checks the same imported graph."""
import json

import numpy as np
import pytest

from manualbp.verify.walk import ConversionError


def code_net(torch):
    """A network whose forward is code: functions, methods, operators, a residual sum, a
    parameter used directly (layer scale), chunk and cat, softmax, mean over axes."""
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.bn = nn.Linear(6, 8), nn.BatchNorm1d(8)
            self.ln, self.fc = nn.LayerNorm(8), nn.Linear(8, 5)
            self.scale = nn.Parameter(torch.rand(8))
            self.drop = nn.Dropout(0.3)

        def forward(self, x):
            h = torch.relu(self.bn(self.fc1(torch.flatten(x, 1))))
            h = h + self.ln(h) * self.scale                     # a fork: deltas add
            a, b = h.chunk(2, dim=1)
            h = torch.cat([b, torch.sigmoid(a)], 1).softmax(-1)
            return self.fc(self.drop(h)) + h.mean(dim=1, keepdim=True)

    return Net()


def data(torch, shape, n=4, classes=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((n, *shape), generator=gen, dtype=torch.float64), torch.randint(0, classes, (n,), generator=gen)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_module_whose_forward_is_code_agrees(torch, mode):
    from manualbp.verify import compare_torch
    torch.manual_seed(0)
    net = code_net(torch).double().train(mode == "train")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = data(torch, (2, 3))
    report = compare_torch(net, x, y)
    assert report.passed, report.format()
    assert {n for n, _ in net.named_parameters()} | {"output", "loss", "input"} <= {r.name for r in report.rows}
    assert {"bn.running_mean", "bn.running_var"} <= {r.name for r in report.rows}
    for key, value in net.state_dict().items():                  # the user's module is left alone
        assert torch.equal(value, before[key]), key
    assert json.loads(json.dumps(report.to_dict()))["passed"] is True


def test_the_import_runs_at_any_batch_and_keeps_names_and_mode(torch):
    from manualbp.layers import Apply, Constant, Parameter
    from manualbp.verify import from_torch
    torch.manual_seed(1)
    net = code_net(torch).double().eval()
    model = from_torch(net, (2, 3))                                # traced at batch 2
    assert not model.training
    params = model.named_parameters()
    assert set(params) == {n for n, _ in net.named_parameters()}
    np.testing.assert_array_equal(params["fc1.weight"], net.fc1.weight.detach().numpy())
    assert isinstance(model.children["bn.running_var"], Constant)
    assert isinstance(model.children["scale"], Parameter)
    assert {m.op.name for _, m in model.modules() if isinstance(m, Apply)} >= {"linear", "batch_norm", "layer_norm",
                                                                              "mul", "add", "take", "cat", "softmax"}
    x = torch.rand(7, 2, 3, dtype=torch.float64)
    np.testing.assert_allclose(model.forward(model.bk.asarray(x.numpy())), net(x).detach().numpy(), rtol=1e-12,
                               atol=1e-14)
    np.testing.assert_array_equal(net.fc1.weight.detach().numpy(), params["fc1.weight"])   # copies, not views
    params["fc1.weight"][...] = 0
    assert net.fc1.weight.abs().sum() > 0


def test_a_call_without_a_rule_is_refused_in_one_line(torch):
    from manualbp.verify import from_torch
    nn = torch.nn

    class Inner(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, 1)

    net = nn.Sequential(nn.Linear(4, 4), nn.Sequential(Inner()))
    with pytest.raises(ConversionError) as err:
        from_torch(net, (4,))
    message = str(err.value)
    assert "\n" not in message
    assert "node 'cumsum' (aten.cumsum.default) in 1.0: no op traces aten.cumsum.default" in message
    assert "supported are" in message and "aten.conv2d.default" in message and "aten.linear.default" in message


def test_what_cannot_be_traced_is_refused_in_one_line(torch):
    from manualbp.verify import from_torch
    nn = torch.nn

    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    with pytest.raises(ConversionError, match=r"^cannot trace DataDependent: torch.export failed \(.*\); see "
                                              r"docs/verifying_pytorch.md, 'What cannot be traced'$"):
        from_torch(DataDependent(), (4,))


def test_an_in_place_change_of_a_value_read_later_is_refused(torch):
    from manualbp.verify import from_torch
    nn = torch.nn

    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            y = self.fc(x)
            view = y[:, :2]
            y.relu_()
            return view * 3

    with pytest.raises(ConversionError, match=r"changes 'linear' in place, and a later node reads that value \(or "
                                              r"a view of it\)"):
        from_torch(InPlace(), (4,))


def test_a_broken_rule_or_backward_is_caught(torch, monkeypatch):
    """A trace rule that drops the transpose, and a backward with a wrong term, each FAIL."""
    from manualbp.ops import mul, permute
    from manualbp.verify import compare_torch
    torch.manual_seed(2)
    net = code_net(torch).double().eval()
    x, y = data(torch, (2, 3))
    right = mul.backward

    def wrong(xp, delta, cache, need):
        return tuple(None if g is None else 1.01 * g for g in right(xp, delta, cache, need))

    monkeypatch.setattr(mul, "backward", wrong)
    report = compare_torch(net, x, y, kernels="reference")
    assert not report.passed and "scale" in report.failures and "output" not in report.failures
    monkeypatch.undo()

    class Transposed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(x.transpose(1, 2)).flatten(1)

    monkeypatch.setitem(permute.tracers, "aten.transpose.int", lambda call, x, dim0, dim1: x)
    net = Transposed().double()
    report = compare_torch(net, *data(torch, (3, 3), classes=9))
    assert not report.passed and "output" in report.failures



def ill_conditioned_net(torch):
    """Batch norm over two values per feature with a tiny floor: whatever its input, it gives
    nearly +-1, and the gradient through it is what is left of terms that cancel."""
    nn = torch.nn
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4, eps=1e-12), nn.Linear(4, 3)).double().train()


def test_round_off_is_told_apart_from_a_wrong_gradient(torch, monkeypatch):
    from manualbp.ops import batch_norm
    from manualbp.verify import compare_torch
    x, y = torch.rand(2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 2])
    report = compare_torch(ill_conditioned_net(torch), x, y, kernels="reference")
    rows = {row.name: row for row in report.rows}
    assert report.passed, report.format()
    for name in ("0.weight", "input"):                      # far beyond 1e-9, within their round-off
        assert rows[name].max_rel > 1e-8 and rows[name].reason == "round-off"
        assert rows[name].max_abs <= 100 * rows[name].spread
    assert "pass: within round-off (ill-conditioned" in report.format()
    assert "within round-off of ill-conditioned arrays: 0.weight" in report.format().splitlines()[-1]
    right = batch_norm.backward

    def wrong(xp, delta, cache, need):                      # dL/dx off by one part in a thousand
        dx, *rest = right(xp, delta, cache, need)
        return (None if dx is None else dx * (1 + 1e-3), *rest)

    monkeypatch.setattr(batch_norm, "backward", wrong)
    report = compare_torch(ill_conditioned_net(torch), x, y, kernels="reference")
    assert not report.passed and {"0.weight", "input"} <= set(report.failures), report.format()


def test_pytorchs_own_error_is_told_apart_from_a_wrong_gradient(torch, monkeypatch):
    """F.hardsigmoid's float64 derivative is 1/6 rounded to float32: every gradient through it
    is off by about 3e-8 in PyTorch; the run with the exact rule shows that the difference is
    PyTorch's. A backward off by 1e-6 still fails."""
    from manualbp.ops import hardsigmoid
    from manualbp.verify import compare_torch
    nn = torch.nn
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 6), nn.Hardsigmoid(), nn.Linear(6, 3)).double()
    x, y = data(torch, (4,), classes=3)
    report = compare_torch(net, x, y, kernels="reference")
    rows = {row.name: row for row in report.rows}
    assert report.passed, report.format()
    assert rows["0.weight"].reason == "reference" and rows["0.weight"].max_rel > 1e-8
    assert rows["0.weight"].exact_rel < 1e-13
    assert report.inexact == {"aten.hardsigmoid.default": "its float64 derivative is 1/6 rounded to float32, "
                                                          "1/6 + 5.0e-9"}
    assert "up to its own error in aten.hardsigmoid.default" in report.format().splitlines()[-1]
    right = hardsigmoid.backward
    monkeypatch.setattr(hardsigmoid, "backward", lambda xp, delta, cache, need: tuple(
        None if g is None else g * (1 + 1e-6) for g in right(xp, delta, cache, need)))
    report = compare_torch(net, x, y, kernels="reference")
    assert not report.passed and "0.weight" in report.failures


def test_jax_checks_the_same_imported_graph(torch, jax):
    """Three ways: the import of a module whose forward is code, differentiated by JAX's
    autograd through each op's JAX rule, agrees with the hand-written backward."""
    from manualbp.verify import from_torch, verify_model
    torch.manual_seed(4)
    net = code_net(torch).double().train()
    model = from_torch(net, (2, 3), batch=4)
    x, y = data(torch, (2, 3))
    report = verify_model(model, model.bk.asarray(x.numpy()), model.bk.asarray(y.numpy(), dtype="int64"), "jax")
    assert report.passed, report.format()
    assert {n for n, _ in net.named_parameters()} <= {row.name for row in report.rows}


def every_op_net(torch):
    """One small network calling every traced family: grouped, depthwise and dilated
    convolution, ceil-mode and average pooling, adaptive pooling, squeeze-excitation (mul),
    hardswish, layer norm channels-last (permute), chunk and cat, attention, gelu, roll, pad,
    gather by an index buffer, expand, and a linear head."""
    nn, F = torch.nn, torch.nn.functional

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.group = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)
            self.depth = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False)
            self.bn = nn.BatchNorm2d(8)
            self.se = nn.Conv2d(8, 8, 1)
            self.norm = nn.LayerNorm(8)
            self.qkv = nn.Linear(8, 24)
            self.table = nn.Parameter(torch.randn(7, 1))
            self.register_buffer("index", torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6]]))
            self.token = nn.Parameter(torch.randn(1, 1, 8))
            self.head = nn.Linear(8, 5)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.stem(x)), 3, 2, ceil_mode=True)
            x = F.hardswish(self.bn(self.depth(self.group(x))))
            x = x * torch.sigmoid(self.se(F.adaptive_avg_pool2d(x, 1)))
            x = F.avg_pool2d(F.pad(torch.roll(x, 1, 3), (0, 1, 0, 1)), 2, count_include_pad=False)
            tokens = self.norm(x.flatten(2).transpose(1, 2))             # (N, L, C), channels last
            tokens = torch.cat([self.token.expand(len(x), -1, -1), tokens[:, :3]], 1)
            q, k, v = self.qkv(tokens).chunk(3, -1)
            bias = self.table[self.index].squeeze(-1)
            attn = torch.softmax(q @ k.transpose(1, 2) + bias, -1)
            out = F.gelu(attn @ v) + F.scaled_dot_product_attention(q, k, v)
            return self.head(out.mean(1))

    return Net()


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_every_traced_family_agrees(torch, mode):
    from manualbp.verify import compare_torch
    torch.manual_seed(5)
    net = every_op_net(torch).double().train(mode == "train")
    report = compare_torch(net, *data(torch, (3, 12, 12), n=3))
    assert report.passed, report.format()


def test_an_imported_graph_runs_on_cupy_as_on_numpy(torch, cupy_standin):
    """CuPy API conformance (the stand-in, not a GPU): every traced family's op, forward and
    backward, on CuPy's kernels gives NumPy's numbers."""
    from manualbp import get_backend
    from manualbp.layers import SoftmaxCrossEntropy
    from manualbp.verify import from_torch
    torch.manual_seed(6)
    net = every_op_net(torch).double().train()
    x, y = data(torch, (3, 12, 12), n=3)
    results = []
    for name in ("numpy", "cupy"):
        bk = get_backend(name, "float64", 0)
        model = from_torch(net, (3, 12, 12), bk, batch=3)
        loss = SoftmaxCrossEntropy(bk)
        loss.forward(model.forward(bk.asarray(x.numpy())), bk.asarray(y.numpy(), dtype="int64"))
        dx = model.backward(loss.backward())
        results.append({"input": bk.to_host(dx), **{k: bk.to_host(g) for k, g in model.named_gradients().items()}})
    for key, value in results[0].items():
        np.testing.assert_allclose(results[1][key], value, rtol=1e-10, atol=1e-13, err_msg=key)
