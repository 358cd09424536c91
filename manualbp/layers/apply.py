"""The nodes of an imported graph (:mod:`manualbp.verify.trace`): one op whose inputs are all
values of the graph (``Apply``), and arrays as nodes -- a trained one (``Parameter``: a
weight used by several nodes gets the sum of their deltas, as any value does) or a fixed one
(``Constant``: a buffer, a constant of the traced run)."""
from .base import Module


class Apply(Module):
    """One call of ``op`` with fixed ``settings``, its inputs the values flowing in: value ``i``
    is the op's input ``slots[i]``; the op's other inputs are ``None`` (an absent bias). A
    ``"training"`` setting follows the module's mode (``train()`` / ``eval()``)."""

    def __init__(self, bk, op, settings, slots):
        super().__init__(bk)
        self.op, self.fixed, self.slots = op, dict(settings), tuple(slots)
        self.arity = len(self.slots)
        self.size = max(len(op.inputs), max(self.slots, default=-1) + 1)   # variadic ops: every value
        self.training = bool(self.fixed.get("training", True))

    @property
    def kind(self):
        return f"Apply[{self.op.name}]"

    def settings(self, training):
        return {**self.fixed, "training": training} if "training" in self.fixed else self.fixed

    def op_inputs(self, values, array):
        inputs = [None] * self.size
        for slot, value in zip(self.slots, values):
            inputs[slot] = value
        return inputs

    def forward(self, *values):
        return self.run(self.op, *self.op_inputs(values, None), **self.settings(self.training))

    def backward(self, delta, input_grad=True):
        """``dL/d(value)`` for each value flowing in (one array for a single input): one step of
        Eq. (2) by the op's backward."""
        op, backward, cache = self.last_pass(delta)
        need = [None] * self.size
        for slot, flag in zip(self.slots, self.value_need(input_grad)):
            need[slot] = flag
        grads = backward(self.xp, delta, cache, tuple(need))
        picked = tuple(grads[slot] for slot in self.slots)
        return picked[0] if self.arity == 1 else picked


class Parameter(Module):
    """A trained array as a graph node: ``forward()`` gives it, ``backward(delta)`` writes
    ``delta`` (the sum over every node that reads it) into its gradient. Its full name is the
    node's (the array's local name is empty)."""

    arity = 0

    def __init__(self, bk, value):
        super().__init__(bk)
        self.add_param("", bk.asarray(value))

    def forward(self):
        return self.params[""]

    def backward(self, delta, input_grad=()):
        if self.param_grads:
            self.grads[""][...] = delta
        return ()


class Constant(Module):
    """A fixed array as a graph node (a buffer such as batch norm's running statistics, which
    the op reading it may update in place, or a constant of the traced run)."""

    arity = 0

    def __init__(self, bk, value):
        super().__init__(bk)
        self.buffers[""] = bk.asarray(value, dtype=value.dtype if value.dtype.kind in "biu" else None)

    def forward(self):
        return self.buffers[""]

    def backward(self, delta, input_grad=()):
        return ()
