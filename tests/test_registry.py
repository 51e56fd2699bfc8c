"""The plugin registry: duplicates, failing plugins, the essential plugin, hook checks, suggestions.

Registries here are built with a stub in place of ``phaser_std`` (``extra_plugins`` with the
name ``phaser_std`` stops the real one from loading) so they test the registry alone.
"""

from __future__ import annotations

import importlib.metadata as md
import types

import attrs
import pytest

from phaser_core import hookimpl
from phaser_core import registry as registry_module
from phaser_core.errors import (
    DuplicateComponentError,
    PluginError,
    PluginLoadError,
    UnknownComponentError,
)
from phaser_core.registry import Owner, Registry

STUB_STD = ("phaser_std", types.SimpleNamespace())


def plugin(**hooks) -> types.SimpleNamespace:
    """A plugin object whose attributes are hook implementations."""
    return types.SimpleNamespace(**{name: hookimpl(fn) for name, fn in hooks.items()})


def solvers(*names, **kwargs):
    def register_solvers(register):
        for name in names:
            register(name, object, role="conventional", **kwargs)

    return register_solvers


def build(*plugins, **kwargs) -> Registry:
    return Registry.build(entry_points=False, extra_plugins=[STUB_STD, *plugins], **kwargs)


def test_components_record_their_owner():
    reg = build(("lab_a", plugin(register_solvers=solvers("epie", "lsqml"))))
    comp = reg.get("solver", "epie")
    assert comp.owner == Owner("lab_a") and comp.meta == {"role": "conventional"}
    assert reg.names("solver", role="conventional") == ["epie", "lsqml"]
    assert reg.plugins["lab_a"] == Owner("lab_a")


def test_duplicate_name_names_both_owners():
    with pytest.raises(DuplicateComponentError) as info:
        build(("lab_a", plugin(register_solvers=solvers("epie"))),
              ("lab_b", plugin(register_solvers=solvers("epie"))))
    msg = str(info.value)
    assert "solver 'epie' is registered twice" in msg and "plugin lab_a" in msg and "plugin lab_b" in msg


def test_duplicate_alias_is_an_error():
    reg = Registry()
    reg.add("solver", "epie", object, Owner("a", "dist-a", "1.0"), aliases=("pie",))
    with pytest.raises(DuplicateComponentError, match=r"'pie' is registered twice: by dist-a 1.0 .* by dist-b 2.0"):
        reg.add("solver", "pie2", object, Owner("b", "dist-b", "2.0"), aliases=("pie",))


