"""Attacks: budgets and boxes respected, FGSM / PGD identities and closed forms, parity with the
same attacks in PyTorch, monotone strength on a trained model, both L-BFGS forms, EOT, and
clear errors for bad input."""
import numpy as np
import pytest

from manualbp import evaluate, get_backend
from manualbp.attacks import eot_pgd, expected_gradient, fgsm, input_gradient, lbfgs, lbfgs_targeted, pgd
from manualbp.layers import Linear
from manualbp.model import Sequential, evaluating
from manualbp.train import Trainer, make_optimizers
from manualbp.zoo import mlp

SIZES = (20, 16, 8, 3)


def data(bk, n=24, d=SIZES[0], k=SIZES[-1], seed=1):
    rng = np.random.default_rng(seed)
    return bk.asarray(rng.random((n, d))), bk.asarray(rng.integers(0, k, n), dtype="int64")


def blobs(n, seed):
    """Three separable classes in [0, 1]^20: class means 0.2 / 0.5 / 0.8 on disjoint pixels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.uniform(0.3, 0.5, (n, 20))
    for c in range(3):
        x[y == c, c * 6:(c + 1) * 6] += 0.35
    return np.clip(x + rng.normal(0, 0.05, x.shape), 0, 1), y


@pytest.fixture(scope="module")
def trained():
    """A small MLP trained to high accuracy on :func:`blobs` (deterministic, float32)."""
    bk = get_backend("numpy", "float32", 0)
    model = mlp(bk, "mlp", "relu", sizes=SIZES)
    x, y = blobs(1500, 0)
    splits = {"train": (bk.asarray(x), bk.asarray(y, dtype="int64"))}
    trainer = Trainer(model, make_optimizers(model, lr=1e-2)[0], batch_size=64, seed=0, progress=False)
    for epoch in range(15):
        trainer.train_epoch(*splits["train"], epoch=epoch)
    xt, yt = blobs(300, 1)
    model.eval()
    return bk, model, bk.asarray(xt), bk.asarray(yt, dtype="int64")


def acc(model, x, y):
    return float((model.forward(x).argmax(axis=1) == y).mean())


# --- budgets, boxes, identities ------------------------------------------------------------
ATTACK_CASES = {
    "fgsm": lambda m, x, y: fgsm(m, x, y, 0.1),
    "pgd": lambda m, x, y: pgd(m, x, y, 0.1, 0.03, 5),
    "pgd-random-start": lambda m, x, y: pgd(m, x, y, 0.1, 0.03, 5, random_start=True),
    "eot-pgd": lambda m, x, y: eot_pgd(m, x, y, 0.1, 0.03, 3, draws=4),
    "lbfgs-budget": lambda m, x, y: lbfgs(m, x, y, max_iter=5, budget=0.1),
    "lbfgs-szegedy-budget": lambda m, x, y: lbfgs_targeted(m, x, (y + 1) % 3, search_steps=2,
                                                            max_iter=5, budget=0.1)[0],
}


@pytest.mark.parametrize("name", ATTACK_CASES)
@pytest.mark.parametrize("variant", ["mlp", "mlpn"])
def test_adversarial_examples_stay_in_the_budget_ball_and_pixel_box(name, variant):
    bk = get_backend("numpy", "float32", 0)
    model = mlp(bk, variant, "relu", sizes=SIZES)
    x, y = data(bk)
    x[:4] = 0.0                                       # pixels on the box's edges
    x[4:8] = 1.0
    with evaluating(model):
        adv = ATTACK_CASES[name](model, x, y)
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert float(np.abs(adv - x).max()) <= 0.1 + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0


def test_lbfgs_without_budget_stays_in_pixel_box():
    bk = get_backend("numpy", "float32", 0)
    model = mlp(bk, "mlp", "sigmoid", sizes=SIZES).eval()
    x, y = data(bk)
    adv = lbfgs(model, x, y, max_iter=5)
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0


def test_pgd_one_step_no_random_start_alpha_budget_is_fgsm():
    bk = get_backend("numpy", "float32", 0)
    model = mlp(bk, "mlp", "relu", sizes=SIZES).eval()
    x, y = data(bk)
    np.testing.assert_array_equal(pgd(model, x, y, 0.07, 0.07, 1), fgsm(model, x, y, 0.07))


def test_fgsm_on_linear_softmax_model_matches_closed_form():
    """One Linear layer: dCE/dx = W^T (softmax(W x + b) - onehot(y))."""
    bk = get_backend("numpy", "float64", 3)
    model = Sequential(bk, [("fc", Linear(bk, 12, 4))], input_shape=(12,)).eval()
    x, y = data(bk, n=30, d=12, k=4)
    w, b = model.children["fc"].params["weight"], model.children["fc"].params["bias"]
    logits = x @ w.T + b
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    expected = np.clip(x + 0.05 * np.sign(p @ w), 0, 1)
    np.testing.assert_array_equal(fgsm(model, x, y, 0.05), expected)


def test_input_gradient_weights_give_the_weighted_sum_of_per_sample_gradients():
    bk = get_backend("numpy", "float64", 0)
    model = mlp(bk, "mlp", "sigmoid", sizes=SIZES).eval()
    x, y = data(bk, n=6)
    w = np.linspace(0.5, 2.0, 6)
    losses, grad = input_gradient(model, x, y, weights=w)
    for i in range(6):
        li, gi = input_gradient(model, x[i:i + 1], y[i:i + 1])
        np.testing.assert_allclose(grad[i], w[i] * gi[0], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(losses[i], li[0], rtol=1e-12)
    _, mean_grad = input_gradient(model, x, y)
    np.testing.assert_allclose(input_gradient(model, x, y, weights=np.ones(6))[1], 6 * mean_grad,
                               rtol=1e-12)


# --- strength on a trained model -----------------------------------------------------------
def test_larger_budget_never_raises_accuracy(trained):
    bk, model, x, y = trained
    assert acc(model, x, y) > 0.95
    accs = [acc(model, pgd(model, x, y, b, b / 4, 20), y) for b in (0, 0.02, 0.05, 0.1, 0.2, 0.3)]
    assert all(b <= a for a, b in zip(accs, accs[1:])), accs
    assert accs[-1] < 0.1, accs


def test_lbfgs_paper_form_lowers_accuracy(trained):
    bk, model, x, y = trained
    adv = lbfgs(model, x, y, max_iter=10)           # one batch, one joint objective, as the paper's code
    assert acc(model, adv, y) < acc(model, x, y) - 0.1
    boxed = lbfgs(model, x, y, max_iter=10, budget=0.2)
    assert float(np.abs(boxed - x).max()) <= 0.2 + 1e-6
    assert acc(model, boxed, y) < acc(model, x, y)


def test_lbfgs_szegedy_form_finds_small_successful_targeted_examples(trained):
    bk, model, x, y = trained
    x, y = x[:40], y[:40]
    target = (y + 1) % 3
    adv, info = lbfgs_targeted(model, x, target, c0=0.1, search_steps=6, max_iter=60)
    assert acc(model, adv, y) < acc(model, x, y) - 0.5
    success = info["success"]
    assert success.mean() > 0.8
    pred = model.forward(adv).argmax(axis=1)
    np.testing.assert_array_equal(pred[success], target[success])
    np.testing.assert_array_equal(adv[~success], x[~success])
    cs = np.array([h[0] for h in info["history"]])
    hits = np.array([h[1] for h in info["history"]])
    norms = np.array([h[2] for h in info["history"]])
    smallest_c = np.where(hits, cs, np.inf).min(axis=0)
    np.testing.assert_array_equal(info["c_min"][success], smallest_c[success])
    smallest_r = np.where(hits, norms, np.inf).min(axis=0)
    np.testing.assert_allclose(info["l2"][success], smallest_r[success])
    r = np.sqrt(((adv - x).astype(np.float64) ** 2).sum(axis=1))
    np.testing.assert_allclose(r[success], info["l2"][success], rtol=1e-4, atol=1e-6)
    assert (info["c"][success] >= info["c_min"][success]).all()


# --- randomised models ---------------------------------------------------------------------
def test_attack_gradient_goes_through_the_noisy_forward_pass():
    bk = get_backend("numpy", "float64", 0)
    model = mlp(bk, "mlpn", "relu", sizes=SIZES)
    x, y = data(bk)
    with evaluating(model, noise=True):
        a, b = fgsm(model, x, y, 0.1), fgsm(model, x, y, 0.1)
    assert not np.array_equal(a, b)
    with evaluating(model, noise=False):
        np.testing.assert_array_equal(fgsm(model, x, y, 0.1), fgsm(model, x, y, 0.1))


def test_eot_pgd_on_deterministic_model_is_pgd():
    bk = get_backend("numpy", "float64", 0)
    model = mlp(bk, "mlp", "relu", sizes=SIZES).eval()
    x, y = data(bk)
    np.testing.assert_array_equal(eot_pgd(model, x, y, 0.1, 0.02, 4), pgd(model, x, y, 0.1, 0.02, 4))


def test_expected_gradient_with_zero_noise_equals_plain_gradient():
    bk = get_backend("numpy", "float64", 0)
    model = mlp(bk, "mlp+", "relu", sizes=SIZES, sigma0=0.0, eval_noise=True).eval()
    x, y = data(bk, n=10)
    for draws, max_batch in ((20, 8192), (7, 30)):              # one pass; several passes
        np.testing.assert_allclose(expected_gradient(model, x, y, draws, max_batch),
                                   input_gradient(model, x, y)[1], rtol=1e-12, atol=1e-17)


def test_expected_gradient_is_the_mean_over_draws():
    bk = get_backend("numpy", "float64", 0)
    model = mlp(bk, "mlpn", "sigmoid", sizes=SIZES, sigma0=0.5)
    x, y = data(bk, n=8)
    with evaluating(model, noise=True):
        eot = expected_gradient(model, x, y, draws=2000)
        loop = np.mean([input_gradient(model, x, y)[1] for _ in range(2000)], axis=0)
    assert np.abs(eot - loop).max() < 0.1 * np.abs(loop).max()


def test_lbfgs_holds_one_noise_draw_and_is_reproducible():
    bk = get_backend("numpy", "float64", 0)
    model = mlp(bk, "mlpn", "relu", sizes=SIZES)
    x, y = data(bk)
    with evaluating(model, noise=True):
        bk.seed(5)
        a = lbfgs(model, x, y, max_iter=4)
        bk.seed(5)
        b = lbfgs(model, x, y, max_iter=4)
    np.testing.assert_array_equal(a, b)


# --- parity with PyTorch (same weights, float64) --------------------------------------------
def torch_mlp(torch, model):
    params = {k: torch.from_numpy(np.array(v)) for k, v in model.named_parameters().items()}

    def forward(x):
        h = torch.relu(x @ params["fc1.weight"].T + params["fc1.bias"])
        h = torch.relu(h @ params["fc2.weight"].T + params["fc2.bias"])
        return h @ params["fc3.weight"].T + params["fc3.bias"]
    return forward


def torch_pgd(torch, forward, x, y, budget, alpha, steps):
    adv = x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(forward(adv), y)
        (grad,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() + alpha * grad.sign()
        adv = torch.clamp(x + torch.clamp(adv - x, -budget, budget), 0, 1)
    return adv


def test_fgsm_and_pgd_match_pytorch(torch):
    bk = get_backend("numpy", "float64", 0)
    model = mlp(bk, "mlp", "relu", sizes=(30, 24, 12, 5)).eval()
    x, y = data(bk, n=40, d=30, k=5)
    forward = torch_mlp(torch, model)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    np.testing.assert_allclose(fgsm(model, x, y, 0.1), torch_pgd(torch, forward, tx, ty, 0.1, 0.1, 1).numpy(),
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(pgd(model, x, y, 0.1, 0.02, 10),
                               torch_pgd(torch, forward, tx, ty, 0.1, 0.02, 10).numpy(), rtol=0, atol=1e-12)


# --- bad input -------------------------------------------------------------------------------
def test_bad_input_gives_clear_errors():
    bk = get_backend("numpy", "float32", 0)
    model = mlp(bk, "mlp", "relu", sizes=SIZES).eval()
    x, y = data(bk)
    with pytest.raises(ValueError, match="budget must be a finite number >= 0"):
        fgsm(model, x, y, -0.1)
    with pytest.raises(ValueError, match="budget must be a finite number >= 0"):
        pgd(model, x, y, float("nan"), 0.01, 3)
    with pytest.raises(ValueError, match=r"pixel space \[0, 1\]"):
        fgsm(model, x * 2 + 0.5, y, 0.1)
    with pytest.raises(ValueError, match=r"pixel space \[0, 1\]"):
        lbfgs(model, x - 0.5, y)
    with pytest.raises(TypeError, match="floating point"):
        fgsm(model, (x * 255).astype(np.uint8), y, 0.1)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        pgd(model, x, y, 0.1, 0.01, 0)
    with pytest.raises(ValueError, match="labels must be an integer"):
        fgsm(model, x, y[:3], 0.1)
    with pytest.raises(ValueError, match="need finite numbers c0 > 0 and grow > 1, got c0=-1"):
        lbfgs_targeted(model, x, y, c0=-1)
    with pytest.raises(ValueError, match="draws must be a positive integer, got 0"):
        evaluate.accuracy_over_draws(model, x, y, draws=0)
    for empty in (lambda: evaluate.accuracy(model, x[:0], y[:0]),
                  lambda: evaluate.run_attack(model, fgsm, x[:0], y[:0], budget=0.1)):
        with pytest.raises(ValueError, match="no images: x is empty"):
            empty()
