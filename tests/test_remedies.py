"""The remedies for collapsing noise and the released code's rule: the prior's gradient by finite
differences, adversarial training on exactly ``pgd``'s examples, the weighted loss, the released
rule's missing sign, and their flags on the command line."""
import numpy as np
import pytest

from manualbp import checkpoint, experiments, get_backend
from manualbp.attacks import pgd
from manualbp.checkpoint import CheckpointError
from manualbp.gradcheck import numerical_gradient, relative_error
from manualbp.layers import SoftmaxCrossEntropy
from manualbp.model import held_noise, noise_layers
from manualbp.remedies import AdversarialTraining, SigmaPenalty
from manualbp.train import Trainer, make_optimizers, model_options
from manualbp.zoo import mlp

SIZES = (12, 8, 6, 3)


def small(bk, variant="mlpn", **options):
    bk.seed([0, 1])
    return mlp(bk, variant, "relu", SIZES, **options)


def batch(bk, n=10):
    rng = np.random.default_rng(0)
    return bk.asarray(rng.random((n, SIZES[0]))), bk.asarray(rng.integers(0, SIZES[-1], n), dtype="int64")


@pytest.mark.parametrize("target", [1.0, 0.3])
def test_sigma_penalty_gradient_matches_finite_differences(bk64, target):
    model = small(bk64)
    for layer in noise_layers(model).values():                 # levels on both sides of the target
        layer.params["sigma"][...] = bk64.uniform(0.05, 2.0, layer.shape)
        layer.grads["sigma"][...] = 0
    penalty = SigmaPenalty(0.7, target)
    penalty.add_gradient(model)
    for name, layer in noise_layers(model).items():
        numeric = numerical_gradient(lambda: float(penalty.value(model)), layer.params["sigma"])
        assert relative_error(layer.grads["sigma"], numeric) < 1e-8, name


def test_weighted_loss_gradient_matches_finite_differences(bk64):
    loss = SoftmaxCrossEntropy(bk64)
    logits = bk64.uniform(-2, 2, (6, 4))
    labels = bk64.asarray(np.array([0, 1, 2, 3, 0, 1]), dtype="int64")
    weights = bk64.uniform(0, 2, (6,))
    loss.forward(logits, labels, weights)
    seed = loss.backward()
    numeric = numerical_gradient(lambda: float(loss.forward(logits, labels, weights)), logits)
    assert relative_error(seed, numeric) < 1e-8
    plain = float(loss.forward(logits, labels))
    assert float(loss.forward(logits, labels, bk64.full((6,), 1.0))) == pytest.approx(plain, rel=1e-15)


def test_adversarial_training_trains_on_the_pgd_examples_of_the_model_state(bk64):
    """The step's training input is ``pgd(model, x, y, ...)`` on the model as it was, drawn from
    the same generator state; the weights' and sigma's gradients come from one backward."""
    model = small(bk64)
    x, y = batch(bk64)
    adversarial = AdversarialTraining(budget=0.1, alpha=0.03, steps=3)
    bk64.seed(5)
    expected = pgd(model, x, y, 0.1, 0.03, 3, random_start=True)
    seen = []
    forward = model.forward
    model.forward = lambda a: (seen.append((model.training, a.copy())), forward(a))[1]
    trainer = Trainer(model, make_optimizers(model)[0], batch_size=10, adversarial=adversarial)
    model.train()
    bk64.seed(5)
    trainer.step(x, y)
    trained_on = [a for training, a in seen if training]
    assert len(trained_on) == 1
    np.testing.assert_array_equal(bk64.to_host(trained_on[0]), bk64.to_host(expected))
    assert float(abs(expected - x).max()) > 0.05
    assert all(float(abs(g).sum()) > 0 for g in model.named_gradients().values())


def test_mixed_adversarial_loss_weighs_clean_and_adversarial_images(bk64):
    model = small(bk64, "mlp")
    x, y = batch(bk64)
    bk64.seed(5)
    xs, ys, weights = AdversarialTraining(0.1, 0.03, 3, mix=0.25).batch(model, x, y)
    assert xs.shape == (20, SIZES[0]) and (ys[:10] == y).all() and (ys[10:] == y).all()
    np.testing.assert_array_equal(bk64.to_host(xs[:10]), bk64.to_host(x))
    loss = SoftmaxCrossEntropy(bk64)
    mixed = float(loss.forward(model.forward(xs), ys, weights))
    clean, adv = float(loss.forward(model.forward(x), y)), float(loss.forward(model.forward(xs[10:]), y))
    assert mixed == pytest.approx(0.75 * clean + 0.25 * adv, rel=1e-12)


