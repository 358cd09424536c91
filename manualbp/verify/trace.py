"""Import any PyTorch module by tracing it.

``torch.export`` records the ATen ops the module's forward pass calls, with every shape
resolved for the example input (Python control flow, ``x.size()`` arithmetic and the like run
as they do in eager PyTorch). Each node of that graph becomes a node of a manualbp
:class:`~manualbp.layers.Graph`:

* the input is the graph's input; each parameter a :class:`~manualbp.layers.Parameter` node and
  each buffer a :class:`~manualbp.layers.Constant` node, named by its name in the module;
* a call of an ATen op runs the manualbp op whose trace rule names it (``op.traces``, beside the
  op's code in :mod:`manualbp.ops`): the rule turns the call's arguments into the op's inputs and
  settings, or refuses a setting the op does not compute;
* a call whose value does not depend on the input or the parameters (an attention mask built
  from shapes, stochastic depth's per-sample draw) is a constant: its value in the traced run;
* aliases (``contiguous``, ``clone``) are the value they copy.

A call of an op without a rule stops the import with one line naming the node, its ATen op,
the module it is in and the supported ops. :class:`TracedRun` runs the same graph in PyTorch,
recording every node's value and drawing dropout's masks explicitly, so that the two sides
compute one function.
"""
import operator

from ..layers import INPUT, Apply, Constant, Graph, Parameter
from .walk import ConversionError

#: ATen ops that return their input's values unchanged (a copy or a view of it)
ALIASES = {"aten.contiguous.default", "aten.clone.default", "aten.alias.default", "aten.detach.default",
           "aten.lift_fresh_copy.default"}
#: ATen ops whose value depends on their input's shape and dtype only, not on its values
VALUE_FREE = {"aten.new_zeros.default", "aten.new_ones.default", "aten.new_empty.default", "aten.new_full.default",
              "aten.zeros_like.default", "aten.ones_like.default", "aten.empty_like.default", "aten.full_like.default"}
#: ATen ops whose result may share memory with their first argument (a view of it)
VIEWS = {"aten.view.default", "aten._unsafe_view.default", "aten.reshape.default", "aten.slice.Tensor",
         "aten.select.int", "aten.narrow.default", "aten.permute.default", "aten.transpose.int", "aten.t.default",
         "aten.expand.default", "aten.unsqueeze.default", "aten.squeeze.dim", "aten.squeeze.dims",
         "aten.squeeze.default", "aten.unflatten.int", "aten.flatten.using_ints", "aten.split.Tensor",
         "aten.split_with_sizes.default", "aten.chunk.default", "aten.unbind.int", "aten.alias.default",
         "aten.detach.default", "aten.as_strided.default", "aten.diagonal.default", "aten.unfold.default"}
#: dropout, whose masks :class:`TracedRun` draws itself (and records)
DROPOUT = {"aten.dropout.default", "aten.dropout_.default"}


class Value:
    """A tensor of the traced graph as a trace rule sees it: ``shape`` and ``dtype`` (those of
    the traced run) and the graph node that makes it (``node``)."""

    def __init__(self, node, shape, dtype="float64"):
        self.node, self.shape, self.dtype = node, tuple(shape), dtype

    @property
    def ndim(self):
        return len(self.shape)

    def __repr__(self):
        return f"Value({self.node!r}, shape={self.shape})"


class Call:
    """What a trace rule is given besides the call's arguments: the backend (``bk``), where the
    call is (``where``: the node, its ATen op, the module it is in), for :meth:`refuse`, and the
    graph's input (``input``, a :class:`Value`: an op whose output follows the batch size, such as
    a parameter expanded over the batch, takes it as an input)."""

    def __init__(self, bk, where, input=None):
        self.bk, self.where, self.input = bk, where, input

    def refuse(self, what):
        """Stop the import: the call has a setting the op does not compute."""
        raise ConversionError(f"cannot import {self.where}: {what}")


def trace_rules():
    """``{ATen op name: (op, rule)}`` of every op (a user's own op included)."""
    from ..ops import OPS
    return {name: (op, rule) for op in OPS for name, rule in op.tracers.items()}


def inexact_calls():
    """``{ATen op name: (how PyTorch falls short of float64, exact rule)}`` of every op."""
    from ..ops import OPS
    return {name: entry for op in OPS for name, entry in op.inexact.items()}


def export(module, x):
    """The ``torch.export`` program of ``module`` called on the example batch ``x``, in the mode
    the module is in (its parameters and buffers are not touched)."""
    import torch
    try:
        return torch.export.export(module, (x,), strict=False)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConversionError(f"cannot trace {type(module).__name__}: torch.export failed ({first}); "
                              f"see docs/verifying_pytorch.md, 'What cannot be traced'") from None


def where(node):
    """``node 'conv2d_3' (aten.conv2d.default) in layer1.0.conv1`` -- the module path from the
    trace's module stack."""
    stack = node.meta.get("nn_module_stack") or {}
    path = list(stack.values())[-1][0] if stack else ""
    return f"node {node.name!r} ({node.target}) in {path or '<model>'}"


