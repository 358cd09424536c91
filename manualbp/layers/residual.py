"""The basic residual block of ResNet18/34 (He et al., 2016), with its backward written out."""
from .activations import ACTIVATIONS
from .base import Module, backward_chain
from .conv import Conv2d
from .norm import BatchNorm2d


class Projection(Module):
    """The shortcut of a block that changes the shape: ``bn(conv(x))``, ``conv`` 1x1 with the
    block's stride and no bias. Shapes: ``(N, C_in, H, W)`` -> ``(N, C_out, H / s, W / s)``."""

    def __init__(self, bk, in_channels, out_channels, stride):
        super().__init__(bk)
        self.children["conv"] = Conv2d(bk, in_channels, out_channels, 1, stride=stride, bias=False)
        self.children["bn"] = BatchNorm2d(bk, out_channels)

    def forward(self, x):
        return self.children["bn"].forward(self.children["conv"].forward(x))

    def backward(self, delta, input_grad=True):
        return self.children["conv"].backward(self.children["bn"].backward(delta), input_grad)


class BasicBlock(Module):
    """``y = act2(bn2(conv2(act1(bn1(conv1(x))))) + shortcut(x))``.

    Children, in forward order: ``conv1`` (3x3, ``stride``, padding 1), ``bn1``, ``act1``,
    ``conv2`` (3x3, padding 1), ``bn2``, ``shortcut`` and ``act2`` (``activation``: a name of
    ``ACTIVATIONS``, ReLU in ResNets). The shortcut is the identity (no child) when the shape is
    kept, else a :class:`Projection` (``conv`` 1x1 with ``stride``, then ``bn``). Convolutions
    have no bias: batch norm follows each.

    Shapes: ``x`` ``(N, C_in, H, W)`` -> ``y`` ``(N, C_out, H / stride, W / stride)``.

    ``noise`` (optional :class:`GaussianNoise` of shape ``(C_out, H / stride, W / stride)``) is
    the noise term ``z`` of Eq. (1) on ``conv2``, the last convolution of the block (the paper's
    "-A" ResNets); it becomes ``conv2.noise``.

    Backward (Eq. 2 through a sum): ``delta`` at the sum reaches both branches unchanged; each
    branch returns its ``dL/dx`` and the two add up.
    """

    def __init__(self, bk, in_channels, out_channels, stride=1, noise=None, activation="relu"):
        super().__init__(bk)
        self.in_channels, self.out_channels, self.stride = int(in_channels), int(out_channels), int(stride)
        c = self.children
        c["conv1"] = Conv2d(bk, in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        c["bn1"] = BatchNorm2d(bk, out_channels)
        c["act1"] = ACTIVATIONS[activation](bk)
        c["conv2"] = Conv2d(bk, out_channels, out_channels, 3, padding=1, bias=False, noise=noise)
        c["bn2"] = BatchNorm2d(bk, out_channels)
        if stride != 1 or in_channels != out_channels:
            c["shortcut"] = Projection(bk, in_channels, out_channels, stride)
        c["act2"] = ACTIVATIONS[activation](bk)
        self.main = [c[name] for name in ("conv1", "bn1", "act1", "conv2", "bn2")]

    def __repr__(self):
        shortcut = "projection" if "shortcut" in self.children else "identity"
        return (f"BasicBlock({self.in_channels}, {self.out_channels}, stride={self.stride}, "
                f"shortcut={shortcut})")

    def output_shape(self, input_shape):
        """``(C_out, OH, OW)`` for a per-sample input shape ``(C_in, H, W)``."""
        return self.children["conv1"].output_shape(input_shape)

    def forward(self, x):
        out = x
        for layer in self.main:
            out = layer.forward(out)
        shortcut = self.children.get("shortcut")
        out = out + (x if shortcut is None else shortcut.forward(x))     # the two branches join
        return self.children["act2"].forward(out)

    def backward(self, delta, input_grad=True):
        """``delta``: ``dL/dy``; returns ``dL/dx`` = main-branch gradient + shortcut gradient."""
        delta = self.children["act2"].backward(delta)                    # dL/d(sum)
        main = backward_chain(self.main, delta, input_grad)
        shortcut = self.children.get("shortcut")
        skip = delta if shortcut is None else shortcut.backward(delta, input_grad)  # identity: dx/dx = 1
        if not input_grad:
            return None
        return main + skip
