"""How a :class:`~manualbp.train.Trainer` shares its work among processes.

:class:`OneProcess` (no communicator) does all of it. :class:`DataParallel` runs on every rank
of an MPI job (:mod:`manualbp.distributed`): each rank trains on its shard of every batch, the
ranks' gradients are summed -- each weighted by its shard's share of the batch -- before every
update, the evaluation images are split over the ranks and their sums added, and rank 0 alone
logs and writes. The trainer calls the same methods on either, so its loop has no branch for MPI.
"""


def sharing(comm, batch_size):
    """:class:`OneProcess` without ``comm``, else :class:`DataParallel` over its ranks."""
    return OneProcess() if comm is None else DataParallel(comm, batch_size)


class OneProcess:
    """All the work in this process: every method leaves it as it is."""

    is_root = True

    def settings(self):
        """What a checkpoint records about the processes (resuming on others is refused)."""
        return {}

    def start(self, model, log):
        """Before the first epoch of a run."""

    def own_stream(self, bk, key):
        """After the epoch's shuffle was drawn from the stream ``key`` that all processes share."""

    def shard(self, idx):
        """``(this process's part of the batch idx, its share of the batch)``."""
        return idx, 1

    def sum_gradients(self, model, share):
        """Make the gradients in ``model`` (of this part, ``share`` of the batch) the batch's."""

    def sum(self, values):
        """The sums of the host numbers ``values`` over the processes."""
        return list(values)

    def images(self, x, y):
        """This process's part of the evaluation images ``(x, y)``."""
        return x, y

    def end_epoch(self, model, epoch):
        """After an epoch's training, before its evaluation and checkpoint."""


class DataParallel(OneProcess):
    """The ranks of ``comm`` (a :class:`~manualbp.distributed.Communicator`) train together."""

    def __init__(self, comm, batch_size):
        if batch_size < comm.size:
            raise ValueError(f"batch_size {batch_size} is smaller than the {comm.size} ranks: each rank "
                             "needs a part of every batch")
        self.comm, self.batch_size, self.is_root = comm, batch_size, comm.is_root

    def settings(self):
        return {"ranks": self.comm.size} if self.comm.size > 1 else {}

    def start(self, model, log):
        self.comm.check_identical(model, "before training")
        transport = self.comm.transport_for(model.bk)      # chosen by all ranks together
        if log and self.comm.size > 1:
            log(f"data parallel on {self.comm.size} ranks: batches of {self.batch_size} in shards of "
                f"about {self.batch_size // self.comm.size}, gradients all-reduced by {transport}")

    def own_stream(self, bk, key):
        self.comm.own_stream(bk, key)                       # noise and augmentation per rank

    def shard(self, idx):
        part = self.comm.shard(len(idx))
        return idx[part], (part.stop - part.start) / len(idx)

    def sum_gradients(self, model, share):
        self.comm.average_gradients(model, share)          # sum_r share_r * grad_r

    def sum(self, values):
        return self.comm.sum(values)

    def images(self, x, y):
        part = self.comm.shard(len(x))
        return x[part], y[part]

    def end_epoch(self, model, epoch):
        self.comm.average_running_statistics(model)
        self.comm.check_identical(model, f"after epoch {epoch + 1}")


def idle_step(trainer):
    """A rank's part of a step whose shard is empty (a last batch smaller than the number of
    ranks): zero gradients into the all-reduce, then the update every rank takes; its loss, 0."""
    trainer.model.parameter_store().grad[...] = 0      # every layer's grads are views of it
    trainer.update(0)
    return 0.0
