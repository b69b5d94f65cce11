"""The configuration error, in a module of its own so that every layer (the registries included) can raise it
without importing the config module."""


class ConfigError(ValueError):
    """A configuration that cannot be used, with the offending key in the message."""
