"""The basic residual block of ResNet18/34 (He et al., 2016), with its backward written out."""
from .activations import ACTIVATIONS
from .conv import Conv2d
from .graph import INPUT, Add, Graph, Sequential
from .norm import BatchNorm2d


class Projection(Sequential):
    """The shortcut of a block that changes the shape: ``bn(conv(x))``, ``conv`` 1x1 with the
    block's stride and no bias. Shapes: ``(N, C_in, H, W)`` -> ``(N, C_out, H / s, W / s)``."""

    def __init__(self, bk, in_channels, out_channels, stride):
        super().__init__(bk, [("conv", Conv2d(bk, in_channels, out_channels, 1, stride=stride, bias=False)),
                              ("bn", BatchNorm2d(bk, out_channels))])


class BasicBlock(Graph):
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

    A graph: the node ``add`` joins the branches. Backward (Eq. 2 through a sum): ``delta`` at
    the sum reaches both branches unchanged; each branch returns its ``dL/dx`` and the two add up.
    """

    def __init__(self, bk, in_channels, out_channels, stride=1, noise=None, activation="relu"):
        act = ACTIVATIONS[activation]
        nodes = [("conv1", Conv2d(bk, in_channels, out_channels, 3, stride=stride, padding=1, bias=False), INPUT),
                 ("bn1", BatchNorm2d(bk, out_channels), "conv1"),
                 ("act1", act(bk), "bn1"),
                 ("conv2", Conv2d(bk, out_channels, out_channels, 3, padding=1, bias=False, noise=noise), "act1"),
                 ("bn2", BatchNorm2d(bk, out_channels), "conv2")]
        skip = INPUT
        if stride != 1 or in_channels != out_channels:
            nodes.append(("shortcut", Projection(bk, in_channels, out_channels, stride), INPUT))
            skip = "shortcut"
        nodes += [("add", Add(bk), ("bn2", skip)), ("act2", act(bk), "add")]
        super().__init__(bk, nodes)
        self.in_channels, self.out_channels, self.stride = int(in_channels), int(out_channels), int(stride)

    def __repr__(self):
        shortcut = "projection" if "shortcut" in self.children else "identity"
        return (f"BasicBlock({self.in_channels}, {self.out_channels}, stride={self.stride}, "
                f"shortcut={shortcut})")

    def output_shape(self, input_shape):
        """``(C_out, OH, OW)`` for a per-sample input shape ``(C_in, H, W)``."""
        return self.children["conv1"].output_shape(input_shape)
