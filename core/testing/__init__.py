"""The extension author's test kit: pytest fixtures for tasks, plugins and real workers.

host-framework registers :mod:`core.testing.plugin` with pytest (the
``pytest11`` entry point), so wherever it is installed, an extension's tests
can use these fixtures with no conftest of their own:

* ``host_ini`` -- writes the test's ini (embedded broker, plugins, options);
* ``host_app`` -- the app configured from it, with the extensions' tasks;
* ``host_worker`` -- a real ``host celeryd`` on it, its log in the report of a failed test;
* ``host_cli`` -- runs ``host`` commands in-process on it;
* ``host_plugin`` -- enables a plugin object that is not installed, for one test;
* ``installed_extension`` -- writes an installed distribution with entry points.

docs/extensions.md ("Testing your extension") shows them at work.
"""

from core.testing.ini import ini_text
from core.testing.processes import Worker
from core.testing.sites import Site

__all__ = ["Site", "Worker", "ini_text"]
