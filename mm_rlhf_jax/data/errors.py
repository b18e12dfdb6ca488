"""One error type for bad data, which always says where the problem is.

Every validation failure in the data layer names the file, the 1-based line
(or record index for non-line sources such as a tfds split) and the field, so a
bad record in a 100k-line jsonl can be found and fixed without a debugger.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Where:
    """Provenance of one record: its file (or source name) and 1-based line."""

    file: str = "<memory>"
    line: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


class DataError(ValueError):
    """A record is malformed. `.file`, `.line` and `.field` locate it."""

    def __init__(self, where: Where, field: str, message: str):
        self.file = where.file
        self.line = where.line
        self.field = field
        super().__init__(f"{where}: field {field!r}: {message}")