def state(ep, module):
    """``{placeholder name: (kind, name in the module, tensor)}`` of the program's inputs that
    are parameters, buffers and constants."""
    from torch.export.graph_signature import InputKind
    tensors = {**dict(module.named_parameters()), **dict(module.named_buffers()), **ep.constants}
    return {spec.arg.name: (spec.kind, spec.target, tensors[spec.target]) for spec in ep.graph_signature.input_specs
            if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)}


def depends(ep):
    """The names of the nodes whose value depends on the input or on a parameter."""
    from torch.export.graph_signature import InputKind
    live = {spec.arg.name for spec in ep.graph_signature.input_specs
            if spec.kind in (InputKind.USER_INPUT, InputKind.PARAMETER)}
    for node in ep.graph.nodes:
        if (node.op == "call_function" and str(node.target) not in VALUE_FREE
                and any(a.name in live for a in node.all_input_nodes)):
            live.add(node.name)
    return live


class TracedRun:
    """The traced program run in PyTorch on ``x`` with the module's own ``state`` (copies: the
    running statistics the pass updates are ``buffers`` afterwards), recording each node's value
    (``values``) and the masks dropout drew (``masks``: node name -> tensor of 0 and 1/(1-p)).
    ``trained``: ``{name: tensor}`` of parameters to differentiate (leaves), default copies.
    ``like``: an earlier run whose masks and constants (values that depend on neither the input
    nor the parameters, such as stochastic depth's draws) this one reuses. ``exact``: ATen ops
    PyTorch computes less precisely than float64 are computed by their exact rules
    (:func:`inexact_calls`)."""

    def __init__(self, ep, module, x, trained=None, like=None, exact=False):
        import torch
        self.values, self.masks = {}, dict(like.masks) if like else {}
        self.inputs = {}
        arrays = state(ep, module)
        for name, (kind, target, tensor) in arrays.items():
            self.inputs[name] = (trained or {}).get(target, tensor.detach().clone())
        self.buffers = {target: self.inputs[name] for name, (kind, target, _) in arrays.items()}
        interpreter = torch.fx.Interpreter(ep.graph_module)
        run_node, call = interpreter.run_node, interpreter.call_function
        live = depends(ep)

        def record(node):
            self.node = node
            if like is not None and node.op == "call_function" and node.name not in live:
                value = like.values[node.name]
            else:
                value = run_node(node)
            keep = node.name not in live and isinstance(value, torch.Tensor)
            self.values[node.name] = value.detach().clone() if keep else value
            return value

        substitutes = {name: rule for name, (_, rule) in inexact_calls().items()} if exact else {}

        def call_function(target, args, kwargs):
            if str(target) in substitutes:
                return substitutes[str(target)](*args, **kwargs)
            if str(target) in DROPOUT and args[1] > 0 and (args[2] if len(args) > 2 else kwargs.get("train", True)):
                p = args[1]
                if self.node.name not in self.masks:
                    with torch.no_grad():
                        self.masks[self.node.name] = torch.empty_like(args[0]).bernoulli_(1 - p).div_(1 - p)
                mask = self.masks[self.node.name]
                return args[0] * mask
            return call(target, args, kwargs)

        interpreter.run_node, interpreter.call_function = record, call_function
        self.input_shape = tuple(x.shape[1:])
        placeholders = [n.name for n in ep.graph.nodes if n.op == "placeholder"]
        self.output = interpreter.run(*[x if name not in self.inputs else self.inputs[name] for name in placeholders])
        if isinstance(self.output, (tuple, list)):
            self.output = self.output[0]


def read_later(node, order):
    """Whether a node after the in-place call ``node`` reads the value it changes or a view of
    it (a graph of values, as manualbp's, would give that node the value before the change)."""
    aliases, todo = set(), [node.args[0]]
    while todo:
        value = todo.pop()
        if value not in aliases:
            aliases.add(value)
            todo += [u for u in value.users if str(u.target) in VIEWS or u.target is operator.getitem]
    return any(order[u] > order[node] for value in aliases for u in value.users if u is not node and u not in aliases)