def test_plugin_import_failure_names_plugin_and_error(tmp_path, monkeypatch):
    (tmp_path / "broken_lab_plugin.py").write_text("raise RuntimeError('detector SDK missing')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginLoadError) as info:
        build(("broken_lab", "broken_lab_plugin"))
    exc = info.value
    assert exc.plugin == "broken_lab" and isinstance(exc.original, RuntimeError)
    assert "'broken_lab'" in str(exc) and "RuntimeError: detector SDK missing" in str(exc)
    assert "PHASER_DISABLE_PLUGINS=broken_lab" in str(exc)


def test_entry_point_import_failure(monkeypatch):
    bad = md.EntryPoint(name="lab_bad", value="no_such_module_for_phaser_tests.plugin", group="phaser.plugins")
    monkeypatch.setattr(registry_module.md, "entry_points", lambda group=None: [bad])
    with pytest.raises(PluginLoadError) as info:
        Registry.build(extra_plugins=[STUB_STD])
    assert info.value.plugin == "lab_bad" and isinstance(info.value.original, ModuleNotFoundError)
    assert "no_such_module_for_phaser_tests" in str(info.value)
    # a disabled plugin is not imported at all
    reg = Registry.build(extra_plugins=[STUB_STD], disable=["lab_bad"])
    assert "lab_bad" not in reg.plugins


def test_phaser_std_cannot_be_disabled(monkeypatch):
    monkeypatch.setenv("PHASER_DISABLE_PLUGINS", "phaser_std")
    with pytest.raises(PluginError, match="'phaser_std' is essential and cannot be disabled"):
        Registry.build(entry_points=False)


def test_disable_other_plugin_by_env(monkeypatch):
    monkeypatch.setenv("PHASER_DISABLE_PLUGINS", "lab_a, lab_x")
    reg = build(("lab_a", plugin(register_solvers=solvers("epie"))),
                ("lab_b", plugin(register_solvers=solvers("lsqml"))))
    assert ("solver", "epie") not in reg and ("solver", "lsqml") in reg
    # a plan naming a skipped plugin's component is told that plugins were skipped
    with pytest.raises(UnknownComponentError) as info:
        reg.get("solver", "epie")
    assert str(info.value) == ("unknown solver 'epie'; available: lsqml (lab_b) "
                               "(skipped by PHASER_DISABLE_PLUGINS: lab_a, lab_x)")


def test_check_pending_rejects_misspelled_hook():
    """A misspelt hook is named with its plugin (not a module's repr), the nearest hook and
    how to skip the plugin."""
    with pytest.raises(PluginError) as info:
        build(("typo", plugin(register_solver=solvers("epie"))))
    message = str(info.value)
    assert message.startswith("plugin 'typo' implements 'register_solver', which is no hook; did you mean "
                              "'register_solvers'?"), message
    assert "PHASER_DISABLE_PLUGINS=typo" in message and "register_observers" in message


def test_a_failure_in_a_plugins_code_names_the_plugin(tmp_path, monkeypatch):
    """The innermost frame of a traceback that runs a third-party plugin's code names who
    raised: the plugin whose module holds it (two plugins of one package apart), else its
    package's; a plugin given as a class is found by its module; phaser's own code, and a
    plan's local component that is phaser's own module, name nobody."""
    import sys

    (tmp_path / "labpkg").mkdir()
    (tmp_path / "labpkg" / "__init__.py").write_text("def explode():\n    raise ValueError('lab bug')\n")
    (tmp_path / "labpkg" / "a.py").write_text(
        "from phaser_core import hookimpl\n\n\n"
        "def explode():\n    raise ValueError('a bug')\n\n\n"
        "@hookimpl\ndef register_solvers(register):\n    register('labsolve_a', object, role='conventional')\n")
    (tmp_path / "labpkg" / "b.py").write_text(
        "from phaser_core import hookimpl\n\n\n"
        "class Plugin:\n"
        "    @staticmethod\n    @hookimpl\n    def register_solvers(register):\n"
        "        register('labsolve_b', object, role='conventional')\n\n\n"
        "def explode():\n    raise ValueError('b bug')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("labpkg", "labpkg.a", "labpkg.b"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import labpkg
    import labpkg.a
    import labpkg.b

    reg = build(("lab_a", labpkg.a), ("lab_b", labpkg.b.Plugin))

    def said(fn):
        with pytest.raises(Exception) as info:
            fn()
        return reg.culprit(info.value)

    assert said(labpkg.a.explode).startswith("the plugin 'lab_a' (PHASER_DISABLE_PLUGINS=lab_a skips it) at ")
    assert said(labpkg.a.explode).endswith("a.py:5 in explode")
    assert said(labpkg.b.explode).startswith("the plugin 'lab_b' (")
    assert said(labpkg.explode).startswith("one of the plugins 'lab_a', 'lab_b' (")  # the package's own module
    from phaser_std.physics.scan import area_per_position_A2

    assert said(lambda: area_per_position_A2(object())) is None  # raised inside phaser_std
    reg.local_modules.update({"phaser_std", "labpkg"})
    assert said(lambda: area_per_position_A2(object())) is None


def test_did_you_mean_and_inventory():
    reg = Registry()
    reg.add("solver", "epie", object, Owner("phaser_std", "phaser-ptycho", "0.1.0"))
    reg.add("solver", "lsqml", object, Owner("phaser_std", "phaser-ptycho", "0.1.0"))
    reg.add("solver", "mypie", object, Owner("mylab", "phaser-mylab", "0.3"), aliases=("my_pie",))
    with pytest.raises(UnknownComponentError) as info:
        reg.get("solver", "epei")
    assert str(info.value) == ("unknown solver 'epei'; did you mean 'epie'? "
                               "available: epie, lsqml (phaser-ptycho 0.1.0); mypie (phaser-mylab 0.3)")
    assert info.value.kind == "solver" and info.value.name == "epei"
    assert "did you mean 'my_pie'?" in reg.unknown_message("solver", "my_pei")  # aliases are suggested
    assert reg.get("solver", "my_pie").name == "mypie"
    assert "did you mean" not in reg.unknown_message("solver", "adam")


def test_a_name_must_be_one_a_plan_can_write():
    reg = Registry()
    for bad in ("Bad Name!", "my-pie", "lab:pie", "", "null", "true", "123", "1e5", "0x1f"):
        with pytest.raises(PluginError, match="must be lowercase letters, digits and underscores"):
            reg.add("solver", bad, object, Owner("mylab"))
    with pytest.raises(PluginError, match="'My_Alias'"):
        reg.add("solver", "mypie", object, Owner("mylab"), aliases=("My_Alias",))
    reg.add("solver", "my_pie2", object, Owner("mylab"), aliases=("3pie",))


def test_config_must_be_attrs():
    reg = Registry()
    with pytest.raises(PluginError, match="must be an attrs class"):
        reg.add("solver", "x", object, Owner("p"), config=dict)

    @attrs.frozen
    class Cfg:
        a: int = 1

    assert reg.add("solver", "y", object, Owner("p"), config=Cfg).make_config() == Cfg()


def test_initializer_needs_target():
    def register_initializers(register):
        register("focused", object)

    with pytest.raises(PluginError, match="target='probe', 'object' or 'scan'"):
        build(("lab", plugin(register_initializers=register_initializers)))
