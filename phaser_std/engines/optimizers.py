"""Gradient solvers of the gradient engine: sgd, adam, adamw, nadam, polyak_sgd.

Each solver follows optax's shape (explicit state, no hidden mutation)::

    state = solver.init(params, bk)                        # one array (object, probe, ...)
    hyper = solver.hyperparams(iteration)                   # host floats, once per iteration
    updates, state = solver.update(bk, grads, state, params, hyper=hyper, value=loss)
    params = params + updates

``update(bk, grads, state, params, iteration)`` also works (it evaluates the schedules
itself); inside ``jax.jit`` pass ``hyper`` (a dict of floats, traced) so a scheduled value
never triggers a recompile. ``value`` (the loss) is needed by ``polyak_sgd`` only.

**Complex parameters.** ``grads`` is the steepest-ascent direction in (re, im):
``g = ∂L/∂x + i·∂L/∂y = 2·∂L/∂z̄ = conj(jax.grad(L)(z))`` (jax.grad returns the conjugate
of the direction for a real function of a complex variable). Updates are then ``−lr·g``
for sgd, and adam's second moment is ``|g|²`` (real): optax does exactly this for complex
leaves (``optax.tree_utils.tree_update_moment_per_elem_norm`` uses ``abs_sq``), which
``tests/test_optimizers.py`` pins. optax would store that real ν in a complex array (the
dtype its ``init`` sees); the Adam family keeps it real (``Adam._init_template``).

**Backends.** On jax the solvers *are* optax (``optax.sgd/adam/adamw/nadam/polyak_sgd``
under ``optax.inject_hyperparams`` so scheduled values live in the state). On numpy/cupy the
same update rules are written with ``bk.xp`` and give the same results on the same gradient
sequence (tests: float32 tolerance). :meth:`GradientSolver.state_to_numpy` flattens either
state into a dict of numpy arrays for checkpoints (``state.extra``);
:meth:`GradientSolver.state_from_numpy` restores it.

**L-BFGS is not registered**: optax's ``lbfgs`` needs a zoom line search that re-evaluates
the loss of the *same* objective several times per step, and its curvature pairs assume a
deterministic objective. With per-group (stochastic) gradients the objective changes from
group to group, so the curvature memory mixes groups and the line search fails or stalls;
it would only be usable with one group covering every position (full batch), which the
engine does not special-case yet.
"""

from __future__ import annotations

from typing import Any, Callable

import attrs
import numpy as np

from phaser_core.config import ScheduleSpec, Schedulable, param

__all__ = ["GradientSolver", "init_states", "SGD", "Adam", "AdamW", "NAdam", "PolyakSGD", "SGDConfig", "AdamConfig",
           "AdamWConfig", "NAdamConfig", "PolyakSGDConfig", "register_all"]


def _is_jax(bk: Any, params: Any = None) -> bool:
    if bk is not None:
        return getattr(bk, "name", "") == "jax"
    return type(params).__module__.split(".")[0] in ("jax", "jaxlib")


def init_states(pairs: dict[str, tuple["GradientSolver", Any]], bk: Any = None) -> dict[str, Any]:
    """Solver states ``{name: state}`` of ``{name: (solver, params)}`` (each params one
    array); on jax those of the built-in rules in one compiled program. Each program costs
    a compilation (~0.06-0.08 s of a cold first iteration), and so does each operation run
    eagerly (five per solver state)."""
    out: dict[str, Any] = {}
    on_jax = {}
    for k, (solver, params) in pairs.items():
        if type(solver).init is GradientSolver.init and _is_jax(bk, params):
            on_jax[k] = (solver, params)
        else:  # numpy/cupy, or a plugin's solver with an init of its own
            out[k] = solver.init(params, bk)
    if on_jax:
        out.update(_jax_init_states(on_jax))
    return {k: out[k] for k in pairs}


def _jax_init_states(pairs: dict[str, tuple["GradientSolver", Any]]) -> dict[str, Any]:
    """optax's states of ``{name: (solver, params)}``, in one compiled program."""
    import jax  # noqa: PLC0415 - jax backend only

    txs = {k: solver._optax_tx(params) for k, (solver, params) in pairs.items()}

    def init_all(all_params: dict[str, Any]) -> dict[str, Any]:
        return {k: txs[k].init(pairs[k][0]._init_template(p)) for k, p in all_params.items()}

    return jax.jit(init_all)({k: params for k, (_, params) in pairs.items()})


