"""Ops that move values without changing them: the gradient moves them back.

* ``reshape`` (``shape``: the target, ``-1`` first where it holds the batch) -- view, reshape,
  flatten, unflatten, squeeze, unsqueeze;
* ``permute`` (``axes``) -- permute, transpose, t, swapaxes;
* ``take`` (``key``: per leading axis an index or a ``(start, stop, step)`` slice) -- select,
  slice, narrow, and the pieces of split, chunk and unbind;
* ``cat`` (``axis``; any number of inputs) -- cat;
* ``pad`` (``pads``: ``(before, after)`` per axis, ``value``) -- constant padding;
* ``roll`` (``shifts``, ``axes``) -- roll;
* ``expand`` (``shape``: the target, ``-1`` where the size is kept) -- expand (broadcasting).

Each backward is the adjoint of its forward: a reshape, the inverse permutation, a scatter into
zeros, the slices of ``delta``, the interior of ``delta``, the opposite roll, a sum over the
broadcast axes.
"""
import math

from .base import Op


# --- reshape --------------------------------------------------------------------------------------

def reshape_forward(xp, x, shape):
    """``y = x.reshape(shape)`` (C order; one entry may be ``-1``)."""
    return x.reshape(shape), x.shape


def reshape_backward(xp, delta, x_shape, need):
    """``dL/dx = delta.reshape(x.shape)``: the same values, in ``x``'s shape."""
    return (delta.reshape(x_shape) if need[0] else None,)


reshape = Op("reshape", ("x",), reshape_forward, reshape_backward)


@reshape.rule("torch")
def reshape_torch(x, shape):
    return x.reshape(shape)


@reshape.rule("jax")
def reshape_jax(x, shape):
    import jax.numpy as jnp
    return jnp.reshape(x, shape)


def _axis(dim, ndim):
    """``dim`` in ``[0, ndim)`` (a 0-d tensor's axis as that of one with one axis, as ATen)."""
    return dim % max(ndim, 1)


