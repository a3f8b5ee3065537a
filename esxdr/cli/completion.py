"""`esxdr completion bash|zsh|fish`: the shell completion script, through click's own mechanism."""

from __future__ import annotations

import click

SHELLS = ("bash", "zsh", "fish")


@click.command(help="""Print the completion script for bash, zsh or fish.

The script is click's own: at each TAB the shell runs esxdr again with
_ESXDR_COMPLETE set (`_ESXDR_COMPLETE=bash_source esxdr` prints the same
script), so it completes the commands, options and choices of the esxdr it finds
in PATH, plugins' target stacks included. bash needs 4.4 or newer.

\b
Examples:
  esxdr completion bash > /etc/bash_completion.d/esxdr     system-wide (bash-completion)
  eval "$(esxdr completion bash)"                          in ~/.bashrc
  esxdr completion zsh > "${fpath[1]}/_esxdr"              or eval "$(esxdr completion zsh)" in ~/.zshrc
  esxdr completion fish > ~/.config/fish/completions/esxdr.fish
""")
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    from click.shell_completion import shell_complete

    from esxdr.cli.main import cli

    # What click itself does for `_ESXDR_COMPLETE=<shell>_source esxdr`: the program name is the
    # console script's, the variable the one click derives from it.
    shell_complete(cli, {}, "esxdr", "_ESXDR_COMPLETE", f"{shell}_source")
