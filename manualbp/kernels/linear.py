"""The fast dense layer: :class:`~manualbp.layers.linear.Linear` with its gradients written in
place."""
from ..layers.linear import Linear


class LinearKernel(Linear):
    """What :class:`~manualbp.layers.linear.Linear` computes, with the bias added in place and
    the gradients written into their arrays (``matmul(..., out=)``), so a step allocates no
    fresh weight-gradient array (a 300 KB array page-faults anew on every step)."""

    def forward(self, x):
        self.check(x)
        self.x = x
        v = x @ self.params["weight"].T
        if "bias" in self.params:
            v += self.params["bias"]
        if "noise" in self.children:
            v = self.children["noise"].forward(v)
        return v

    def backward(self, delta, input_grad=True):
        if "noise" in self.children:
            delta = self.children["noise"].backward(delta)
        if self.param_grads:
            self.xp.matmul(delta.T, self.x, out=self.grads["weight"])
            if "bias" in self.params:
                delta.sum(axis=0, out=self.grads["bias"])
        if input_grad:
            return delta @ self.params["weight"]
        return None
