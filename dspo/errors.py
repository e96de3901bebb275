"""Domain errors. The API maps each to an HTTP status; the CLI prints the message."""


class DspoError(Exception):
    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(DspoError):
    status_code = 422


class NotFound(DspoError):
    status_code = 404


class Conflict(DspoError):
    status_code = 409