class Importer:
    """Builds the manualbp :class:`Graph` of a traced program on backend ``bk``."""

    def __init__(self, bk):
        self.bk, self.nodes, self.taken = bk, [], {INPUT}
        self.origin = {}           # graph node name -> the traced node it imports

    def add(self, name, module, inputs=()):
        while name in self.taken:
            name += "_"
        self.taken.add(name)
        self.nodes.append((name, module, tuple(inputs)))
        return name

    def array(self, kind, target, tensor):
        """The :class:`Value` of a new ``kind`` node (Parameter or Constant) named ``target``
        holding a copy of ``tensor`` (the module's own stays as it is)."""
        array = tensor.detach().cpu().numpy().copy()
        return Value(self.add(target, kind(self.bk, array)), array.shape, str(array.dtype))

    def constant(self, node, run):
        """The graph node holding the traced run's value of ``node`` (made on first use)."""
        if node.name not in self.made:
            value = run.values[node.name]
            self.made[node.name] = self.add(node.name, Constant(self.bk, value.cpu().numpy().copy()))
        return self.made[node.name]

    def argument(self, a, run):
        """A call's argument as its trace rule sees it: a :class:`Value` for a tensor."""
        import torch.fx
        if isinstance(a, torch.fx.Node):
            if a.name in self.pending:
                self.values[a.name] = self.array(Constant, *self.pending.pop(a.name))
            if a.name in self.values:
                return self.values[a.name]
            if a.name in self.live:
                raise ConversionError(f"cannot import {where(a)}: its value is used by another node, but it "
                                      f"is not a tensor")
            value = run.values[a.name]
            if not hasattr(value, "shape"):
                return value                      # a number computed from constants
            return Value(self.constant(a, run), value.shape, str(value.dtype).replace("torch.", ""))
        if isinstance(a, (list, tuple)):
            return type(a)(self.argument(b, run) for b in a)
        return a

    def import_program(self, ep, module, run, input_shape):
        """The :class:`Graph` of ``ep`` (a program of ``module``, run by ``run``: a :class:`TracedRun`)."""
        from torch.export.graph_signature import InputKind, OutputKind
        rules, arrays = trace_rules(), state(ep, module)
        self.live, self.values, self.made, self.pending = depends(ep), {}, {}, {}
        order = {node: i for i, node in enumerate(ep.graph.nodes)}
        for node in ep.graph.nodes:
            if node.op == "placeholder":
                if node.name not in arrays:
                    self.input = self.values[node.name] = Value(INPUT, node.meta["val"].shape)
                    continue
                kind, target, tensor = arrays[node.name]
                if kind == InputKind.PARAMETER:                   # a buffer: made when a node reads it
                    self.values[node.name] = self.array(Parameter, target, tensor)
                else:
                    self.pending[node.name] = (target, tensor)
            elif node.op == "call_function" and node.name in self.live:
                self.call(node, rules, order, run)
        outputs = [spec.arg.name for spec in ep.graph_signature.output_specs if spec.kind == OutputKind.USER_OUTPUT]
        result = self.values.get(outputs[0]) if outputs else None     # several (auxiliary heads): the first
        if not isinstance(result, Value):
            raise ConversionError(f"cannot import {type(module).__name__}: its forward must return a tensor that "
                                  f"depends on the input (or a tuple whose first entry is one), got outputs {outputs}")
        graph = Graph(self.bk, self.nodes, input_shape, output=result.node)
        graph.training = module.training
        return graph

    def call(self, node, rules, order, run):
        """Import one call of an ATen op that depends on the input or the parameters."""
        target = str(node.target)
        if node.target is operator.getitem:
            self.values[node.name] = self.values[node.args[0].name][node.args[1]]
            return
        if target.split(".")[1].endswith("_") and read_later(node, order):
            raise ConversionError(f"cannot import {where(node)}: it changes {node.args[0].name!r} in place, "
                                  f"and a later node reads that value (or a view of it)")
        args = self.argument(node.args, run)
        kwargs = {k: self.argument(v, run) for k, v in node.kwargs.items()}
        if target in ALIASES:
            self.values[node.name] = args[0]
            return
        if target not in rules:
            supported = sorted(set(rules) | ALIASES)
            raise ConversionError(f"cannot import {where(node)}: no op traces {target}; supported are "
                                  f"{', '.join(supported)}")
        op, rule = rules[target]
        self.node = node.name
        result = rule(Call(self.bk, where(node), self.input), *args, **kwargs)
        meta = node.meta.get("val")
        if isinstance(result, list):
            self.values[node.name] = [self.build(op, spec, f"{node.name}_{i}", m.shape)
                                      for i, (spec, m) in enumerate(zip(result, meta))]
        else:
            self.values[node.name] = self.build(op, result, node.name, meta.shape)

    def build(self, op, spec, name, shape):
        """The :class:`Value` that ``spec`` (what a trace rule returned) makes, adding its node."""
        if isinstance(spec, Value):
            return spec
        op, (inputs, settings) = (spec[0], spec[1:]) if len(spec) == 3 else (op, spec)
        slots = [i for i, v in enumerate(inputs) if v is not None]
        values = [inputs[i].node for i in slots]
        module = settings if not isinstance(settings, dict) else Apply(self.bk, op, settings, slots)
        made = self.add(name, module, values)
        self.origin[made] = self.node
        return Value(made, shape)


def import_module(module, x, backend):
    """The manualbp graph of ``module`` traced on the example batch ``x`` (a torch tensor), on
    ``backend``, in the module's mode. The module is left as it is."""
    ep = export(module, x)
    return Importer(backend).import_program(ep, module, TracedRun(ep, module, x), tuple(x.shape[1:]))
