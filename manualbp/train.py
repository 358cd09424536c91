"""The training loop (Algorithm 1 of the paper): forward (Eq. 1), loss, backward (Eq. 2, 3),
weight update, noise-level update (Eq. 7), one step per mini-batch and one pass per epoch, with
the history of the paper's Fig. 3; the Table 1 optimisers; and :func:`train_model`, the one way
every script trains a model.

What is not the loop sits beside it, one job per module, called by the loop at fixed points:
sharing the work among the ranks of an MPI job (:mod:`manualbp.data_parallel`), the remedies for
collapsing noise (:mod:`manualbp.remedies`), the progress bar and log line
(:mod:`manualbp.progress`), and the checkpoints that resume a run (:mod:`manualbp.trainer_state`).

Reproducibility: the backend's generator is re-seeded from ``(seed, epoch)`` at the start of
every epoch, and it alone shuffles the data and draws the noise. A run resumed from the
checkpoint of epoch ``k`` therefore continues exactly as the uninterrupted run would have.
"""
import inspect
import math
import time

from . import checkpoint, data_parallel, progress, trainer_state
from .layers import SoftmaxCrossEntropy
from .model import evaluating, sigma_summary
from .optim import SGD, SIGMA_LR, Adam, StepLR, is_noise_level, noise_level_optimizer
from .remedies import REMEDIES
from .trainer_state import model_state

#: Seeds the initial weights and noise levels: ``bk.seed([seed, INIT_STREAM])`` before a model is built.
INIT_STREAM = 0xC0DE
#: How sigma is updated: the paper's Eq. (7), the released code's way with the correct gradient,
#: or the released code exactly as it runs (see :func:`make_optimizers`).
SIGMA_UPDATES = ("eq7", "weights", "released")


def make_optimizers(model, optimizer="adam", lr=1e-3, weight_decay=1e-4, momentum=None,
                    decay_every=None, decay_gamma=1.0, sigma_lr=SIGMA_LR, sigma_update="eq7", **unknown):
    """The weights' optimiser (Table 1) and, for learned noise, the noise-level optimiser.

    ``sigma_update="eq7"`` (the paper): ``sigma`` gets its own Adam followed by ``abs`` (Eq. 7).
    ``"weights"`` (the paper's released code): ``sigma`` is trained by the weights' optimiser,
    with its weight decay (the model should then use ``|sigma|``: :func:`model_options`).
    ``"released"``: the same optimisers, for a model that also starts ``sigma`` from N(0, 1)
    and leaves ``sign(sigma)`` out of its gradient, as the released code does.
    ``momentum`` (SGD only) defaults to 0.9. Any other setting is refused. Returns
    ``(optimizers, schedule)``.
    """
    if unknown:
        raise ValueError(f"make_optimizers: unknown setting(s) {', '.join(map(repr, sorted(unknown)))}: "
                         f"expected {', '.join(OPTIMIZER_SETTINGS)}")
    if sigma_update not in SIGMA_UPDATES:
        raise ValueError(f"unknown sigma_update {sigma_update!r}: expected one of {', '.join(SIGMA_UPDATES)}")
    separate = sigma_update == "eq7"
    select = (lambda name: not is_noise_level(name)) if separate else None
    if optimizer == "adam":
        weights = Adam(model, lr, weight_decay=weight_decay, select=select)
    elif optimizer == "sgd":
        weights = SGD(model, lr, momentum=0.9 if momentum is None else momentum,
                      weight_decay=weight_decay, select=select)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}: expected 'adam' or 'sgd'")
    optimizers = [weights, noise_level_optimizer(model, sigma_lr) if separate else None]
    schedule = StepLR(optimizers, decay_every, decay_gamma) if decay_every else None
    return optimizers, schedule


#: The settings :func:`make_optimizers` takes (its keyword arguments): the keys of a training
#: set-up that choose the optimisers.
OPTIMIZER_SETTINGS = tuple(inspect.signature(make_optimizers).parameters)[1:-1]

