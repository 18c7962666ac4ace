"""User-facing errors.

Every mistake a user can make (a bad file, a bad record, a bad option) raises a subclass of
:class:`CorsaError`. The CLI prints its message as one paragraph and exits non-zero, with no
traceback unless ``--debug`` is given. Library code never uses ``assert`` for user errors.
"""

from __future__ import annotations


class CorsaError(Exception):
    """An error the user can fix; the message says what and where."""

    exit_code = 2


class ConfigError(CorsaError, ValueError):
    """An invalid option, method or hyperparameter."""


def refuse_given(options, flags, where: str) -> None:
    """A ConfigError naming the first of `flags` given in `options` (parsed arguments, a spec) that
    does not apply `where`. flags: (attribute, flag, its value when not given, why) each."""
    for name, flag, unset, why in flags:
        if getattr(options, name, unset) != unset:
            raise ConfigError(f"{flag} does not apply to {where}: {why}")


class DataError(CorsaError, ValueError):
    """A problem in an edit file, named by file, record and field."""

    def __init__(self, message: str, *, path: str | None = None, record: int | str | None = None,
                 field: str | None = None):
        self.path, self.record, self.field = path, record, field
        where = []
        if path is not None:
            where.append(f"file {path}")
        if record is not None:
            where.append(f"record {record}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class ModelError(CorsaError):
    """A model or adapter that cannot be found, trusted or used."""


class OutputError(CorsaError):
    """An output that could not be written (a full disk, a quota, permissions); inputs are untouched."""


class TrainingError(CorsaError):
    """Training could not go on (for example a non-finite loss); the last good state is kept."""

    exit_code = 3
