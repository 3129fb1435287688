"""The ``host`` command: one module per group of commands.

* :mod:`core.cli.worker` -- ``celeryd``, ``celerybeat``;
* :mod:`core.cli.send` -- ``send``, ``result``;
* :mod:`core.cli.info` -- ``tasks``, ``plugins``, ``config show``, ``doctor``;
* :mod:`core.cli.deploy` -- ``supervisor``;
* :mod:`core.cli.locks` -- ``locks``, ``locks release``;
* :mod:`core.cli.schedule` -- ``schedule``;
* :mod:`core.cli.results` -- ``results``;
* :mod:`core.cli.control` -- ``inspect``, ``status``, ``revoke``, ``purge``, ``queues``;
* :mod:`core.cli.ping` -- ``ping``;
* :mod:`core.cli.monitor` -- ``flower``;
* :mod:`core.cli.scaffold` -- ``new-extension``.

A command parses its options, calls one function of :mod:`core.startup` or
the domain, and renders what it gets (:mod:`core.cli.render`).
"""

from __future__ import annotations

from core.cli import control, deploy, info, locks, monitor, ping, results, scaffold, schedule, send, worker
from core.cli.base import cli

__all__ = ["cli", "main"]

for _module in (worker, send, info, deploy, locks, schedule, results, control, ping, monitor, scaffold):
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main() -> None:
    cli(prog_name="host")