@attrs.frozen
class SGDConfig:
    learning_rate: Schedulable = param(1e-2, doc="step size (a number or a schedule)")
    momentum: Schedulable | None = param(None, doc="momentum decay (null: plain SGD)")
    nesterov: bool = param(False, doc="Nesterov momentum")


@attrs.frozen
class AdamConfig:
    learning_rate: Schedulable = param(1e-2, doc="step size (a number or a schedule)")
    b1: float = param(0.9, doc="first-moment decay")
    b2: float = param(0.999, doc="second-moment decay")
    eps: float = param(1e-8, doc="added to √ν̂ in the denominator")
    eps_root: float = param(0.0, doc="added to ν̂ inside the square root")
    nesterov: bool = param(False, doc="Nesterov momentum (= nadam)")


@attrs.frozen
class AdamWConfig:
    learning_rate: Schedulable = param(1e-2, doc="step size (a number or a schedule)")
    b1: float = param(0.9, doc="first-moment decay")
    b2: float = param(0.999, doc="second-moment decay")
    eps: float = param(1e-8, doc="added to √ν̂ in the denominator")
    eps_root: float = param(0.0, doc="added to ν̂ inside the square root")
    weight_decay: Schedulable = param(1e-4, doc="decoupled weight decay (times the learning rate)")
    nesterov: bool = param(False, doc="Nesterov momentum")


@attrs.frozen
class NAdamConfig:
    learning_rate: Schedulable = param(1e-2, doc="step size (a number or a schedule)")
    b1: float = param(0.9, doc="first-moment decay")
    b2: float = param(0.999, doc="second-moment decay")
    eps: float = param(1e-8, doc="added to √ν̂ in the denominator")
    eps_root: float = param(0.0, doc="added to ν̂ inside the square root")


@attrs.frozen
class PolyakSGDConfig:
    max_learning_rate: Schedulable = param(1.0, doc="upper bound of the Polyak step")
    scaling: Schedulable = param(1.0, doc="scales the gradient before the Polyak step")
    f_min: float = param(0.0, doc="lower bound of the loss, normalised like the gradient (per position; the "
                                  "object's also per unit probe intensity): 0 for phaser's noise models (poisson: "
                                  "at most eps [e⁻] per pixel below 0)")
    eps: float = param(0.0, doc="added to ‖g‖² in the step's denominator")


