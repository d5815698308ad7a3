"""The subcommands of the `pyqueue` command line, one concept per module.

pyqueue/cli.py builds the command group from them; common.py holds what they
share (opening the broker, error messages, output formats)."""