#: The builder options of each ``sigma_update`` that is not the paper's Eq. (7).
SIGMA_UPDATE_OPTIONS = {"weights": {"abs_sigma": True}, "released": {"released": True}}


def model_options(training):
    """The builder options a training set-up asks for: the released code's ``sigma_update``
    ``"weights"`` uses ``|sigma|`` in the forward pass (``abs_sigma``); ``"released"`` is that
    code exactly as it runs (the noise layers' ``released``)."""
    return dict(SIGMA_UPDATE_OPTIONS.get(training.get("sigma_update"), {}))


def train_model(bk, build, splits, training, seed, checkpoint_path=None, resume=False, log=print,
                **trainer_options):
    """Build a model and train it as every script does; returns ``(model, trainer)``.

    ``build(bk, **options) -> model`` is called after seeding the initial weights from
    ``(seed, INIT_STREAM)``, with :func:`model_options` of ``training``, the set-up: ``epochs``,
    ``batch_size`` (default 128), the remedies ``adversarial`` and ``sigma_penalty`` (the
    arguments of :class:`~manualbp.remedies.AdversarialTraining` and
    :class:`~manualbp.remedies.SigmaPenalty`, or ``None``), and the settings of
    :func:`make_optimizers` (Table 1: optimiser, lr, ...). The model is then trained on
    ``splits`` by a :class:`Trainer` (``trainer_options``: ``augment``, ``limit_batches``,
    ``eval_batch_size``, ``progress``, ``settings``, ``comm``), writing a checkpoint to
    ``checkpoint_path`` after each epoch and continuing from it with ``resume``."""
    setup = dict(training)
    epochs, batch_size = setup.pop("epochs"), setup.pop("batch_size", 128)
    for key, remedy in REMEDIES.items():
        arguments = setup.pop(key, None)
        if arguments:
            trainer_options[key] = remedy(**arguments)
    bk.seed([seed, INIT_STREAM])
    model = build(bk, **model_options(training))
    optimizers, schedule = make_optimizers(model, **setup)         # the rest: the optimisers' settings
    trainer_options.setdefault("progress", False)
    trainer = Trainer(model, optimizers, schedule, batch_size=batch_size, seed=seed, **trainer_options)
    trainer.fit(splits, epochs, checkpoint_path=checkpoint_path, resume=resume, log=log)
    return model, trainer


def load_model(bk, build, path):
    """The model of a checkpoint written by :class:`Trainer`: built by ``build(bk, **options)``
    with the options its recorded training set-up asks for (:func:`model_options`), its arrays
    loaded; it comes back in evaluation mode (each noise layer's own ``eval_noise``)."""
    arrays, meta = checkpoint.load(path)
    model = build(bk, **model_options(meta.get("settings", {})))
    try:
        model.load_state_dict(model_state(arrays))
    except ValueError as err:
        raise checkpoint.CheckpointError(f"checkpoint {path}: {err}") from None
    return model.eval()


