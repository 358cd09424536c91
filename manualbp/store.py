"""A model's parameter store: all its parameters in one flat array and all its gradients in
another -- what a fast optimiser updates in a few whole-array operations."""


def is_noise_level(name):
    """Whether a parameter name is a noise level ``sigma`` (updated by Eq. 7, not by the weights')."""
    return name.rsplit(".", 1)[-1] == "sigma"


class ParameterStore:
    """The flat arrays ``param`` and ``grad`` of a model (:meth:`Module.parameter_store`).

    Parameters are stored in the order of ``model.parameter_slots()``, the noise levels last, so
    that the weights' optimiser and the Eq. (7) optimiser each own one contiguous span. When the
    store is made, every layer's ``params[key]`` and ``grads[key]`` become views of these arrays
    (values kept): from then on the store owns that memory. Modules change parameters and write
    gradients only in place (replacing one raises), so ``param`` and ``grad`` always hold them.
    """

    def __init__(self, model):
        self.slots = sorted(model.parameter_slots(), key=lambda slot: is_noise_level(slot[0]))
        self.names = [name for name, _, _ in self.slots]
        sizes = [int(module.params[key].size) for _, module, key in self.slots]
        self.offsets = {name: sum(sizes[:i]) for i, name in enumerate(self.names)}
        self.sizes = dict(zip(self.names, sizes))
        self.param, self.grad = model.bk.zeros((sum(sizes),)), model.bk.zeros((sum(sizes),))
        for name, module, key in self.slots:
            for arrays, flat in ((module.params, self.param), (module.grads, self.grad)):
                view = self.view(flat, name).reshape(arrays[key].shape)
                view[...] = arrays[key]
                arrays.rebind(key, view)

    def view(self, flat, name):
        """The 1-D part of ``flat`` (``param``, ``grad`` or an array of their size) holding ``name``."""
        return flat[self.offsets[name]:self.offsets[name] + self.sizes[name]]

    def span(self, names):
        """The slice of the flat arrays that holds exactly ``names`` (any order), or ``None``
        when they are not one contiguous run."""
        start = min(self.offsets[n] for n in names)
        stop = max(self.offsets[n] + self.sizes[n] for n in names)
        if stop - start != sum(self.sizes[n] for n in set(names)):
            return None
        return slice(start, stop)
