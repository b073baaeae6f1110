"""The one exception family for bad user input: the CLI turns it into exit code 2."""


class BadInput(ValueError):
    """A bad config, flag, environment variable or storage; the message names the field and the fix."""
