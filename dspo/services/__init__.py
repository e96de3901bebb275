"""The operations that the REST routes, the web pages and the CLI share, one module per concern.

A service takes a SQLAlchemy session (read-only or read-write, as the caller's dependency chose; see
dspo.db), or the Runtime where it runs several transactions of its own, and the settings it needs. It
raises the errors of dspo.errors, which the server maps to HTTP statuses, and never imports FastAPI.
Services that write commit their own unit of work; services that only read never commit."""
