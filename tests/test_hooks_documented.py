"""Datasette-style hook documentation tests.

Every hook spec in ``phaser_core/hookspecs.py`` must appear in ``docs/hooks.md`` with its
exact signature, and must have a test named ``test_hook_<name>`` that calls it. The
``test_hook_*`` tests below call each hook through ``Registry.build`` with a fake plugin (or
through the plugin manager directly) and check that what it registered is there.
"""

from __future__ import annotations

import argparse
import inspect
import re
import types
from pathlib import Path

import attrs
import pytest

from phaser_core import hookimpl, hookspecs
from phaser_core.registry import Owner, Registry

ROOT = Path(__file__).resolve().parent.parent
HOOKS_MD = ROOT / "docs" / "hooks.md"
TESTS = Path(__file__).resolve().parent


def hook_specs() -> dict[str, object]:
    return {name: fn for name, fn in vars(hookspecs).items()
            if callable(fn) and hasattr(fn, f"{hookspecs.PROJECT_NAME}_spec")}


def test_there_are_hooks():
    assert len(hook_specs()) == 11


@pytest.mark.parametrize("name", sorted(hook_specs()))
def test_hook_is_documented_with_exact_signature(name):
    fn = hook_specs()[name]
    signature = f"{name}{inspect.signature(fn)}"
    assert signature in HOOKS_MD.read_text(encoding="utf-8"), f"docs/hooks.md lacks `{signature}`"
    assert fn.__doc__ and ":param" in fn.__doc__ and ":returns:" in fn.__doc__ and "Called" in fn.__doc__


@pytest.mark.parametrize("name", sorted(hook_specs()))
def test_hook_has_a_test(name):
    pattern = re.compile(rf"^def test_hook_{name}\(", re.M)
    assert any(pattern.search(p.read_text(encoding="utf-8")) for p in TESTS.glob("test_*.py")), \
        f"no test named test_hook_{name} in tests/"


def test_documented_hooks_exist():
    """docs/hooks.md documents no hook that does not exist (catches renamed hooks)."""
    documented = set(re.findall(r"^### `?(\w+)\(", HOOKS_MD.read_text(encoding="utf-8"), re.M))
    assert documented == set(hook_specs())


# -- one test per hook ------------------------------------------------------------------


@attrs.frozen
class _Cfg:
    value: float = 1.0


class _Thing:
    """A fake component."""

    def __init__(self, config=None, *args):
        self.config = config


def _build(hook_name: str, impl) -> Registry:
    fake = types.SimpleNamespace(**{hook_name: hookimpl(impl)})
    return Registry.build(entry_points=False,
                          extra_plugins=[("phaser_std", types.SimpleNamespace()), ("fakeplugin", fake)])


def _assert_registered(reg: Registry, kind: str, name: str, **meta) -> None:
    comp = reg.get(kind, name)
    assert comp.owner == Owner("fakeplugin")
    for key, value in meta.items():
        assert comp.meta[key] == value


def test_hook_register_backends():
    reg = _build("register_backends", lambda register: register("fakebk", lambda dtype="float32": None))
    _assert_registered(reg, "backend", "fakebk")


def test_hook_register_loaders():
    reg = _build("register_loaders", lambda register: register("fake_fmt", lambda cfg, ctx: None, config=_Cfg))
    _assert_registered(reg, "loader", "fake_fmt")
    assert reg.get("loader", "fake_fmt").make_config() == _Cfg()


def test_hook_register_preprocessors():
    reg = _build("register_preprocessors", lambda register: register("fake_crop", lambda cfg, d, ctx: d))
    _assert_registered(reg, "preprocessor", "fake_crop")


def test_hook_register_initializers():
    def impl(register):
        register("fake_probe", lambda cfg, ctx: None, target="probe")
        register("fake_object", lambda cfg, ctx: None, target="object")
        register("fake_scan", lambda cfg, ctx: None, target="scan")

    reg = _build("register_initializers", impl)
    for target in ("probe", "object", "scan"):
        _assert_registered(reg, f"{target}_initializer", f"fake_{target}")


def test_hook_register_noise_models():
    reg = _build("register_noise_models", lambda register: register("fake_noise", _Thing, config=_Cfg))
    _assert_registered(reg, "noise_model", "fake_noise")


def test_hook_register_regularizers():
    reg = _build("register_regularizers", lambda register: register("fake_tv", _Thing, role="cost"))
    _assert_registered(reg, "regularizer", "fake_tv", role="cost")


def test_hook_register_solvers():
    reg = _build("register_solvers", lambda register: register("fake_pie", _Thing, config=_Cfg, role="conventional"))
    _assert_registered(reg, "solver", "fake_pie", role="conventional")
    # the hook can also be called through the plugin manager directly
    seen = []
    reg.plugin_manager.hook.register_solvers(register=lambda name, obj, **kw: seen.append(name))
    assert seen == ["fake_pie"]


def test_hook_register_schedules():
    reg = _build("register_schedules", lambda register: register("fake_cos", lambda cfg: (lambda i: 1.0)))
    _assert_registered(reg, "schedule", "fake_cos")


def test_hook_register_engines():
    reg = _build("register_engines", lambda register: register("fake_engine", _Thing, config=_Cfg))
    _assert_registered(reg, "engine", "fake_engine")


def test_hook_register_observers():
    reg = _build("register_observers", lambda register: register("fake_obs", _Thing))
    _assert_registered(reg, "observer", "fake_obs")


def test_hook_register_commands():
    from phaser_core.cli import CommandRegistry

    def impl(cli):
        p = cli.command("fake-hello", help="say hello")
        p.set_defaults(handler=lambda args: 7)

    reg = _build("register_commands", impl)
    parser = argparse.ArgumentParser()
    cli = CommandRegistry(parser.add_subparsers())
    reg.call_register_commands(cli)
    assert "fake-hello" in cli.names
    assert parser.parse_args(["fake-hello"]).handler(None) == 7
