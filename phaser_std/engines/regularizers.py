"""(to be filled)"""


def register_all(register) -> None:
    pass