class GradientSolver:
    """Base class: schedules, backend dispatch and state conversion. Subclasses define
    ``schedulable`` (names of Schedulable hyperparameters), ``_optax(optax)`` and the numpy
    rules ``_np_init`` / ``_np_update``."""

    name = "base"
    schedulable: tuple[str, ...] = ()

    def __init__(self, config: Any):
        self.config = config
        self._fns: dict[str, Callable[[int], float]] | None = None

    # -- hyperparameters -----------------------------------------------------------------

    def _schedules(self) -> dict[str, Callable[[int], float]]:
        if self._fns is None:
            fns: dict[str, Callable[[int], float]] = {}
            for key in self.schedulable:
                value = getattr(self.config, key)
                if value is None:
                    continue
                if isinstance(value, ScheduleSpec):
                    from phaser_core.registry import get_registry

                    fns[key] = value.build(get_registry())
                else:
                    fns[key] = (lambda v: (lambda it: v))(float(value))
            self._fns = fns
        return self._fns

    def hyperparams(self, iteration: int) -> dict[str, float]:
        """The scheduled hyperparameters at engine ``iteration`` (Python floats)."""
        return {k: float(f(int(iteration))) for k, f in self._schedules().items()}

    # -- optax-style interface -----------------------------------------------------------

    def init(self, params: Any, bk: Any = None) -> Any:
        """Solver state for ``params`` (one array). ``bk`` picks optax (jax) or the xp rules
        (:func:`init_states` starts several at once)."""
        if _is_jax(bk, params):
            return _jax_init_states({"params": (self, params)})["params"]
        return self._np_init(bk.xp if bk is not None else np, params)

    def update(self, bk: Any, grads: Any, state: Any, params: Any, iteration: int | None = None, *,
               hyper: dict[str, Any] | None = None, value: Any = None) -> tuple[Any, Any]:
        """``(updates, new_state)``; add ``updates`` to ``params``. Give ``iteration`` or ``hyper``."""
        if hyper is None:
            if iteration is None:
                raise ValueError(f"{self.name}.update: give the engine iteration or the hyperparameters")
            hyper = self.hyperparams(iteration)
        if _is_jax(bk, params):
            hp = dict(state.hyperparams)
            for k, v in hyper.items():
                hp[k] = bk.xp.asarray(v, dtype=hp[k].dtype)
            state = state._replace(hyperparams=hp)
            extra = {"value": value} if self.needs_value else {}
            return self._optax_tx(params).update(grads, state, params, **extra)
        return self._np_update(bk.xp, grads, state, params, hyper, value)

    needs_value = False

    @staticmethod
    def _init_template(params: Any) -> Any:
        """What optax's ``init`` sees for ``params`` (traced, inside the init program)."""
        return params

    def _optax_tx(self, params: Any) -> Any:
        """The optax transformation; hyperparameters in the real dtype of ``params`` (optax
        would otherwise cast them to the complex parameter dtype). ``_optax`` gets an optax
        namespace whose ``inject_hyperparams`` does that and whose ``params_dtype`` is the
        parameters' dtype."""
        import optax  # noqa: PLC0415 - jax backend only

        params_dtype = np.dtype(params.dtype)
        dtype = np.dtype(np.real(np.zeros((), dtype=params_dtype)).dtype)
        cache = self.__dict__.setdefault("_tx", {})
        if params_dtype not in cache:
            real_inject = optax.inject_hyperparams

            class _Optax:  # optax namespace whose inject_hyperparams fixes the dtype
                def __getattr__(self, k: str) -> Any:
                    return getattr(optax, k)

                @staticmethod
                def inject_hyperparams(fn: Any, static_args: Any = ()) -> Any:
                    return real_inject(fn, static_args=static_args, hyperparam_dtype=dtype)

            namespace = _Optax()
            namespace.params_dtype = params_dtype
            cache[params_dtype] = self._optax(namespace)
        return cache[params_dtype]

    # -- checkpoints ---------------------------------------------------------------------

    @staticmethod
    def state_to_numpy(state: Any, bk: Any = None) -> dict[str, np.ndarray]:
        """Flatten a solver state (dict or optax named tuples) into ``{path: numpy array}``."""
        out: dict[str, np.ndarray] = {}
        to_np = bk.to_numpy if bk is not None else np.asarray

        def walk(node: Any, path: str) -> None:
            if isinstance(node, dict):
                for k in sorted(node):
                    walk(node[k], f"{path}/{k}" if path else str(k))
            elif isinstance(node, tuple) and hasattr(node, "_fields"):
                for k in node._fields:
                    walk(getattr(node, k), f"{path}/{k}" if path else k)
            elif isinstance(node, (tuple, list)):
                for i, v in enumerate(node):
                    walk(v, f"{path}/{i}" if path else str(i))
            elif node is None:
                return
            else:
                out[path] = np.array(to_np(node))

        walk(state, "")
        return out

    def state_from_numpy(self, arrays: dict[str, np.ndarray], params: Any, bk: Any = None,
                         template: Any = None) -> Any:
        """Rebuild the state saved by :meth:`state_to_numpy` for ``params`` on ``bk``
        (``template``: a fresh state for them, when the caller has one)."""
        template = self.init(params, bk) if template is None else template
        asarray = (lambda a, like: bk.asarray(a, dtype=like.dtype)) if bk is not None else \
            (lambda a, like: np.asarray(a, dtype=like.dtype))

        def walk(node: Any, path: str) -> Any:
            if isinstance(node, dict):
                return {k: walk(v, f"{path}/{k}" if path else str(k)) for k, v in node.items()}
            if isinstance(node, tuple) and hasattr(node, "_fields"):
                return type(node)(*[walk(getattr(node, k), f"{path}/{k}" if path else k) for k in node._fields])
            if isinstance(node, (tuple, list)):
                return type(node)(walk(v, f"{path}/{i}" if path else str(i)) for i, v in enumerate(node))
            if node is None:
                return None
            if path not in arrays:
                raise KeyError(f"{self.name} solver state: checkpoint lacks {path!r}; it was saved by a "
                               f"different solver or backend (has {sorted(arrays)})")
            saved = arrays[path]
            if path.endswith("/nu") and np.iscomplexobj(saved) and not np.iscomplexobj(np.zeros((), dtype=node.dtype)):
                saved = np.real(saved)  # Adam's ν from a checkpoint written when it was kept complex
            return asarray(saved, node)

        return walk(template, "")