def _known(shape, total):
    """``shape`` with its ``-1`` entry (if any) resolved so that the sizes multiply to ``total``."""
    shape = tuple(shape)
    if -1 in shape:
        rest = math.prod(n for n in shape if n != -1)
        shape = tuple(total // rest if n == -1 else n for n in shape)
    return shape


def _reshaped(call, x, shape):
    """The spec of ``x`` reshaped to the concrete ``shape``, an alias of ``x`` when nothing
    changes. The axis that holds the batch becomes ``-1``, so that the op follows the batch size:
    in C order the first axis whose sizes up to it multiply to a multiple of the traced batch
    (the batch itself, or swin's windows of every image, ``(N nW, ...)``; behind a new leading
    axis of size 1, the second); without the traced batch, the first axis when its size is kept.
    ``-1`` changes nothing for a value of fixed size."""
    shape = tuple(shape)
    if shape == x.shape:
        return x
    batch = call.input.shape[0] if call.input is not None else None
    if batch is None:
        axis = 0 if x.ndim and shape and shape[0] == x.shape[0] else None
    else:
        axis = next((j for j in range(len(shape)) if math.prod(shape[:j + 1]) % batch == 0), None)
    if axis is not None and shape[axis]:
        shape = shape[:axis] + (-1,) + shape[axis + 1:]
    return (x,), {"shape": shape}


@reshape.traces("aten.view.default", "aten._unsafe_view.default")
def reshape_from_view(call, x, size):
    return _reshaped(call, x, _known(size, math.prod(x.shape)))


@reshape.traces("aten.reshape.default")
def reshape_from_reshape(call, x, shape):
    return _reshaped(call, x, _known(shape, math.prod(x.shape)))


@reshape.traces("aten.flatten.using_ints")
def reshape_from_flatten(call, x, start_dim=0, end_dim=-1):
    if x.ndim == 0:
        return _reshaped(call, x, (1,))
    start, end = _axis(start_dim, x.ndim), _axis(end_dim, x.ndim)
    return _reshaped(call, x, x.shape[:start] + (math.prod(x.shape[start:end + 1]),) + x.shape[end + 1:])


@reshape.traces("aten.unflatten.int")
def reshape_from_unflatten(call, x, dim, sizes):
    dim = _axis(dim, x.ndim)
    return _reshaped(call, x, x.shape[:dim] + _known(sizes, x.shape[dim]) + x.shape[dim + 1:])


def _squeezed(call, x, dims):
    return _reshaped(call, x, tuple(n for i, n in enumerate(x.shape) if not (i in dims and n == 1)))


@reshape.traces("aten.squeeze.default")
def reshape_from_squeeze(call, x):
    return _squeezed(call, x, range(x.ndim))


@reshape.traces("aten.squeeze.dim")
def reshape_from_squeeze_dim(call, x, dim):
    return _squeezed(call, x, {_axis(dim, x.ndim)})


@reshape.traces("aten.squeeze.dims")
def reshape_from_squeeze_dims(call, x, dim):
    return _squeezed(call, x, {_axis(d, x.ndim) for d in dim})


@reshape.traces("aten.unsqueeze.default")
def reshape_from_unsqueeze(call, x, dim):
    dim = dim % (x.ndim + 1)
    return _reshaped(call, x, x.shape[:dim] + (1,) + x.shape[dim:])


# --- permute --------------------------------------------------------------------------------------

def permute_forward(xp, x, axes):
    """``y = x.transpose(axes)``: axis ``j`` of ``y`` is axis ``axes[j]`` of ``x``."""
    return xp.transpose(x, axes), axes


def permute_backward(xp, delta, axes, need):
    """``dL/dx = delta.transpose(inverse)`` with ``inverse[i]`` the position of ``i`` in ``axes``."""
    if not need[0]:
        return (None,)
    inverse = tuple(axes.index(i) for i in range(len(axes)))
    return (xp.transpose(delta, inverse),)


permute = Op("permute", ("x",), permute_forward, permute_backward)


@permute.rule("torch")
def permute_torch(x, axes):
    return x.permute(axes)


@permute.rule("jax")
def permute_jax(x, axes):
    import jax.numpy as jnp
    return jnp.transpose(x, axes)


def _permuted(x, axes):
    axes = tuple(_axis(a, x.ndim) for a in axes)
    return x if axes == tuple(range(x.ndim)) else ((x,), {"axes": axes})


def _swapped(x, dim0, dim1):
    axes = list(range(x.ndim))
    dim0, dim1 = _axis(dim0, x.ndim), _axis(dim1, x.ndim)
    axes[dim0], axes[dim1] = dim1, dim0
    return _permuted(x, axes)


@permute.traces("aten.permute.default")
def permute_from_permute(call, x, dims):
    return _permuted(x, dims)


@permute.traces("aten.swapaxes.default")
def permute_from_swapaxes(call, x, axis0, axis1):
    return _swapped(x, axis0, axis1)


@permute.traces("aten.transpose.int", "aten.swapdims.default")
def permute_from_transpose(call, x, dim0, dim1):
    return _swapped(x, dim0, dim1)


@permute.traces("aten.t.default")
def permute_from_t(call, x):
    return _swapped(x, 0, 1) if x.ndim == 2 else x


# --- take -----------------------------------------------------------------------------------------

def _index(key):
    """The basic index of ``key``: an int selects, a ``(start, stop, step)`` triple slices; the
    trailing ``...`` keeps every other axis (and makes a full selection an array, not a scalar)."""
    return tuple(entry if isinstance(entry, int) else slice(*entry) for entry in key) + (Ellipsis,)


def take_forward(xp, x, key):
    """``y = x[key]`` (basic indexing: a view of some of ``x``'s entries)."""
    return x[_index(key)], (x.shape, key)


def take_backward(xp, delta, cache, need):
    """``dL/dx`` is ``delta`` where the entries were taken, zero elsewhere."""
    if not need[0]:
        return (None,)
    x_shape, key = cache
    dx = xp.zeros(x_shape, dtype=delta.dtype)
    dx[_index(key)] = delta
    return (dx,)


take = Op("take", ("x",), take_forward, take_backward)


@take.rule("torch")
@take.rule("jax")
def take_rule(x, key):
    return x[_index(key)]


FULL = (None, None, None)          # the slice of a whole axis, ``:``


def _sliced(x, dim, start, stop, step=1):
    """The spec of ``x[..., start:stop:step, ...]`` on axis ``dim`` (bounds within the axis, as
    ATen clamps them): an alias when it keeps the whole axis; ``stop`` is ``None`` when it runs
    to the end."""
    size = x.shape[dim]
    if (start, stop, step) == (0, size, 1):
        return x
    return (x,), {"key": (FULL,) * dim + ((start, None if stop == size else stop, step),)}


def _bound(index, size):
    """ATen's slice bound: a negative ``index`` counts from the end, then clamped to the axis."""
    return min(max(index + size if index < 0 else index, 0), size)


def _pieces(x, dim, sizes):
    """The specs of ``x`` cut along ``dim`` into consecutive pieces of ``sizes``."""
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [_sliced(x, dim, start, start + n) for start, n in zip(starts, sizes)]


def _split_sizes(size, piece):
    """Pieces of ``piece`` entries (the last one smaller) covering ``size``."""
    return [min(piece, size - start) for start in range(0, size, piece)]


@take.traces("aten.select.int")
def take_from_select(call, x, dim, index):
    dim = _axis(dim, x.ndim)
    return (x,), {"key": (FULL,) * dim + (index % x.shape[dim],)}


@take.traces("aten.slice.Tensor")
def take_from_slice(call, x, dim=0, start=None, end=None, step=1):
    dim = _axis(dim, x.ndim)
    size = x.shape[dim]
    start = _bound(0 if start is None else start, size)
    stop = max(_bound(size if end is None else end, size), start)
    return _sliced(x, dim, start, stop, step)


@take.traces("aten.narrow.default")
def take_from_narrow(call, x, dim, start, length):
    dim = _axis(dim, x.ndim)
    start = start % x.shape[dim] if start < 0 else start
    return _sliced(x, dim, start, start + length)


@take.traces("aten.split.Tensor")
def take_from_split(call, x, split_size, dim=0):
    dim = _axis(dim, x.ndim)
    return _pieces(x, dim, _split_sizes(x.shape[dim], split_size))


@take.traces("aten.split_with_sizes.default")
def take_from_split_with_sizes(call, x, split_sizes, dim=0):
    return _pieces(x, _axis(dim, x.ndim), list(split_sizes))


@take.traces("aten.chunk.default")
def take_from_chunk(call, x, chunks, dim=0):
    dim = _axis(dim, x.ndim)
    size = x.shape[dim]
    return _pieces(x, dim, _split_sizes(size, -(-size // chunks)))


@take.traces("aten.unbind.int")
def take_from_unbind(call, x, dim=0):
    dim = _axis(dim, x.ndim)
    return [((x,), {"key": (FULL,) * dim + (i,)}) for i in range(x.shape[dim])]


# --- cat ------------------------------------------------------------------------------------------

def cat_forward(xp, *xs, axis=0):
    """``y = [x_1 x_2 ... x_k]`` joined along ``axis``."""
    return xp.concatenate(xs, axis=axis), ([x.shape[axis] for x in xs], axis)


def cat_backward(xp, delta, cache, need):
    """``dL/dx_i`` is the slice of ``delta`` that ``x_i`` became."""
    sizes, axis = cache
    grads, start = [], 0
    for n, wanted in zip(sizes, need):
        grads.append(delta[(slice(None),) * axis + (slice(start, start + n),)] if wanted else None)
        start += n
    return tuple(grads)


cat = Op("cat", ("*xs",), cat_forward, cat_backward)


@cat.rule("torch")
def cat_torch(*xs, axis=0):
    import torch
    return torch.cat(xs, dim=axis)


@cat.rule("jax")
def cat_jax(*xs, axis=0):
    import jax.numpy as jnp
    return jnp.concatenate(xs, axis=axis)


@cat.traces("aten.cat.default")
def cat_from_cat(call, tensors, dim=0):
    tensors = list(tensors)
    if len(tensors) == 1:
        return tensors[0]
    return tensors, {"axis": _axis(dim, tensors[0].ndim)}


# --- pad ------------------------------------------------------------------------------------------

def pad_forward(xp, x, pads, value=0.0):
    """``y`` is ``x`` with ``pads[i] = (before, after)`` entries equal to ``value`` added on
    either side of axis ``i``."""
    return xp.pad(x, pads, mode="constant", constant_values=value), pads


def pad_backward(xp, delta, pads, need):
    """``dL/dx`` is the interior of ``delta`` (the padding is a constant)."""
    if not need[0]:
        return (None,)
    interior = tuple(slice(before, n - after) for (before, after), n in zip(pads, delta.shape))
    return (delta[interior],)


pad = Op("pad", ("x",), pad_forward, pad_backward)


def _torch_pad_list(pads):
    """``pads`` as ``torch.nn.functional.pad`` takes them: last axis first, flattened."""
    return [n for pair in reversed(pads) for n in pair]


@pad.rule("torch")
def pad_torch(x, pads, value=0.0):
    import torch.nn.functional as F
    return F.pad(x, _torch_pad_list(pads), value=value)


@pad.rule("jax")
def pad_jax(x, pads, value=0.0):
    import jax.numpy as jnp
    return jnp.pad(x, pads, constant_values=value)


def _padded(call, x, pad_list, value):
    """The spec of ATen's constant padding ``pad_list`` (``[left, right, top, bottom, ...]``:
    the last axis first)."""
    if any(n < 0 for n in pad_list):
        call.refuse(f"negative padding {list(pad_list)} (cropping); expected paddings >= 0")
    pads = [(0, 0)] * x.ndim
    for i in range(len(pad_list) // 2):
        pads[x.ndim - 1 - i] = (pad_list[2 * i], pad_list[2 * i + 1])
    if not any(n for pair in pads for n in pair):
        return x
    return (x,), {"pads": tuple(pads), "value": float(value)}


@pad.traces("aten.pad.default")
def pad_from_pad(call, x, pad, mode="constant", value=None):
    if mode != "constant":
        call.refuse(f"padding mode {mode!r}; expected 'constant'")
    return _padded(call, x, pad, 0.0 if value is None else value)


@pad.traces("aten.constant_pad_nd.default")
def pad_from_constant_pad_nd(call, x, pad, value=0):
    return _padded(call, x, pad, value)


# --- roll -----------------------------------------------------------------------------------------

def roll_forward(xp, x, shifts, axes):
    """``y`` is ``x`` shifted cyclically by ``shifts[i]`` along ``axes[i]``."""
    return xp.roll(x, shifts, axis=axes), (shifts, axes)


def roll_backward(xp, delta, cache, need):
    """``dL/dx`` is ``delta`` rolled back by ``-shifts``."""
    shifts, axes = cache
    return (xp.roll(delta, tuple(-s for s in shifts), axis=axes) if need[0] else None,)


roll = Op("roll", ("x",), roll_forward, roll_backward)


@roll.rule("torch")
def roll_torch(x, shifts, axes):
    import torch
    return torch.roll(x, shifts, dims=axes)


@roll.rule("jax")
def roll_jax(x, shifts, axes):
    import jax.numpy as jnp
    return jnp.roll(x, shifts, axis=axes)


@roll.traces("aten.roll.default")
def roll_from_roll(call, x, shifts, dims=()):
    if not dims:
        call.refuse("a roll of the flattened tensor (no dims); expected dims")
    return (x,), {"shifts": tuple(shifts), "axes": tuple(_axis(d, x.ndim) for d in dims)}


# --- expand ---------------------------------------------------------------------------------------

def _expanded_shape(x_shape, shape):
    """The concrete target of ``shape``: new leading axes first, then ``-1`` keeps ``x``'s size."""
    new = len(shape) - len(x_shape)
    return tuple(shape[:new]) + tuple(n if s == -1 else s for s, n in zip(shape[new:], x_shape))


def _batched(shape, like):
    """``shape`` with its first entry the batch size of ``like`` (when given)."""
    return shape if like is None else (like.shape[0], *shape[1:])


def expand_forward(xp, x, like=None, shape=()):
    """``y = broadcast_to(x, shape)``: size-1 axes of ``x`` repeated, new axes in front; with
    ``like``, the first axis as long as ``like``'s (a parameter expanded over the batch)."""
    return xp.broadcast_to(x, _expanded_shape(x.shape, _batched(shape, like))).copy(), x.shape


def expand_backward(xp, delta, x_shape, need):
    """``dL/dx`` sums ``delta`` over every entry a value of ``x`` was copied to: over the new
    leading axes and the size-1 axes of ``x`` that were repeated."""
    if not need[0]:
        return None, None
    dx = delta.sum(axis=tuple(range(delta.ndim - len(x_shape))))
    repeated = tuple(i for i, n in enumerate(x_shape) if n == 1 and dx.shape[i] != 1)
    return dx.sum(axis=repeated, keepdims=True), None


expand = Op("expand", ("x", "like"), expand_forward, expand_backward)


@expand.rule("torch")
def expand_torch(x, like=None, shape=()):
    return x.expand(*_batched(shape, like))


@expand.rule("jax")
def expand_jax(x, like=None, shape=()):
    import jax.numpy as jnp
    return jnp.broadcast_to(x, _expanded_shape(x.shape, _batched(shape, like)))


@expand.traces("aten.expand.default")
def expand_from_expand(call, x, size, implicit=False):
    new = len(size) - x.ndim
    kept = tuple(-1 if s in (-1, n) else s for s, n in zip(size[new:], x.shape))
    if not new and all(s == -1 for s in kept):
        return x
    shape = tuple(size[:new]) + kept
    follows = (call.input is not None and shape and x.ndim == len(shape) and x.shape[0] == 1
               and shape[0] == call.input.shape[0])
    return (x, call.input if follows else None), {"shape": shape}     # over the batch: as long as the input
