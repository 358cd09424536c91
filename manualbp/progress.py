"""What a training run shows while it runs: a progress bar over each epoch's batches (on a
terminal only) and one log line per finished epoch."""
import sys


def bar(items, label, show=True):
    """``items``, iterated under a tqdm bar labelled ``label`` when ``show`` and standard error
    is a terminal (no bars in logs and pipes)."""
    if not show or not sys.stderr.isatty():
        return items
    from tqdm import tqdm
    return tqdm(items, desc=label, leave=False, unit="batch")


def epoch_line(record, epochs):
    """The log line of a finished epoch: its ``record`` in :attr:`Trainer.history`, of ``epochs``."""
    return (f"epoch {record['epoch']:3d}/{epochs}  train loss {record['train_loss']:.4f}  val loss "
            f"{record['val_loss']:.4f}  val acc {record['val_accuracy']:.4f}  test acc "
            f"{record['test_accuracy']:.4f}  {record['seconds']:.2f} s")
