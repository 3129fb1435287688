"""Discovery against real ``*.dist-info`` folders: what each kind of broken extension reports.

Every test gets a fresh :class:`~core.celery_app.HostCelery` app (the ``app``
fixture). The generated task modules are written the way real extensions are
(``from core.celery_app import celery``), so the fixture makes that name the
fresh app for the test; see ``app`` for why that is enough to keep tests apart.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import importlib_metadata
import pytest

from core.celery_app import HostCelery
from core.config import load_config
from core.discovery import Discovery, discover
from core.errors import ExtensionError
from core.startup import configure_app
from tests.conftest import Site, write_ini

ENTRY_POINT = "host.celery_task:tasks = {pkg}.celery_import:task_imports"
DEFAULT_IMPORTS = """\
def task_imports():
    return ["{pkg}.tasks"]
"""
HINT_GARBAGE = "task_imports() must return module paths such as ['example_ext.tasks']"
HINT_DUPLICATE = (
    "task names must be unique across extensions: rename one of the tasks, or disable one "
    "of the extensions: host.celery_task.disabled = {name}"
)
REINSTALL = "then reinstall {name}: entry points are read at install time"


# -- fixtures and helpers ----------------------------------------------------


@pytest.fixture
def app(fresh_app: HostCelery) -> HostCelery:
    """A fresh app that ``from core.celery_app import celery`` returns (conftest's ``fresh_app``)."""
    return fresh_app


def config(tmp_path: Path, *lines: str):
    ini = write_ini(tmp_path / "test.ini", "\n".join(["[app:main]", "celery.broker_url = memory://", *lines]))
    return load_config(ini, environ={})


def run(app: HostCelery, tmp_path: Path, site: Site, *config_lines: str) -> Discovery:
    """Discover this site's extensions only, in a stable order."""
    eps = sorted(site.entry_points(), key=lambda ep: (ep.dist.name, ep.name))
    return discover(configure_app(app, config(tmp_path, *config_lines)), app.host_config, entry_points=eps)


def add_ext(
    site: Site,
    name: str,
    *,
    version: str = "1.0",
    tasks: str | None = None,
    celery_import: str | None = None,
    files: dict[str, str] | None = None,
    package: bool = True,
) -> str:
    """An extension ``name`` whose package is ``name`` with ``_``; returns the package name."""
    pkg = name.replace("-", "_").lower()
    written: dict[str, str] = {}
    if package:
        written[f"{pkg}/__init__.py"] = ""
        written[f"{pkg}/celery_import.py"] = celery_import or DEFAULT_IMPORTS.format(pkg=pkg)
        if tasks is not None:
            written[f"{pkg}/tasks.py"] = tasks
    written.update(files or {})
    site.add(name, version, {"host.celery_task": {"tasks": f"{pkg}.celery_import:task_imports"}}, written)
    return pkg


def source(site: Site, pkg: str, module: str = "tasks") -> Path:
    return site.path / pkg / f"{module}.py"


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def only_error(found: Discovery) -> ExtensionError:
    assert len(found.errors) == 1, found.errors
    error = found.errors[0]
    assert isinstance(error, ExtensionError)
    return error


def prefix(name: str, pkg: str, version: str = "1.0") -> str:
    return f"extension {name}=={version} (entry point {ENTRY_POINT.format(pkg=pkg)}): "


# -- a healthy extension -----------------------------------------------------


def test_healthy_extension_tasks_are_attributed(app: HostCelery, site: Site, tmp_path: Path) -> None:
    add_ext(
        site,
        "healthy-ext",
        version="2.3",
        celery_import=(
            'def task_imports():\n    return ["healthy_ext.tasks", "healthy_ext.more", "healthy_ext.tasks"]\n'
        ),
        tasks="""
            from core.celery_app import celery

            @celery.task(name="healthy.ping")
            def ping(value):
                return value

            @celery.task(name="healthy.add")
            def add(x, y):
                return x + y
            """,
        files={
            "healthy_ext/more.py": """
                from core.celery_app import celery

                class Count(celery.Task):
                    name = "healthy.count"

                    def run(self, text):
                        return len(text.split())

                celery.register_task(Count())
                """
        },
    )

    found = run(app, tmp_path, site)

    assert found.errors == []
    [ext] = found.extensions
    assert (ext.distribution, ext.version, ext.label) == ("healthy-ext", "2.3", "healthy-ext==2.3")
    assert ext.entry_point == ENTRY_POINT.format(pkg="healthy_ext")
    assert ext.modules == ["healthy_ext.tasks", "healthy_ext.more"]  # duplicates dropped, order kept
    assert found.modules == ["healthy_ext.tasks", "healthy_ext.more"]
    assert found.task_rows() == [
        {"task": "healthy.add", "extension": "healthy-ext", "version": "2.3", "module": "healthy_ext.tasks"},
        {"task": "healthy.count", "extension": "healthy-ext", "version": "2.3", "module": "healthy_ext.more"},
        {"task": "healthy.ping", "extension": "healthy-ext", "version": "2.3", "module": "healthy_ext.tasks"},
    ]
    assert found.task_names == ["healthy.add", "healthy.count", "healthy.ping"]
    # Registered on the app that was passed in, and callable there.
    assert app.tasks["healthy.add"].apply(args=(2, 3)).get() == 5
    assert app.tasks["healthy.count"].apply(args=("a b c",)).get() == 3


def test_no_extensions(app: HostCelery, site: Site, tmp_path: Path) -> None:
    found = run(app, tmp_path, site)
    assert (found.extensions, found.errors, found.task_rows()) == ([], [], [])


# -- not installed, broken inside -------------------------------------------


def test_entry_point_module_not_installed(app: HostCelery, site: Site, tmp_path: Path) -> None:
    add_ext(site, "ghost-ext", package=False)

    error = only_error(run(app, tmp_path, site))

    assert str(error) == (
        prefix("ghost-ext", "ghost_ext")
        + "module ghost_ext.celery_import (its entry point) is not installed\n"
        "  -> reinstall ghost-ext (pip install ghost-ext), or uninstall it"
    )
    assert error.not_installed is True
    assert (error.distribution, error.version) == ("ghost-ext", "1.0")
    assert error.module == "ghost_ext.celery_import"
    assert error.entry_point == ENTRY_POINT.format(pkg="ghost_ext")
    assert isinstance(error.__cause__, ModuleNotFoundError)


def test_task_module_missing_from_its_package(app: HostCelery, site: Site, tmp_path: Path) -> None:
    pkg = add_ext(site, "hollow-ext")  # task_imports() names hollow_ext.tasks, which has no file

    error = only_error(run(app, tmp_path, site))

    # The package is installed: the path names a module it does not have, not a missing install.
    assert str(error) == (
        prefix("hollow-ext", "hollow_ext")
        + "module hollow_ext.tasks (a module task_imports() returned) does not exist: "
        f"package hollow_ext ({site.path / pkg}) has no module tasks\n"
        f"  -> fix the path task_imports() returns ({source(site, pkg, 'celery_import')}, line 1)"
    )
    assert (error.not_installed, error.module) == (False, "hollow_ext.tasks")


def test_task_module_path_typo_gets_the_near_module(app: HostCelery, site: Site, tmp_path: Path) -> None:
    pkg = add_ext(
        site,
        "weather-ext",
        celery_import="\n\ndef task_imports():\n    return ['weather_ext.task']\n",
        tasks="",
    )

    error = only_error(run(app, tmp_path, site))

    assert str(error) == (
        prefix("weather-ext", "weather_ext")
        + "module weather_ext.task (a module task_imports() returned) does not exist: "
        f"package weather_ext ({site.path / pkg}) has no module task\n"
        "  -> did you mean weather_ext.tasks? "
        f"Fix the path task_imports() returns ({source(site, pkg, 'celery_import')}, line 3)"
    )


def test_entry_point_module_typo_is_not_a_missing_install(
    app: HostCelery, site: Site, tmp_path: Path
) -> None:
    # The case: celery_imports for celery_import, in an installed distribution.
    site.add(
        "hostext-weather",
        "0.1",
        {"host.celery_task": {"tasks": "hostext_weather.celery_imports:task_imports"}},
        {"hostext_weather/__init__.py": "", "hostext_weather/celery_import.py": DEFAULT_IMPORTS},
    )

    error = only_error(run(app, tmp_path, site))

    assert str(error) == (
        "extension hostext-weather==0.1 (entry point host.celery_task:tasks = "
        "hostext_weather.celery_imports:task_imports): module hostext_weather.celery_imports "
        f"(its entry point) does not exist: package hostext_weather ({site.path / 'hostext_weather'}) "
        "has no module celery_imports\n"
        "  -> did you mean hostext_weather.celery_import? Correct the entry point in hostext-weather's "
        "setup.py or pyproject.toml, " + REINSTALL.format(name="hostext-weather")
    )
    assert (error.not_installed, error.module) == (False, "hostext_weather.celery_imports")
    assert "not installed" not in str(error)


def test_entry_point_package_typo_gets_the_distributions_package(
    app: HostCelery, site: Site, tmp_path: Path
) -> None:
    site.add(
        "hostext-weather",
        "0.1",
        {"host.celery_task": {"tasks": "hostext_wether.celery_import:task_imports"}},
        {"hostext_weather/__init__.py": "", "hostext_weather/celery_import.py": DEFAULT_IMPORTS},
    )

    error = only_error(run(app, tmp_path, site))

    assert str(error).endswith(
        "module hostext_wether.celery_import (its entry point) does not exist: "
        "no package or module hostext_wether is installed\n"
        "  -> did you mean hostext_weather.celery_import? Correct the entry point in hostext-weather's "
        "setup.py or pyproject.toml, " + REINSTALL.format(name="hostext-weather")
    )


def test_entry_point_imports_missing_dependency(app: HostCelery, site: Site, tmp_path: Path) -> None:
    add_ext(site, "needy-ext", celery_import="import not_a_real_dependency_xyz\n\n" + DEFAULT_IMPORTS)

    error = only_error(run(app, tmp_path, site))

    assert str(error) == (
        prefix("needy-ext", "needy_ext") + "module needy_ext.celery_import (its entry point) is broken: "
        "it imports not_a_real_dependency_xyz, which is not installed\n"
        "  -> install not_a_real_dependency_xyz, or the extra of needy-ext that provides it"
    )
    assert (error.not_installed, error.module) == (False, "needy_ext.celery_import")


def test_task_module_imports_missing_dependency(app: HostCelery, site: Site, tmp_path: Path) -> None:
    add_ext(site, "needy-ext", tasks="import not_a_real_dependency_xyz.sub\n")

    error = only_error(run(app, tmp_path, site))

    assert str(error) == (
        prefix("needy-ext", "needy_ext")
        + "module needy_ext.tasks (a module task_imports() returned) is broken: "
        "it imports not_a_real_dependency_xyz, which is not installed\n"
        "  -> install not_a_real_dependency_xyz, or the extra of needy-ext that provides it"
    )
    assert error.not_installed is False


def test_task_module_raises(app: HostCelery, site: Site, tmp_path: Path) -> None:
    pkg = add_ext(
        site,
        "boom-ext",
        tasks="""
            from core.celery_app import celery

            @celery.task(name="boom.before")
            def before():
                return "registered before the error"

            RATIO = 1 / 0
            """,
    )

    error = only_error(run(app, tmp_path, site))

    path = source(site, pkg)
    assert str(error) == (
        prefix("boom-ext", "boom_ext")
        + "module boom_ext.tasks (a module task_imports() returned) is broken: "
        f"it raised ZeroDivisionError: division by zero at {path}, line {line_of(path, '1 / 0')}\n"
        "  -> fix the module, or disable the extension: host.celery_task.disabled = boom-ext"
    )
    assert (error.not_installed, error.module) == (False, "boom_ext.tasks")
    assert isinstance(error.__cause__, ZeroDivisionError)
    assert "boom.before" not in app.tasks
    assert "boom_ext.tasks" not in sys.modules


def test_entry_point_module_raises(app: HostCelery, site: Site, tmp_path: Path) -> None:
    pkg = add_ext(site, "boom-ext", celery_import='raise RuntimeError("bad setup")\n')

    error = only_error(run(app, tmp_path, site))

    path = source(site, pkg, "celery_import")
    assert str(error) == (
        prefix("boom-ext", "boom_ext") + "module boom_ext.celery_import (its entry point) is broken: "
        f"it raised RuntimeError: bad setup at {path}, line 1\n"
        "  -> fix the module, or disable the extension: host.celery_task.disabled = boom-ext"
    )


# -- task_imports() and the entry point itself --------------------------------


@pytest.mark.parametrize(
    ("returns", "complaint"),
    [
        ('"garbage_ext.tasks"', "returned 'garbage_ext.tasks', not a list of module paths"),
        ("None", "returned None, not a list of module paths"),
        ("42", "returned 42, not a list of module paths"),
        ('["garbage_ext.tasks", 3]', "returned 3, which is not a module path"),
        ('["garbage_ext.tasks", None]', "returned None, which is not a module path"),
        ('["garbage ext/tasks.py"]', "returned 'garbage ext/tasks.py', which is not a module path"),
        ('["garbage_ext.tasks."]', "returned 'garbage_ext.tasks.', which is not a module path"),
        ('[""]', "returned '', which is not a module path"),
    ],
)
def test_task_imports_returns_garbage(
    app: HostCelery, site: Site, tmp_path: Path, returns: str, complaint: str
) -> None:
    add_ext(
        site,
        "garbage-ext",
        celery_import=f"def task_imports():\n    return {returns}\n",
        tasks='raise AssertionError("must not be imported")\n',
    )

    error = only_error(run(app, tmp_path, site))

    expected = f"task_imports() {complaint}\n  -> {HINT_GARBAGE}"
    assert str(error) == prefix("garbage-ext", "garbage_ext") + expected
    assert error.module is None
    assert "garbage_ext.tasks" not in sys.modules


def test_task_imports_raises(app: HostCelery, site: Site, tmp_path: Path) -> None:
    pkg = add_ext(
        site,
        "raising-ext",
        celery_import='def task_imports():\n    raise KeyError("plugin:raising")\n',
    )

    error = only_error(run(app, tmp_path, site))

    path = source(site, pkg, "celery_import")
    assert str(error) == (
        prefix("raising-ext", "raising_ext")
        + f"task_imports() raised KeyError: 'plugin:raising' at {path}, line 2\n  -> {HINT_GARBAGE}"
    )
    assert isinstance(error.__cause__, KeyError)


def test_entry_point_is_not_callable(app: HostCelery, site: Site, tmp_path: Path) -> None:
    add_ext(site, "static-ext", celery_import='task_imports = ["static_ext.tasks"]\n')

    error = only_error(run(app, tmp_path, site))

    assert str(error) == (
        prefix("static-ext", "static_ext")
        + "the entry point names ['static_ext.tasks'], which is not a function\n  -> "
        + HINT_GARBAGE
    )


def test_entry_point_names_a_missing_function(app: HostCelery, site: Site, tmp_path: Path) -> None:
    pkg = add_ext(site, "typo-ext", celery_import="def task_import():\n    return []\n")

    error = only_error(run(app, tmp_path, site))

    assert str(error) == (
        prefix("typo-ext", "typo_ext")
        + "module typo_ext.celery_import (its entry point) has no task_imports "
        f"({source(site, pkg, 'celery_import')})\n"
        "  -> did you mean task_import? Correct the entry point in typo-ext's setup.py or pyproject.toml, "
        + REINSTALL.format(name="typo-ext")
    )
    assert (error.not_installed, error.module) == (False, "typo_ext.celery_import")


def test_entry_point_function_typo_says_did_you_mean_task_imports(
    app: HostCelery, site: Site, tmp_path: Path
) -> None:
    site.add(
        "typo-ext",
        "1.0",
        {"host.celery_task": {"tasks": "typo_ext.celery_import:task_import"}},
        {"typo_ext/__init__.py": "", "typo_ext/celery_import.py": DEFAULT_IMPORTS.format(pkg="typo_ext")},
    )

    error = only_error(run(app, tmp_path, site))

    assert str(error).endswith(
        f"has no task_import ({source(site, 'typo_ext', 'celery_import')})\n"
        "  -> did you mean task_imports? Correct the entry point in typo-ext's setup.py or pyproject.toml, "
        + REINSTALL.format(name="typo-ext")
    )


# -- duplicate task names -----------------------------------------------------

FIRST = """
    from core.celery_app import celery

    @celery.task(name="shared.name")
    def first():
        return "alpha"
    """


def test_duplicate_task_name_names_both_extensions(app: HostCelery, site: Site, tmp_path: Path) -> None:
    add_ext(site, "alpha-ext", tasks=FIRST)
    add_ext(
        site,
        "beta-ext",
        tasks="""
            from core.celery_app import celery

            @celery.task(name="beta.own")
            def own():
                return "beta"

            @celery.task(name="shared.name")
            def second():
                return "beta"
            """,
    )

    found = run(app, tmp_path, site)

    error = only_error(found)
    path = source(site, "beta_ext")
    assert str(error) == (
        prefix("beta-ext", "beta_ext")
        + f"task name 'shared.name' in module beta_ext.tasks ({path}, line {line_of(path, 'shared.name')}) "
        "is already registered by alpha-ext==1.0 (module alpha_ext.tasks): none of beta-ext's tasks are "
        "loaded\n  -> " + HINT_DUPLICATE.format(name="beta-ext")
    )
    assert (error.distribution, error.module) == ("beta-ext", "beta_ext.tasks")
    # The first one keeps the name; nothing of beta-ext stays registered, and what it had
    # registered before the clash is recorded as lost (host send refuses it).
    assert app.tasks["shared.name"].apply().get() == "alpha"
    assert "beta.own" not in app.tasks
    assert found.extensions[1].lost == ["beta.own"]
    assert found.task_rows() == [
        {"task": "shared.name", "extension": "alpha-ext", "version": "1.0", "module": "alpha_ext.tasks"}
    ]


def test_duplicate_task_name_by_register_task(app: HostCelery, site: Site, tmp_path: Path) -> None:
    add_ext(site, "alpha-ext", tasks=FIRST)
    add_ext(
        site,
        "beta-ext",
        tasks="""
            from core.celery_app import celery

            class Second(celery.Task):
                name = "shared.name"

                def run(self):
                    return "beta"

            celery.register_task(Second())
            """,
    )

    found = run(app, tmp_path, site)

    path = source(site, "beta_ext")
    assert str(only_error(found)) == (
        prefix("beta-ext", "beta_ext")
        + f"task name 'shared.name' in module beta_ext.tasks ({path}, line {line_of(path, 'register_task')}) "
        "is already registered by alpha-ext==1.0 (module alpha_ext.tasks): none of beta-ext's tasks are "
        "loaded\n  -> " + HINT_DUPLICATE.format(name="beta-ext")
    )
    assert app.tasks["shared.name"].apply().get() == "alpha"


def test_duplicate_task_name_after_register_task(app: HostCelery, site: Site, tmp_path: Path) -> None:
    add_ext(
        site,
        "alpha-ext",
        tasks="""
            from core.celery_app import celery

            class First(celery.Task):
                name = "shared.name"

                def run(self):
                    return "alpha"

            celery.register_task(First())
            """,
    )
    add_ext(site, "beta-ext", tasks=FIRST.replace('"alpha"', '"beta"'))

    found = run(app, tmp_path, site)

    path = source(site, "beta_ext")
    assert str(only_error(found)) == (
        prefix("beta-ext", "beta_ext")
        + f"task name 'shared.name' in module beta_ext.tasks ({path}, line {line_of(path, 'shared.name')}) "
        "is already registered by alpha-ext==1.0 (module alpha_ext.tasks): none of beta-ext's tasks are "
        "loaded\n  -> " + HINT_DUPLICATE.format(name="beta-ext")
    )


def test_duplicate_task_name_within_the_first_module(app: HostCelery, site: Site, tmp_path: Path) -> None:
    # The first module is imported while the app is not finalized yet, when
    # @celery.task only queues the task; the duplicate must still be reported
    # as this extension's error, not escape discover().
    add_ext(
        site,
        "alpha-ext",
        tasks="""
            from core.celery_app import celery

            @celery.task(name="alpha.same")
            def one():
                return 1

            @celery.task(name="alpha.same")
            def two():
                return 2
            """,
    )

    found = run(app, tmp_path, site)

    path = source(site, "alpha_ext")
    second = [i for i, line in enumerate(path.read_text().splitlines(), 1) if "alpha.same" in line][1]
    assert str(only_error(found)) == (
        prefix("alpha-ext", "alpha_ext")
        + f"task name 'alpha.same' in module alpha_ext.tasks ({path}, line {second}) is already registered "
        "by alpha-ext==1.0 (module alpha_ext.tasks): none of alpha-ext's tasks are loaded\n  -> "
        + HINT_DUPLICATE.format(name="alpha-ext")
    )
    assert "alpha.same" not in app.tasks


# -- disabled extensions ---------------------------------------------------------


@pytest.mark.parametrize(
    ("distribution", "disabled"),
    [("example-ext", "Example_Ext"), ("Example_Ext", "example-ext"), ("example.ext", "EXAMPLE-EXT")],
)
def test_disabled_extension_is_not_imported(
    app: HostCelery, site: Site, tmp_path: Path, distribution: str, disabled: str
) -> None:
    site.add(
        distribution,
        "1.0",
        {"host.celery_task": {"tasks": "off_ext.celery_import:task_imports"}},
        {"off_ext/__init__.py": 'raise AssertionError("a disabled extension must not be imported")\n'},
    )
    add_ext(site, "other-ext", tasks=FIRST)

    found = run(app, tmp_path, site, f"host.celery_task.disabled = {disabled} unrelated-ext")

    assert found.errors == []
    off = next(ext for ext in found.extensions if ext.disabled)
    assert (off.distribution, off.modules, off.tasks) == (distribution, [], {})
    assert "off_ext" not in sys.modules
    assert [ext.distribution for ext in found.active] == ["other-ext"]
    assert found.task_names == ["shared.name"]


def test_a_misspelled_disabled_name_disables_nothing_and_says_so(
    app: HostCelery, site: Site, tmp_path: Path
) -> None:
    add_ext(site, "weather-ext", tasks=FIRST)

    found = run(app, tmp_path, site, "host.celery_task.disabled = wether-ext elsewhere-ext")

    assert [str(e) for e in found.errors] == [
        f"{tmp_path / 'test.ini'}, section [app:main], key 'host.celery_task.disabled': 'wether-ext' is no "
        "installed extension, so it disables nothing\n  -> did you mean weather-ext?"
    ]
    assert found.task_names == ["shared.name"]  # (elsewhere-ext: far from every name here, left alone)


# -- a broken extension next to healthy ones ------------------------------------


def test_broken_extension_leaves_nothing_behind(app: HostCelery, site: Site, tmp_path: Path) -> None:
    # "aaa" sorts first, so its good module is imported (and registers) before the bad one fails.
    pkg = add_ext(
        site,
        "aaa-broken",
        celery_import='def task_imports():\n    return ["aaa_broken.good", "aaa_broken.bad"]\n',
        files={
            "aaa_broken/good.py": """
                from core.celery_app import celery

                @celery.task(name="broken.good")
                def good():
                    return "should not run"

                class Klass(celery.Task):
                    name = "broken.klass"

                    def run(self):
                        return "should not run"

                celery.register_task(Klass())
                """,
            "aaa_broken/bad.py": """
                from core.celery_app import celery

                @celery.task(name="broken.bad")
                def bad():
                    return "should not run"

                {}["missing"]
                """,
        },
    )
    add_ext(site, "zzz-healthy", tasks=FIRST)

    found = run(app, tmp_path, site)

    path = source(site, pkg, "bad")
    assert str(only_error(found)) == (
        prefix("aaa-broken", "aaa_broken")
        + "module aaa_broken.bad (a module task_imports() returned) is broken: "
        f"it raised KeyError: 'missing' at {path}, line {line_of(path, 'missing')}\n"
        "  -> fix the module, or disable the extension: host.celery_task.disabled = aaa-broken"
    )
    for name in ("broken.good", "broken.klass", "broken.bad"):
        assert name not in app.tasks
    assert "aaa_broken.good" not in sys.modules
    broken = found.extensions[0]
    assert broken.tasks == {}
    assert [ext.distribution for ext in found.active] == ["zzz-healthy"]
    assert found.modules == ["zzz_healthy.tasks"]
    assert found.task_names == ["shared.name"]
    assert app.tasks["shared.name"].apply().get() == "alpha"


def test_every_broken_extension_is_reported(app: HostCelery, site: Site, tmp_path: Path) -> None:
    add_ext(site, "one-ext", package=False)
    add_ext(site, "two-ext", celery_import="def task_imports():\n    return None\n")
    add_ext(site, "three-ext", tasks=FIRST)

    found = run(app, tmp_path, site)

    assert [e.distribution for e in found.errors] == ["one-ext", "two-ext"]
    assert found.task_names == ["shared.name"]


# -- the real example extension ---------------------------------------------------


@pytest.fixture
def fresh_example_ext(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Import example_ext anew for this test, and put back what was there before."""
    before = {name: mod for name, mod in sys.modules.items() if name.split(".")[0] == "example_ext"}
    for name in before:
        monkeypatch.delitem(sys.modules, name)
    yield
    for name in [n for n in sys.modules if n.split(".")[0] == "example_ext"]:
        del sys.modules[name]
    sys.modules.update(before)


def test_installed_example_ext(app: HostCelery, tmp_path: Path, fresh_example_ext: None) -> None:
    version = importlib_metadata.version("example-ext")

    found = discover(configure_app(app, config(tmp_path)), app.host_config)

    assert found.errors == []
    example = [ext for ext in found.extensions if ext.distribution == "example-ext"]
    assert [ext.entry_point for ext in example] == [
        "host.celery_task:tasks = example_ext.celery_import:task_imports"
    ]
    assert [row for row in found.task_rows() if row["extension"] == "example-ext"] == [
        {"task": name, "extension": "example-ext", "version": version, "module": "example_ext.tasks"}
        for name in (
            "example.add",
            "example.divide",
            "example.echo",
            "example.flaky",
            "example.ingest",
            "example.process_info",
            "example.reindex",
            "example.sleep",
            "example.word_count",
        )
    ]
    assert app.tasks["example.add"].apply(args=(2, 3)).get() == 5
    assert app.tasks["example.word_count"].apply(args=("one two",)).get() == 2


def test_installed_example_ext_disabled(app: HostCelery, tmp_path: Path, fresh_example_ext: None) -> None:
    found = discover(
        configure_app(app, config(tmp_path, "host.celery_task.disabled = Example_Ext")), app.host_config
    )

    example = [ext for ext in found.extensions if ext.distribution == "example-ext"]
    assert [ext.disabled for ext in example] == [True]
    assert "example_ext.tasks" not in sys.modules
    assert not [name for name in found.task_names if name.startswith("example.")]
