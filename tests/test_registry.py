"""One table of datasets and one model registry: every family builds for each of its datasets
through one signature, the surrogates come from the same registry, the command line of every
training script is derived from both, and training has one path whose optimisers leave the
model as it is."""
import numpy as np
import pytest

from manualbp import datasets, experiments, get_backend, zoo
from manualbp.attacks import surrogate_builder, surrogate_training
from manualbp.datasets import DATASETS, get_dataset, pixels
from manualbp.model import noise_layers
from manualbp.train import load_model, make_optimizers, model_options, train_model
from manualbp.verify.models import zoo_models

SMALL = {"width": 2}                    # ResNets at the paper's structure, a fraction of the cost


def build_options(family):
    return SMALL if "width" in dict(family.options) else {}


@pytest.mark.parametrize("name", list(zoo.FAMILIES))
def test_every_family_builds_for_each_of_its_datasets(name):
    bk = get_backend("numpy", "float32", 0)
    family = zoo.FAMILIES[name]
    for dataset in family.datasets:
        data = get_dataset(dataset)
        for _, variant, activation in family.rows()[:2]:
            model = family.model(bk, variant, activation, dataset, **build_options(family))
            assert tuple(model.input_shape) == data.image_shape
            x = bk.uniform(0, 1, (2, *data.image_shape))
            assert model.forward(x).shape == (2, data.classes)
    with pytest.raises(ValueError, match=f"family {name!r} is evaluated on"):
        zoo.get_family(name, "imagenet")


def test_the_table_of_datasets_is_consistent():
    families = {d for f in zoo.FAMILIES.values() for d in f.datasets}
    assert families == set(DATASETS)
    for name, data in DATASETS.items():
        assert data.name == name and len(data.split) == 3 and len(data.image_shape) == 3
        assert {"optimizer", "lr", "weight_decay", "epochs", "batch_size"} <= set(data.training)
        assert {"fgsm", "pgd", "lbfgs", "sweep"} == set(data.attacks)
        assert data.attacks["pgd"]["budget"] > 0 and data.attacks["fgsm"]["budget"] > 0
        family, variant, options = data.surrogate
        assert variant in zoo.FAMILIES[family].variants
        assert data.class_names is None or len(data.class_names) == data.classes
        assert (data.mean is None) == (data.std is None)
    with pytest.raises(ValueError, match="unknown dataset 'svhn': expected one of mnist, fashion-mnist"):
        get_dataset("svhn")


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_each_surrogate_comes_from_the_registry(dataset):
    bk = get_backend("numpy", "float32", 0)
    data = get_dataset(dataset)
    options = SMALL if data.surrogate[0].startswith("resnet") else {}
    surrogate = surrogate_builder(dataset)(bk, **options)
    assert tuple(surrogate.input_shape) == data.image_shape and not noise_layers(surrogate)
    assert surrogate.forward(bk.uniform(0, 1, (2, *data.image_shape))).shape == (2, data.classes)
    training = surrogate_training(dataset)
    assert training["epochs"] == (30 if dataset == "cifar10" else data.training["epochs"])


def test_verify_names_every_model_of_the_registry():
    names = {zoo.model_name(v, a) for f in zoo.FAMILIES.values() for _, v, a in f.rows()}
    assert set(zoo_models()) == names
    assert {"mlpn-relu", "cnn-an", "resnet18-an", "resnet34"} <= names


def test_every_training_script_gets_its_flags_from_the_registries():
    for family in zoo.FAMILIES.values():
        args = experiments.parser(family).parse_args([])
        training = get_dataset(family.datasets[0]).training
        assert (args.lr, args.epochs, args.optimizer) == (training["lr"], training["epochs"], training["optimizer"])
        assert args.eval_batch_size == family.eval_batch_size
        assert hasattr(args, "augment") == get_dataset(family.datasets[0]).augment
        assert all(hasattr(args, name) for name, _ in family.options)
        assert args.out == f"runs/{family.datasets[0]}-{family.name}"


def test_make_optimizers_leaves_the_model_alone_and_the_builder_takes_abs_sigma(tmp_path):
    """The released code's ``|sigma|`` forward is a model option chosen when the model is built
    (and rebuilt from a checkpoint's settings), not something building the optimisers does."""
    bk = get_backend("numpy", "float64", 0)
    model = zoo.mlp(bk, "mlpn", "relu", sizes=(6, 5, 4, 3))
    make_optimizers(model, sigma_update="weights")
    assert not any(layer.abs_sigma for layer in noise_layers(model).values())
    assert model_options({"sigma_update": "weights"}) == {"abs_sigma": True}
    assert model_options({"sigma_update": "eq7"}) == {}
    rng = np.random.default_rng(0)
    splits = {k: (bk.asarray(rng.random((8, 6))), bk.asarray(rng.integers(0, 3, 8), dtype="int64"))
              for k in ("train", "val", "test")}
    training = {**get_dataset("mnist").training, "epochs": 1, "batch_size": 4, "sigma_update": "weights"}

    def build(b, **options):
        return zoo.mlp(b, "mlpn", "relu", sizes=(6, 5, 4, 3), **options)

    trained, trainer = train_model(bk, build, splits, training, seed=1, checkpoint_path=tmp_path / "m.npz",
                                   log=None, settings={"sigma_update": "weights"})
    assert all(layer.abs_sigma for layer in noise_layers(trained).values())
    loaded = load_model(bk, build, tmp_path / "m.npz")
    assert all(layer.abs_sigma for layer in noise_layers(loaded).values()) and not loaded.training
    for name, array in trained.named_parameters().items():
        np.testing.assert_array_equal(loaded.named_parameters()[name], array)


def test_pixels_is_the_one_place_images_are_scaled():
    bk = get_backend("numpy", "float32", 0)
    images = np.array([[[[0, 51, 255]]]], dtype=np.uint8)
    out = pixels(bk, images)
    assert out.dtype == np.float32 and out.shape == images.shape
    np.testing.assert_allclose(out.ravel(), [0, 0.2, 1])
    with pytest.raises(TypeError, match="expected uint8 images as the loaders return them, got float64"):
        pixels(bk, images / 255)


def test_load_splits_gives_images_in_the_unit_box_with_the_quick_run_limits(monkeypatch):
    rng = np.random.default_rng(0)
    fake = {"x": rng.integers(0, 256, (70, 1, 28, 28), dtype=np.uint8), "y": rng.integers(0, 10, 70)}
    monkeypatch.setitem(DATASETS, "mnist", DATASETS["mnist"].__class__(
        **{**vars(DATASETS["mnist"]), "load": lambda data_dir=None: fake}))
    bk = get_backend("numpy", "float32", 0)
    splits = datasets.load_splits(bk, "mnist", seed=2, limit_train=7, limit_eval=3)
    assert {k: v[0].shape for k, v in splits.items()} == {"train": (7, 1, 28, 28), "val": (3, 1, 28, 28),
                                                          "test": (3, 1, 28, 28)}
    assert all(v[0].dtype == np.float32 and v[1].dtype == np.int64 for v in splits.values())
    assert all(0 <= v[0].min() and v[0].max() <= 1 for v in splits.values())
    full = datasets.load_splits(bk, "mnist", seed=2)
    assert [len(v[1]) for v in full.values()] == [50, 10, 10]
    np.testing.assert_array_equal(full["train"][0][:7], splits["train"][0])
