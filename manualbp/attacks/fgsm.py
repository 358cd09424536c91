"""Fast gradient sign method (Goodfellow, Shlens & Szegedy 2014)."""
from .base import check_budget, check_inputs, in_evaluation_mode, input_gradient


@in_evaluation_mode
def fgsm(model, x, y, budget):
    """``x_adv = clip(x + budget * sign(dL/dx), 0, 1)``, one ``model.backward`` (Eq. 2) for ``dL/dx``.

    ``x``: pixels in ``[0, 1]`` shaped as the model's input; ``y``: integer labels ``(N,)``;
    ``budget``: L-inf budget in pixel units. The model is attacked in evaluation mode with each
    noise layer's own setting: inside ``evaluating(model, noise=True)`` the gradient goes through
    a noisy forward pass.
    """
    xp = check_inputs(model, x, y)
    budget = check_budget(budget, "budget")
    _, grad = input_gradient(model, x, y)
    return xp.clip(x + budget * xp.sign(grad), 0, 1)
