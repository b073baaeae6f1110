"""The one exception family for bad user input: the CLI turns it into exit code 2."""


class BadInput(ValueError):
    """A bad config, flag, environment variable or storage; the message names the field and the fix.

    One line, always: a line break that came with the input (a key, a value, a path) is shown escaped.
    """

    def __init__(self, message: str):
        super().__init__(message.replace("\r", "\\r").replace("\n", "\\n"))
