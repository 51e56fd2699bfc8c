"""Every hook a phaser plugin can implement.

This module is the reference for plugin authors: each spec's docstring says what the
hook receives, what it returns and when phaser calls it. Implement a hook by decorating a
function of the same name and signature with :data:`phaser_core.hookimpl` in a module that
your distribution names under the ``phaser.plugins`` entry-point group::

    [project.entry-points."phaser.plugins"]
    mylab = "phaser_mylab.plugin"

Registration hooks take a ``register`` callback (the pattern of simonw/llm) so that every
registered name records the plugin and distribution that provided it. The callback's
signature is::

    register(name, obj, *, config=None, aliases=(), doc=None, **meta)

``obj`` is the component (a class or factory, see each hook), ``config`` an attrs class
describing its plan keys (``None`` for no keys) and ``aliases`` other names that the plan
may use. Registration hooks are called once, when the registry is first built; a name
registered twice is a start-up error naming both owners.
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "phaser"
ENTRY_POINT_GROUP = "phaser.plugins"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# ---------------------------------------------------------------------------------------
# Compute backends
# ---------------------------------------------------------------------------------------


@hookspec
def register_backends(register):
    """Register compute backends.

    :param register: ``register(name, factory)``; ``factory(dtype="float32")`` returns an
        object satisfying :class:`phaser_core.backend.Backend`. The factory must import its
        array library lazily and raise :class:`phaser_core.errors.BackendUnavailable`
        (saying what to install) when it is missing.
    :returns: nothing.
    Called once when the registry is built.
    """


# ---------------------------------------------------------------------------------------
# Data: loaders and preprocessing
# ---------------------------------------------------------------------------------------


@hookspec
def register_loaders(register):
    """Register raw-data loaders (a detector or file format).

    :param register: ``register(name, load, config=ConfigClass)``; ``load(config, ctx)``
        returns a :class:`phaser_core.data.RawData` whose patterns are in electrons with
        zero angle at pixel ``(Qy//2, Qx//2)`` and detector axes parallel to object axes.
        ``ctx`` is a :class:`phaser_core.context.LoadContext` (plan directory, seed).
    :returns: nothing.
    Called once when the registry is built; ``load`` is called by ``phaser run`` for the
    plan's ``raw_data`` entry.
    """


@hookspec
def register_preprocessors(register):
    """Register post-load steps (crop, bin, Poisson resampling, ...).

    :param register: ``register(name, step, config=ConfigClass)``; ``step(config, data,
        ctx)`` takes and returns a :class:`phaser_core.data.RawData` (it may return a new
        object; it must not modify its input in place).
    :returns: nothing.
    Called once when the registry is built; steps run in the order of the plan's
    ``post_load`` list.
    """


# ---------------------------------------------------------------------------------------
# Initial state
# ---------------------------------------------------------------------------------------


@hookspec
def register_initializers(register):
    """Register probe, object and scan initialisers.

    :param register: ``register(name, init, config=ConfigClass, target=TARGET)`` with
        ``TARGET`` one of ``"probe"``, ``"object"`` or ``"scan"``. ``init(config, ctx)``
        returns, for ``probe``, a :class:`phaser_core.state.ProbeState`; for ``object`` an
        :class:`phaser_core.state.ObjectState`; for ``scan`` an ``(N, 2)`` float array of
        ``(y, x)`` positions [Å]. ``ctx`` is a :class:`phaser_core.context.InitContext`
        (raw data, seed, dtype, slices and, for the object, the probe and scan).
    :returns: nothing.
    Called once when the registry is built; ``init`` is called before the first engine
    unless the run resumes from a state file.
    """


# ---------------------------------------------------------------------------------------
# Numerical components used by engines
# ---------------------------------------------------------------------------------------


@hookspec
def register_noise_models(register):
    """Register detector noise models (gaussian, poisson, amplitude, anscombe, ...).

    :param register: ``register(name, cls, config=ConfigClass)``; ``cls(config)`` is an
        object with ``loss(bk, model_I, measured_I) -> (B,)`` (negative log-likelihood per
        pattern, zero at a perfect fit), ``grad_intensity(bk, model_I, measured_I)`` (dL/dI,
        for the analytic gradient path) and ``wave_update(bk, far_wave, model_I,
        measured_I)`` (the detector-plane wave update ΔΨ of the conventional engines).
        Intensities are ``(B, Qy, Qx)`` [e⁻], corner-centred; ``far_wave`` is
        ``(B, modes, Qy, Qx)``.
    :returns: nothing.
    Called once when the registry is built.
    """


@hookspec
def register_regularizers(register):
    """Register regularizers.

    :param register: ``register(name, cls, config=ConfigClass, role=ROLE)`` with ``ROLE``
        ``"constraint"`` (applied to the state per group or per iteration, in every engine:
        ``apply(bk, probe, obj, info) -> (probe, obj)``) or ``"cost"`` (a penalty added to
        the loss of the gradient engine: ``cost(bk, probe, obj, info)`` and its Wirtinger
        gradient ``grad(bk, probe, obj, info) -> (dprobe, dobj)``). ``info`` is a
        :class:`phaser_std.engines.regularizers.RegInfo` (sampling [Å], wavelength [Å],
        thicknesses [Å], iteration, group fraction). ``cls(config)`` returns the regularizer.
    :returns: nothing.
    Called once when the registry is built.
    """


@hookspec
def register_solvers(register):
    """Register update rules.

    :param register: ``register(name, cls, config=ConfigClass, role=ROLE)`` with ``ROLE``
        ``"conventional"`` (epie, lsqml), ``"gradient"`` (sgd, adam, ...) or ``"position"``
        (position correction). ``cls(config)`` returns the solver. Conventional solvers
        provide ``sweep(...)`` (the backward update through the slices, see
        ``phaser_std.engines.conventional_solvers``); gradient solvers ``init(params, bk)``
        and ``update(bk, grads, state, params, iteration)`` (optax-shaped); position solvers
        ``update(scan_A, shift_A, extra) -> scan_A`` [Å].
    :returns: nothing.
    Called once when the registry is built.
    """


@hookspec
def register_schedules(register):
    """Register hyperparameter schedules.

    :param register: ``register(name, make, config=ConfigClass)``; ``make(config)``
        returns a function ``f(iteration) -> float`` (iteration counts from 0 within the
        engine). Schedules are data in the plan, never evaluated strings.
    :returns: nothing.
    Called once when the registry is built.
    """


@hookspec
def register_engines(register):
    """Register reconstruction engines (``conventional``, ``gradient``).

    :param register: ``register(name, cls, config=ConfigClass)``; ``cls(config)`` returns
        an engine with ``run(state, data, ctx) -> ReconsState``; ``ctx`` is a
        :class:`phaser_core.context.RunContext` (backend, registry, observers, seed).
    :returns: nothing.
    Called once when the registry is built; engines run in plan order.
    """


# ---------------------------------------------------------------------------------------
# Observers and the command line
# ---------------------------------------------------------------------------------------


@hookspec
def register_observers(register):
    """Register observers: the only way state leaves a running engine.

    :param register: ``register(name, cls, config=ConfigClass)``; ``cls(config)`` returns
        a :class:`phaser_core.observer.Observer` (methods ``before_run``, ``after_run``,
        ``on_run_error``, ``before_engine``, ``after_engine``, ``after_iteration``).
    :returns: nothing.
    Called once when the registry is built.
    """


@hookspec
def register_commands(cli):
    """Add sub-commands to the ``phaser`` command line.

    :param cli: a :class:`phaser_core.cli.CommandRegistry`; call
        ``cli.command(name, help=...)`` to get an ``argparse`` sub-parser and set its
        handler with ``parser.set_defaults(handler=fn)``; ``fn(args) -> int`` returns the
        exit code.
    :returns: nothing.
    Called each time the ``phaser`` command line is built.
    """