def test_adversarial_training_weighs_images_that_come_weighted(bk64):
    """A remedy is a hook on the step's batch: weights given with the clean batch carry over to
    each image's clean and adversarial copy."""
    model = small(bk64, "mlp")
    x, y = batch(bk64)
    given = bk64.uniform(0, 2, (10,))
    _, _, weights = AdversarialTraining(0.1, 0.03, 3, mix=0.25).batch(model, x, y, given)
    expected = np.concatenate([1.5 * bk64.to_host(given), 0.5 * bk64.to_host(given)])
    np.testing.assert_allclose(bk64.to_host(weights), expected, rtol=1e-15)
    assert AdversarialTraining(0.1, 0.03, 3).batch(model, x, y, given)[2] is given


def test_released_rule_drops_the_sign_of_sigma(bk64):
    """``released``: sigma from N(0, 1) (some negative), |sigma| in the forward pass, and Eq. (3)
    without sign(sigma): for the negative levels its gradient is the true one with the wrong sign."""
    released, correct = small(bk64, **model_options({"sigma_update": "released"})), small(bk64, abs_sigma=True)
    x, y = batch(bk64)
    for (name, a), b in zip(noise_layers(released).items(), noise_layers(correct).values()):
        assert a.abs_sigma and float(a.sigma.min()) < 0 < float(a.sigma.max()), name
        b.params["sigma"][...] = a.params["sigma"]
    correct.load_state_dict(released.state_dict())
    grads = []
    for model in (released, correct):
        loss = SoftmaxCrossEntropy(bk64)
        model.train()
        bk64.seed(3)
        loss.forward(model.forward(x), y)
        model.backward(loss.backward())
        grads.append(model.named_gradients())
    for name in grads[0]:
        expected = grads[1][name]
        if name.endswith("sigma"):
            sigma = released.named_parameters()[name]
            expected = expected * bk64.xp.sign(sigma)           # the sign the released code leaves out
        np.testing.assert_allclose(bk64.to_host(grads[0][name]), bk64.to_host(expected), rtol=1e-12, atol=1e-15, err_msg=name)
    weights, sigma_opt = make_optimizers(released, sigma_update="released")[0]
    assert sigma_opt is None and any(n.endswith("sigma") for n in weights.names) and weights.weight_decay > 0


def test_released_rule_on_the_fast_kernel_is_the_reference(backend_name):
    models = [small(get_backend(backend_name, "float64", 0, k), released=True) for k in ("fast", "reference")]
    x, y = batch(models[0].bk)
    grads = []
    for model in models:
        loss = SoftmaxCrossEntropy(model.bk)
        model.train()
        with held_noise(model):
            for layer in noise_layers(model).values():             # the same draws on both
                layer.eps = model.bk.asarray(np.random.default_rng(1).normal(size=(10, *layer.shape)))
            loss.forward(model.forward(x), y)
            model.backward(loss.backward())
        grads.append(model.named_gradients())
    for name in grads[0]:
        np.testing.assert_allclose(*(m.bk.to_host(g[name]) for m, g in zip(models, grads)), rtol=1e-12, atol=1e-15, err_msg=name)


def run(out, *flags):
    return experiments.main("mlp", ["--variant", "mlpn", "--activation", "relu", "--epochs", "1", "--batch-size",
                                    "32", "--out", str(out), "--no-progress", *flags])


def test_remedies_from_the_command_line_are_recorded_and_held_on_resume(tmp_path, tiny_mnist):
    metrics = run(tmp_path, "--adversarial", "pgd", "--adv-steps", "2", "--sigma-penalty", "0.5")
    training = metrics["results"][0]["training"]
    assert training["adversarial"] == {"budget": 25 / 255, "alpha": 5 / 255, "steps": 2, "mix": 1.0,
                                       "random_start": True}
    assert training["sigma_penalty"] == {"strength": 0.5, "target": 1.0}
    _, meta = checkpoint.load(str(tmp_path / "checkpoints" / "mlpn-relu.npz"))
    assert meta["settings"]["adversarial"]["steps"] == 2
    with pytest.raises(CheckpointError, match="sigma_penalty"):
        run(tmp_path, "--epochs", "2", "--resume", "--adversarial", "pgd", "--adv-steps", "2",
            "--sigma-penalty", "0.1")


@pytest.mark.parametrize("flags, words", [
    (["--adv-steps", "3"], "--adv-steps 3: expected no value without --adversarial pgd"),
    (["--adversarial", "pgd", "--adv-budget", "-0.1"], "--adv-budget -0.1: expected a positive finite"),
    (["--adv-mix", "0"], "--adv-mix 0.0: expected a number in (0, 1]"),
    (["--sigma-penalty", "nan"], "--sigma-penalty nan: expected a positive finite number"),
    (["--sigma-target", "0"], "--sigma-target 0.0: expected a positive finite number"),
])
def test_bad_remedy_flags_are_refused_before_any_work(tmp_path, tiny_mnist, flags, words):
    with pytest.raises(experiments.SettingError) as err:
        run(tmp_path, *flags)
    assert words in str(err.value) and not tiny_mnist