def _abs_sq(xp: Any, g: Any) -> Any:
    return xp.real(g) ** 2 + xp.imag(g) ** 2 if xp.iscomplexobj(g) else g * g


def _real_dtype(xp: Any, a: Any) -> Any:
    return xp.real(a).dtype


class SGD(GradientSolver):
    """SGD, optionally with (Nesterov) momentum: ``t = g + μ t``; ``u = −lr·(g + μ t if
    nesterov else t)`` (optax.sgd)."""

    name = "sgd"
    schedulable = ("learning_rate", "momentum")

    def _optax(self, optax: Any) -> Any:
        c = self.config
        if c.momentum is None:
            return optax.inject_hyperparams(optax.sgd)(learning_rate=1.0)
        return optax.inject_hyperparams(optax.sgd, static_args=("nesterov",))(
            learning_rate=1.0, momentum=0.0, nesterov=bool(c.nesterov))

    def _np_init(self, xp: Any, params: Any) -> dict:
        if self.config.momentum is None:
            return {}
        return {"trace": xp.zeros_like(params)}

    def _np_update(self, xp: Any, g: Any, state: dict, params: Any, hyper: dict, value: Any) -> tuple:
        lr = hyper["learning_rate"]
        if self.config.momentum is None:
            return -lr * g, state
        m = hyper["momentum"]
        t = g + m * state["trace"]
        u = g + m * t if self.config.nesterov else t
        return -lr * u, {"trace": t}


class Adam(GradientSolver):
    """Adam (optax.adam): ``μ = b1 μ + (1−b1) g``, ``ν = b2 ν + (1−b2)|g|²``, bias-corrected,
    ``u = −lr·μ̂ / (√(ν̂ + eps_root) + eps)``; ``nesterov`` uses
    ``μ̂ = b1 μ/(1−b1^(t+1)) + (1−b1) g/(1−b1^t)``."""

    name = "adam"
    schedulable = ("learning_rate",)
    nesterov_default = False

    @property
    def _nesterov(self) -> bool:
        return bool(getattr(self.config, "nesterov", self.nesterov_default))

    @staticmethod
    def _init_template(params: Any) -> Any:
        # optax keeps ν in the dtype of what init sees: for complex parameters that is a
        # complex array of real values, twice the memory, and √ν a complex square root
        # (optax's adam update 0.19 ms against 0.09 ms for a 201² object on one core).
        # init sees the real part instead, and μ stays complex through ``mu_dtype``.
        import jax.numpy as jnp  # noqa: PLC0415 - jax backend only

        return jnp.real(params)

    @staticmethod
    def _moments(optax: Any) -> dict:
        """``mu_dtype`` for complex parameters (see :meth:`_init_template`)."""
        return {"mu_dtype": optax.params_dtype} if optax.params_dtype.kind == "c" else {}

    def _optax(self, optax: Any) -> Any:
        c = self.config
        return optax.inject_hyperparams(optax.adam, static_args=("nesterov", "mu_dtype"))(
            learning_rate=1.0, b1=c.b1, b2=c.b2, eps=c.eps, eps_root=c.eps_root, nesterov=self._nesterov,
            **self._moments(optax))

    def _np_init(self, xp: Any, params: Any) -> dict:
        return {"count": xp.zeros((), dtype=xp.int32), "mu": xp.zeros_like(params),
                "nu": xp.zeros(params.shape, dtype=_real_dtype(xp, params))}

    def _adam_direction(self, xp: Any, g: Any, state: dict) -> tuple[Any, dict]:
        c = self.config
        count = state["count"] + 1
        mu = c.b1 * state["mu"] + (1 - c.b1) * g
        nu = c.b2 * state["nu"] + (1 - c.b2) * _abs_sq(xp, g)
        t = count.astype(_real_dtype(xp, nu))
        if self._nesterov:
            mu_hat = c.b1 * mu / (1 - c.b1 ** (t + 1)) + (1 - c.b1) * g / (1 - c.b1 ** t)
        else:
            mu_hat = mu / (1 - c.b1 ** t)
        nu_hat = nu / (1 - c.b2 ** t)
        u = mu_hat / (xp.sqrt(nu_hat + c.eps_root) + c.eps)
        return u, {"count": count, "mu": mu.astype(state["mu"].dtype), "nu": nu.astype(state["nu"].dtype)}

    def _np_update(self, xp: Any, g: Any, state: dict, params: Any, hyper: dict, value: Any) -> tuple:
        u, new = self._adam_direction(xp, g, state)
        return (-hyper["learning_rate"] * u).astype(g.dtype), new


