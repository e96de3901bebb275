"""Domain errors. The API maps each to an HTTP status (its `status_code`); the CLI prints the message."""


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


class Unauthorized(DspoError):
    """No valid credentials: log in (again)."""

    status_code = 401


class Forbidden(DspoError):
    """Valid credentials, but not allowed to do this."""

    status_code = 403


class TooLarge(DspoError):
    status_code = 413


class TooManyRequests(DspoError):
    """Refused for now; `retry_after` says in how many seconds it may succeed."""

    status_code = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServerDataMissing(DspoError):
    """The database names data that the store does not have (a blob deleted by hand, a lost volume):
    not the client's fault, and not something a retry mends. Restore the store."""

    status_code = 500
