"""A training run's checkpoint: what :class:`~manualbp.train.Trainer` saves after every epoch
(model, optimiser states, history, the run's settings), and restoring it to resume -- refused
wherever the result would not be the run that was asked for.

A checkpoint's arrays are ``model/<name>`` and ``optimizer<i>/<state>``; its metadata holds
``epochs_done``, ``history``, ``settings``, ``version`` and ``optimizers`` (each one's step
count ``t``, learning rate and the parameters it updates).
"""
import os

from . import checkpoint
from .checkpoint import CheckpointError


def save(trainer, path):
    """Write the trainer's model, optimiser states and history after its last finished epoch."""
    to_host = trainer.bk.to_host
    arrays = {f"model/{k}": to_host(v) for k, v in trainer.model.state_dict().items()}
    optimizers = []
    for i, opt in enumerate(trainer.optimizers):
        state = opt.state_dict()
        optimizers.append({"t": state.pop("t"), "lr": state.pop("lr"), "names": opt.names})
        arrays.update({f"optimizer{i}/{k}": to_host(v) for k, v in state.items()})
    from . import __version__
    meta = {"epochs_done": len(trainer.history), "history": trainer.history, "settings": trainer.settings,
            "version": __version__, "optimizers": optimizers}
    checkpoint.save(path, arrays, meta)


def restore(trainer, path, missing_ok=False, epochs=None):
    """Load a checkpoint written by :func:`save` into ``trainer``; returns its number of
    finished epochs (0 for a missing file with ``missing_ok``). Refused before anything is
    loaded when its settings differ from the trainer's, or it holds more than ``epochs``."""
    if missing_ok and not os.path.exists(path):
        return 0
    arrays, meta = checkpoint.load(path)
    for key in ("settings", "epochs_done", "history", "optimizers"):
        if key not in meta:
            raise CheckpointError(f"checkpoint {path} has no {key!r} in its metadata: "
                                  "not written by this version of manualbp")
    check_settings(path, meta["settings"], trainer.settings)
    if epochs is not None:
        check_epochs(path, meta["epochs_done"], epochs)
    if len(meta["optimizers"]) != len(trainer.optimizers):
        raise CheckpointError(f"checkpoint {path} holds {len(meta['optimizers'])} "
                              f"optimisers, this run has {len(trainer.optimizers)}")
    try:
        trainer.model.load_state_dict(model_state(arrays))
    except ValueError as err:
        raise CheckpointError(f"checkpoint {path}: {err}") from None
    for i, (opt, info) in enumerate(zip(trainer.optimizers, meta["optimizers"])):
        if info["names"] != opt.names:
            raise CheckpointError(f"checkpoint {path}: optimiser {i} updated "
                                  f"{info['names']}, this one updates {opt.names}")
        prefix = f"optimizer{i}/"
        opt.load_state_dict({"t": info["t"], "lr": info["lr"],
                             **{k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}})
    trainer.history = meta["history"]
    return meta["epochs_done"]


#: Settings that checkpoints written before them do not record, with the value those runs had.
LATER_SETTINGS = {"input_noise": 0.0}


def check_settings(path, recorded, settings):
    """Resuming continues the same run: the checkpoint at ``path`` was written with ``settings``."""
    recorded = {**LATER_SETTINGS, **recorded}
    if recorded.get("ranks", 1) != settings.get("ranks", 1):
        raise CheckpointError(
            f"checkpoint {path} was written by {recorded.get('ranks', 1)} ranks, this run has "
            f"{settings.get('ranks', 1)}: resuming would not continue the same run")
    for key, value in settings.items():
        if key not in recorded:
            raise CheckpointError(f"checkpoint {path} does not record the setting {key!r}: cannot check "
                                  "that resuming continues the same run")
        if recorded[key] != value:
            raise CheckpointError(f"checkpoint {path} was written with {key}={recorded[key]!r}, this run has "
                                  f"{key}={value!r}: resuming would not continue the same run")


def check_epochs(path, done, epochs):
    """A run of ``epochs`` epochs cannot resume from a checkpoint that holds ``done`` > ``epochs``
    (its model and history would be those of the longer run)."""
    if done > epochs:
        raise CheckpointError(f"checkpoint {path} already holds {done} epochs, more than the {epochs} "
                              f"asked for: ask for at least {done} epochs to resume it")


def model_state(arrays):
    """The model's arrays of a checkpoint written by :func:`save` (its ``model/`` part)."""
    return {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
