"""``host new-extension``: write a new, installable extension from the template (core/scaffold.py)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("new-extension")
@click.argument("name")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="The folder to write the extension's folder (NAME) in.",
)
@click.option("--description", help="One line saying what the extension does (asked if not given).")
@click.option("--author", help="The author's name (asked if not given).")
@click.option("--no-input", is_flag=True, help="Ask nothing: what no option gives is left empty.")
def new_extension(
    name: str, directory: Path, description: str | None, author: str | None, no_input: bool
) -> None:
    """Write the extension NAME: a distribution with a task, a plugin, tests and a README.

    NAME is its distribution's name (weather, hostext-weather); its package,
    plugin and task prefix are NAME with '-' as '_'. Nothing is written into
    a folder that exists.
    """
    from core import scaffold
    from core.cli.base import cli

    new = scaffold.plan(name, directory, commands=frozenset(cli.commands))
    if description is None:
        description = "" if no_input else click.prompt("Description", default="", show_default=False)
    if author is None:
        author = "" if no_input else click.prompt("Author", default="", show_default=False)
    folder = scaffold.write(new, description=description, author=author)
    click.echo(
        f"Wrote {folder}: the distribution {new.distribution}, its task {new.plugin}.hello and its plugin."
    )
    click.echo("Next, in the host's environment:")
    click.echo(f"  cd {folder}")
    click.echo("  pip install -e '.[test]'")
    click.echo("  pytest")
    click.echo(f"and enable the plugin in the host's ini: host.plugins = {new.plugin} (see its README.md).")


COMMANDS = [new_extension]
