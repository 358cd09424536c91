"""The JAX reference: a manualbp model through its ops' JAX rules (``op.rule("jax")``, written
with ``jax.numpy`` / ``jax.lax`` beside each op's code) on the same arrays, differentiated by
``jax.value_and_grad`` and compiled once by ``jax.jit``. Imported only
when a JAX comparison is asked for; float64 comparisons switch on JAX's ``jax_enable_x64``."""
import jax
import jax.numpy as jnp

from .walk import Walker


def version():
    return f"jax {jax.__version__}"


def reference(model, x, y, arrays, trainable, eps):
    """Forward and backward in JAX; arguments and result as :func:`torch_ref.reference`."""
    if x.dtype.name == "float64":
        jax.config.update("jax_enable_x64", True)
    constants = {name: jnp.asarray(a) for name, a in arrays.items() if name not in trainable}
    params = {name: jnp.asarray(arrays[name]) for name in trainable}
    draws = {path: jnp.asarray(e) for path, e in eps.items()}
    labels = jnp.asarray(y.astype("int32"))

    def loss_fn(params, x):
        logits = Walker("jax", {**constants, **params}, draws).run(model, x)
        log_p = jax.nn.log_softmax(logits, axis=1)
        return -jnp.mean(log_p[jnp.arange(len(y)), labels]), logits

    step = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True))   # one compilation
    (loss, logits), (grad_params, grad_x) = step(params, jnp.asarray(x))
    host = jax.device_get
    return {"logits": host(logits), "loss": host(loss), "input": host(grad_x),
            "grads": {name: host(grad_params[name]) for name in trainable}}