def positive_integer(name, value):
    """``int(value)``, or a ValueError naming ``name`` unless ``value`` is an integer >= 1."""
    try:
        ok = int(value) == value and value >= 1
    except (TypeError, ValueError, OverflowError):        # not a number, NaN, infinity
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class Trainer:
    """Trains ``model`` with ``optimizers`` (e.g. the weights' Adam and the Eq. (7) optimiser).

    Parameters
    ----------
    model : a model whose ``forward`` gives logits ``(N, K)``.
    optimizers : list of optimisers (``None`` entries are ignored).
    schedule : optional learning-rate schedule with ``set_epoch(epoch)``.
    batch_size, seed : mini-batch size; seed of shuffling and noise (see module docstring).
    augment : optional ``f(x_batch, backend) -> x_batch`` applied to training batches.
    limit_batches : stop each training epoch after this many batches (quick runs), or ``None``.
    eval_batch_size : batch size of :meth:`evaluate` (convolutional networks keep per-layer
        buffers of this size).
    progress : show a progress bar per epoch (when standard error is a terminal).
    settings : what else defines the run (dataset, variant, optimiser settings, ...: JSON-able
        values by name). Checkpoints record them with the seed, batch size, dtype, kernels and
        number of ranks, and resuming from a checkpoint written with other values is refused.
    comm : a :class:`~manualbp.distributed.Communicator` to train data-parallel on its ranks
        (:mod:`manualbp.data_parallel`).
    adversarial : an :class:`~manualbp.remedies.AdversarialTraining`: train on its PGD examples.
    sigma_penalty : a :class:`~manualbp.remedies.SigmaPenalty`: add its prior's gradient to sigma's.
    """

    def __init__(self, model, optimizers, schedule=None, batch_size=128, seed=0, augment=None,
                 limit_batches=None, eval_batch_size=1000, progress=True, settings=None, comm=None,
                 adversarial=None, sigma_penalty=None):
        self.model, self.bk = model, model.bk
        self.optimizers = [o for o in optimizers if o is not None]
        self.schedule, self.batch_size, self.seed = schedule, positive_integer("batch_size", batch_size), seed
        if limit_batches is not None:
            positive_integer("limit_batches", limit_batches)
        self.augment, self.limit_batches, self.progress = augment, limit_batches, progress
        self.eval_batch_size = int(eval_batch_size)
        self.parallel = data_parallel.sharing(comm, self.batch_size)
        remedies = {"adversarial": adversarial, "sigma_penalty": sigma_penalty}
        self.remedies = {key: remedy for key, remedy in remedies.items() if remedy is not None}
        self.settings = {"seed": seed, "batch_size": self.batch_size, "dtype": self.bk.dtype.name,
                         "kernels": self.bk.kernels, "limit_batches": limit_batches, **(settings or {}),
                         **self.parallel.settings(), **{k: r.settings() for k, r in self.remedies.items()}}
        self.loss = SoftmaxCrossEntropy(self.bk)
        self.history = []

    # --- one step and one epoch ----------------------------------------------------------
    def step(self, x, y, share=1):
        """One iteration of Algorithm 1; returns the batch loss (a 0-d device array). ``(x, y)``
        is this process's part of the batch and ``share`` its fraction of it; the remedies may
        change the batch and add to the gradients."""
        weights = None
        for remedy in self.remedies.values():                       # e.g. PGD examples (Madry et al.)
            x, y, weights = remedy.batch(self.model, x, y, weights)
        loss = self.loss.forward(self.model.forward(x), y, weights)  # Eq. (1) forward, then L
        self.model.backward(self.loss.backward(), input_grad=False)  # Eq. (2) and (3)
        for remedy in self.remedies.values():
            remedy.add_gradient(self.model)                         # e.g. + dR/dsigma, a prior on sigma
        self.update(share)
        return loss

    def update(self, share=1):
        """Algorithm 1's updates from the gradients in the model: in data-parallel training the
        ranks' gradients summed first, each weighted by its ``share`` of the batch."""
        self.parallel.sum_gradients(self.model, share)              # sum_r share_r * grad_r
        for opt in self.optimizers:                                 # weights, then Eq. (7)
            opt.step()

    def idle_step(self):
        """This rank's part of a step whose shard is empty (:func:`manualbp.data_parallel.idle_step`)."""
        return data_parallel.idle_step(self)

    def batches(self, n):
        """Index arrays of one shuffled epoch (at most ``limit_batches`` of them)."""
        order = self.bk.permutation(n)
        count = -(-n // self.batch_size)
        if self.limit_batches is not None:
            count = min(count, self.limit_batches)
        return [order[i * self.batch_size:(i + 1) * self.batch_size] for i in range(count)]

    def train_epoch(self, x, y, epoch=0):
        """One pass over ``(x, y)``; returns the mean training loss."""
        self.bk.seed([self.seed, epoch])
        if self.schedule is not None:
            self.schedule.set_epoch(epoch)
        self.model.train()
        batches = self.batches(len(x))                          # the same on every rank
        self.parallel.own_stream(self.bk, [self.seed, epoch])
        losses = []                                             # device scalars: no sync per step
        for idx in progress.bar(batches, f"epoch {epoch + 1}", self.progress):
            idx, share = self.parallel.shard(idx)
            if not len(idx):
                losses.append(self.idle_step())
                continue
            xb = x[idx]
            if self.augment is not None:
                xb = self.augment(xb, self.bk)
            loss = self.step(xb, y[idx], share)
            losses.append(loss * share if share != 1 else loss)
        mean = self.parallel.sum([self.bk.scalar(sum(losses))])[0] / len(batches)
        if not math.isfinite(mean):
            step = next((i for i, loss in enumerate(losses) if not math.isfinite(self.bk.scalar(loss))), None)
            where = "on another rank" if step is None else (
                f"step {step + 1} of {len(batches)}: the training loss is {self.bk.scalar(losses[step])}")
            raise FloatingPointError(f"epoch {epoch + 1}, {where}; lower --lr or check the data")
        return mean

    def evaluate(self, x, y, noise=None, batch_size=None):
        """``(mean loss, accuracy)`` on ``(x, y)`` in evaluation mode; ``noise`` as in
        :func:`manualbp.model.evaluating` (``None``: each noise layer's own ``eval_noise``).
        In data-parallel training each rank evaluates its shard of the images and the sums are added."""
        total_loss, correct = 0.0, 0
        batch_size = batch_size or self.eval_batch_size
        n = len(x)
        x, y = self.parallel.images(x, y)
        with evaluating(self.model, noise):
            for i in range(0, len(x), batch_size):
                logits = self.model.forward(x[i:i + batch_size])
                yb = y[i:i + batch_size]
                total_loss = total_loss + self.loss.forward(logits, yb) * len(yb)
                correct = correct + (logits.argmax(axis=1) == yb).sum()
        total_loss, correct = self.parallel.sum([self.bk.scalar(total_loss), self.bk.scalar(correct)])
        return total_loss / n, correct / n

    # --- the whole run ---------------------------------------------------------------------
    def fit(self, splits, epochs, checkpoint_path=None, resume=False, log=print):
        """Train for ``epochs`` epochs on ``splits["train"]``; after each, record the training
        loss, validation loss and accuracy, test accuracy (the data of the paper's Fig. 3), the
        seconds the epoch took and the learned noise levels. ``splits`` maps ``"train"``,
        ``"val"``, ``"test"`` to ``(x, y)`` backend arrays. With ``checkpoint_path`` a checkpoint
        is written after every epoch; ``resume=True`` continues from it if it exists (refused
        when it holds more than ``epochs``). In data-parallel training rank 0 alone logs and writes."""
        start = 0
        if resume and checkpoint_path is not None:
            start = trainer_state.restore(self, checkpoint_path, missing_ok=True, epochs=epochs)
        log = log if self.parallel.is_root else None
        self.parallel.start(self.model, log)
        for epoch in range(start, epochs):
            t0 = time.perf_counter()
            train_loss = self.train_epoch(*splits["train"], epoch=epoch)
            self.bk.synchronize()
            seconds = time.perf_counter() - t0
            self.parallel.end_epoch(self.model, epoch)
            val_loss, val_acc = self.evaluate(*splits["val"])
            _, test_acc = self.evaluate(*splits["test"])
            self.history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss,
                                 "val_accuracy": val_acc, "test_accuracy": test_acc, "seconds": seconds,
                                 "sigma": sigma_summary(self.model)})
            if log:
                log(progress.epoch_line(self.history[-1], epochs))
            if checkpoint_path is not None and self.parallel.is_root:
                self.save(checkpoint_path)
        return self.history

    # --- checkpoints ------------------------------------------------------------------------
    def save(self, path):
        """Model, optimiser states and history after the last finished epoch."""
        trainer_state.save(self, path)

    def load(self, path, missing_ok=False):
        """Restore a checkpoint written by :meth:`save`; returns the number of finished epochs."""
        return trainer_state.restore(self, path, missing_ok)
