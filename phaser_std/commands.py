"""Extra CLI sub-commands of the bundled plugin (simulate, inspect, ...)."""


def register_all(cli) -> None:
    pass
