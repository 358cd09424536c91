"""torchvision's classification models, imported by tracing and every gradient compared with
PyTorch's autograd, in training and evaluation mode, float64; JAX's autograd on the same imported
graph; ``python -m manualbp.verify --torchvision NAME`` (other class counts, batches, input
sizes, float32, and its refusals)."""
import json

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


VIT_ARGS = ["--model-arg"] + [f"{k}={v}" for k, v in MODELS["VisionTransformer"][0].items()]


@pytest.mark.parametrize("name,mode", [("VisionTransformer", "train"), ("mobilenet_v3_small", "eval"),
                                       ("swin_t", "eval")])
def test_jax_agrees_on_the_imported_graph(torchvision_models, jax, name, mode, capsys):
    """Three ways: JAX's autograd through each op's JAX rule on the same imported graph."""
    options, shape = MODELS[name]
    extra = VIT_ARGS if name == "VisionTransformer" else []
    status = verify_main(["--torchvision", name, *extra, "--input-shape", *map(str, shape), "--against", "jax",
                          "--batch", "3", *(["--train"] if mode == "train" else [])])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "vs jax" in printed and "PASS" in printed


def test_the_command_line_verifies_a_torchvision_model(torchvision_models, capsys, tmp_path):
    out = tmp_path / "report.json"
    status = verify_main(["--torchvision", "squeezenet1_1", "--num-classes", "7", "--input-shape", "3", "40", "40",
                          "--train", "--batch", "3", "--json", str(out)])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "SqueezeNet: manualbp (fast kernels) vs torch" in printed and "training mode, batch 3" in printed
    report = json.loads(out.read_text())[0]
    assert report["passed"] and {"output", "loss", "input", "classifier.1.weight"} <= {r["name"] for r in report["rows"]}
    assert [r["shape"] for r in report["rows"] if r["name"] == "output"] == [[3, 7]]


def test_the_command_line_judges_float32_with_float32_tolerances(torchvision_models, capsys):
    status = verify_main(["--torchvision", "VisionTransformer", *VIT_ARGS, "--input-shape", "3", "32", "32",
                          "--dtype", "float32", "--batch", "2"])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "float32" in printed and "rtol 0.0001, atol 1e-07" in printed


def test_the_command_line_refuses_in_one_line(torchvision_models, capsys):
    assert verify_main(["--torchvision", "resnet9000", "--input-shape", "3", "32", "32"]) == 2
    assert "error: --torchvision resnet9000: not a model of torchvision.models; its classifiers are " in \
        capsys.readouterr().err
    assert verify_main(["--torchvision", "alexnet", "--input-shape", "3", "32", "32"]) == 2   # too small for it
    assert "error: cannot trace AlexNet: torch.export failed" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--model-arg aux_logits: expected KEY=VALUE with a Python literal"):
        verify_main(["--torchvision", "googlenet", "--model-arg", "aux_logits", "--input-shape", "3", "32", "32"])
    with pytest.raises(SystemExit, match="--torchvision needs --input-shape"):
        verify_main(["--torchvision", "resnet18"])
    with pytest.raises(SystemExit, match="--torch-model and --torchvision: expected one of them"):
        verify_main(["--torchvision", "resnet18", "--torch-model", "a:b", "--input-shape", "3", "8", "8"])


def test_the_table_script_writes_its_table(torchvision_models, tmp_path):
    """examples/verify_torchvision.py (the table of docs/verifying_pytorch.md), on one model."""
    import importlib.util

    from conftest import ROOT
    spec = importlib.util.spec_from_file_location("verify_torchvision", ROOT / "examples" / "verify_torchvision.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--out", str(tmp_path), "--models", "VisionTransformer"]) == 0
    table = (tmp_path / "torchvision.md").read_text().splitlines()
    assert table[0].startswith("| model | mode | verdict |") and len(table) == 4
    assert table[2].startswith("| VisionTransformer | train | pass |") and "attention" in table[2]
    reports = json.loads((tmp_path / "torchvision.json").read_text())
    assert [r["mode"] for r in reports] == ["train", "eval"] and all(r["passed"] for r in reports)


@pytest.mark.parametrize("name", ["VisionTransformer", "swin_t", "shufflenet_v2_x0_5", "convnext_tiny"])
def test_the_import_runs_at_another_batch(torchvision_models, torch, name):
    """Traced at a batch of 2, the import computes the module at a batch of 3: reshapes follow
    the batch (swin's windows of every image, the heads of attention), and the class token is
    expanded over the batch of the input."""
    import numpy as np

    from manualbp.verify import from_torch
    from manualbp.verify.torchvision_zoo import build
    options, shape = MODELS[name]
    torch.manual_seed(0)
    module = build(name, 10, **options)
    model = from_torch(module, shape, batch=2)
    x = torch.rand((3, *shape), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    np.testing.assert_allclose(model.forward(model.bk.asarray(x.numpy())), module(x).detach().numpy(),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_model_with_auxiliary_outputs_is_compared_on_its_first(torchvision_models, mode, capsys):
    """GoogLeNet with its auxiliary heads (the builder's default): in training mode its forward
    returns the logits and two auxiliary outputs; the first is compared and carries the loss (the
    heads get zero gradients on both sides); in evaluation mode the heads do not run and their
    running statistics are not compared."""
    status = verify_main(["--torchvision", "googlenet", "--input-shape", "3", "32", "32", "--batch", "2",
                          *(["--train"] if mode == "train" else [])])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert ("aux1.conv.bn.running_mean" in printed) == (mode == "train")