class NAdam(Adam):
    """NAdam: Adam with Nesterov momentum (optax.nadam)."""

    name = "nadam"
    nesterov_default = True

    def _optax(self, optax: Any) -> Any:
        c = self.config
        return optax.inject_hyperparams(optax.nadam, static_args=("mu_dtype",))(
            learning_rate=1.0, b1=c.b1, b2=c.b2, eps=c.eps, eps_root=c.eps_root, **self._moments(optax))


class AdamW(Adam):
    """AdamW (optax.adamw): ``u = −lr·(adam direction + weight_decay·params)``."""

    name = "adamw"
    schedulable = ("learning_rate", "weight_decay")

    def _optax(self, optax: Any) -> Any:
        c = self.config
        return optax.inject_hyperparams(optax.adamw, static_args=("nesterov", "mu_dtype"))(
            learning_rate=1.0, b1=c.b1, b2=c.b2, eps=c.eps, eps_root=c.eps_root, weight_decay=0.0,
            nesterov=self._nesterov, **self._moments(optax))

    def _np_update(self, xp: Any, g: Any, state: dict, params: Any, hyper: dict, value: Any) -> tuple:
        u, new = self._adam_direction(xp, g, state)
        u = u + hyper["weight_decay"] * params
        return (-hyper["learning_rate"] * u).astype(g.dtype), new


class PolyakSGD(GradientSolver):
    """SGD with Polyak's step (optax.polyak_sgd): ``d = −scaling·g``,
    ``step = min((L − f_min)/(‖d‖² + eps), max_learning_rate)`` (0 where ‖d‖² + eps is
    below machine epsilon), ``u = step·d``. Needs ``value`` (the loss) in ``update``. In the
    gradient engine the object's and the probe's solvers each step toward the same loss gap,
    so polyak_sgd on both moves about twice as far as either alone: lower
    ``max_learning_rate`` (or use it for one of them) when the loss oscillates."""

    name = "polyak_sgd"
    schedulable = ("max_learning_rate", "scaling")
    needs_value = True

    def _optax(self, optax: Any) -> Any:
        c = self.config
        return optax.inject_hyperparams(optax.polyak_sgd)(
            max_learning_rate=1.0, scaling=1.0, f_min=c.f_min, eps=c.eps)

    def _np_init(self, xp: Any, params: Any) -> dict:
        return {}

    def _np_update(self, xp: Any, g: Any, state: dict, params: Any, hyper: dict, value: Any) -> tuple:
        if value is None:
            raise ValueError("polyak_sgd.update needs value= (the loss of this group)")
        c = self.config
        d = -hyper["scaling"] * g
        sq = xp.sum(_abs_sq(xp, d))
        gap = value - c.f_min
        step = xp.where(sq + c.eps <= np.finfo(float).eps, 0.0,
                        xp.minimum(gap / (sq + c.eps), hyper["max_learning_rate"]))
        return (step * d).astype(g.dtype), state


def register_all(register) -> None:
    """Register the gradient solvers (role ``"gradient"``)."""
    register("sgd", SGD, config=SGDConfig, role="gradient",
             doc="Stochastic gradient descent with optional (Nesterov) momentum.")
    register("adam", Adam, config=AdamConfig, role="gradient", doc="Adam (optax.adam).")
    register("adamw", AdamW, config=AdamWConfig, role="gradient", doc="Adam with decoupled weight decay.")
    register("nadam", NAdam, config=NAdamConfig, role="gradient", doc="Adam with Nesterov momentum.")
    register("polyak_sgd", PolyakSGD, config=PolyakSGDConfig, role="gradient",
             doc="SGD with the Polyak step size (needs a loss lower bound f_min).")
