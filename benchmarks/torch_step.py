"""The PyTorch side of every benchmark's training step: cross-entropy, backward, the weights'
Adam, and for learned noise the Eq. (7) update (Adam on sigma, then the absolute value)."""
import torch


def torch_train_step(model, x, y, opt, sigma_opt=None, sigmas=()):
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    if sigma_opt:
        sigma_opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if sigma_opt:
        sigma_opt.step()
        with torch.no_grad():                          # Eq. (7): absolute value after Adam
            for s in sigmas:
                s.abs_()
    return loss
