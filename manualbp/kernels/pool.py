"""Fast pooling and flattening: 2x2 max-pooling by one-hot masks on threads, and the layers that
keep the batch-innermost memory layout of :class:`~manualbp.kernels.conv.Conv2dKernel`."""
from ..layers.pool import Flatten, GlobalAvgPool2d, MaxPool2d
from ..parallel import parallel_blocks
from .im2col import _empty_in_layout_of, _memory_order


class MaxPool2dKernel(MaxPool2d):
    """What :class:`~manualbp.layers.pool.MaxPool2d` computes; the common 2x2, stride 2 case
    faster (other windows are the reference's).

    It works on a ``(N, C, OH, 2, OW, 2)`` view of the input (no copy): windows ``a b / c d``,
    ``max(max(a, b), max(c, d))``, and one-hot masks of the first maximum (the reference's tie
    rule) for the backward pass, four multiplications. Output, masks and ``dL/dx`` keep the
    input's memory layout; the masks live in buffers reused from step to step; the work is split
    over threads by channel.
    """

    def forward(self, x):
        self.fast = (*self.kernel_size, *self.stride, *self.padding) == (2, 2, 2, 2, 0, 0)
        if not self.fast:
            return super().forward(x)
        kh, kw, sh, sw, oh, ow = self._geometry(x)
        xp = self.xp
        n, c = x.shape[:2]
        self.x_like = x
        shape = (n, c, oh, ow)
        key = (shape, tuple(_memory_order(x)), x.dtype)
        if getattr(self, "_key", None) != key:
            self._key = key
            self._bool = [_empty_in_layout_of(shape, x, xp, bool) for _ in range(7)]
            self._low = _empty_in_layout_of(shape, x, xp)
        m00, m01, m10, m11, right_top, right_bottom, lower = self._bool
        self.masks = (m00, m01, m10, m11)
        out = _empty_in_layout_of(shape, x, xp)
        x6 = x[:, :, :2 * oh, :2 * ow].reshape(n, c, oh, 2, ow, 2)

        def block(cs, ns):
            a, b = x6[ns, cs, :, 0, :, 0], x6[ns, cs, :, 0, :, 1]
            c_, d = x6[ns, cs, :, 1, :, 0], x6[ns, cs, :, 1, :, 1]
            top, bottom, lo = out[ns, cs], self._low[ns, cs], lower[ns, cs]
            rt, rb = right_top[ns, cs], right_bottom[ns, cs]
            xp.greater(b, a, out=rt)                       # ties keep the left (first) element
            xp.greater(d, c_, out=rb)
            xp.maximum(a, b, out=top)
            xp.maximum(c_, d, out=bottom)
            xp.greater(bottom, top, out=lo)                # ties keep the top row
            xp.logical_not(xp.logical_or(lo, rt, out=m00[ns, cs]), out=m00[ns, cs])
            xp.greater(rt, lo, out=m01[ns, cs])            # right_top and not lower
            xp.greater(lo, rb, out=m10[ns, cs])            # lower and not right_bottom
            xp.logical_and(lo, rb, out=m11[ns, cs])
            xp.maximum(top, bottom, out=top)

        parallel_blocks(xp, c, n, x.size, block)
        return out

    def backward(self, delta, input_grad=True):
        if not self.fast:
            return super().backward(delta, input_grad)
        if not input_grad:
            return None
        xp = self.xp
        n, c, h, w = self.x_like.shape
        oh, ow = delta.shape[2:]
        covered = h == 2 * oh and w == 2 * ow
        dx = xp.empty_like(self.x_like) if covered else xp.zeros_like(self.x_like)
        d6 = dx[:, :, :2 * oh, :2 * ow].reshape(n, c, oh, 2, ow, 2)

        def block(cs, ns):
            for (i, j), mask in zip(((0, 0), (0, 1), (1, 0), (1, 1)), self.masks):
                xp.multiply(delta[ns, cs], mask[ns, cs], out=d6[ns, cs, :, i, :, j])

        parallel_blocks(xp, c, n, dx.size, block)
        return dx


class _InputLayout:
    """Mixed in before a layer: ``dL/dx`` in the memory layout of the forward pass's input."""

    def forward(self, x):
        self.x_like = x
        return super().forward(x)

    def _like_input(self, value):
        """An array in the input's layout holding ``value`` (broadcast to the input's shape)."""
        dx = self.xp.empty_like(self.x_like)
        dx[...] = value
        return dx


class GlobalAvgPool2dKernel(_InputLayout, GlobalAvgPool2d):
    """What :class:`~manualbp.layers.pool.GlobalAvgPool2d` computes, with ``dL/dx`` in the
    input's memory layout (a C-ordered one would force a transposed copy in the convolution)."""

    def backward(self, delta, input_grad=True):
        if not input_grad:
            return None
        h, w = self.x_like.shape[2:]
        return self._like_input((delta * (1.0 / (h * w)))[:, :, None, None])


class FlattenKernel(_InputLayout, Flatten):
    """What :class:`~manualbp.layers.pool.Flatten` computes, with ``dL/dx`` copied into the
    input's memory layout when that is not C order, so the layers below keep their layout."""

    def backward(self, delta, input_grad=True):
        if not input_grad:
            return None
        if self.x_like.flags.c_contiguous:
            return delta.reshape(self.x_shape)
        return self._like_input(delta.reshape(self.x_shape))
