"""The ways data can fail before training: files not found (and no download asked for), files there but not readable
(permission, the disk), or files not official."""

import errno
import os
from pathlib import Path


class DataNotFoundError(ValueError):
    """The data set's files are not where the data module was told to look, and no download was asked for."""


class CorruptDataError(ValueError):
    """A data file exists but is not the official one, is damaged, or does not fit the data set."""


class DataNotReadableError(OSError):
    """A data file exists but this process cannot read it: no permission, or the system failed to read it."""

    @classmethod
    def from_os_error(cls, path: str | Path, err: OSError) -> "DataNotReadableError":
        """The error naming `path` and the cause `err` gives: permission (and whose it is to give), or the system's
        own words for any other failure, never "corrupt": the file's bytes were not seen."""
        if isinstance(err, PermissionError):
            return cls(f"{path} cannot be read: permission denied ({_who_may_read(Path(path))}). Give this user "
                       f"read permission, or set data.root to a folder holding readable copies.")
        cause = err.strerror or str(err)
        name = errno.errorcode.get(err.errno, "") if err.errno is not None else ""
        return cls(f"{path} cannot be read: {cause}" + (f" ({name})" if name else "") + ".")


def _who_may_read(path: Path) -> str:
    """Who is asking and what the file allows, for a permission error: "user alice; the file is bob's, mode 0600"."""
    import pwd

    def user(uid: int) -> str:
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return f"uid {uid}"

    try:
        info = path.stat()
    except OSError:
        return f"user {user(os.geteuid())}"
    return f"user {user(os.geteuid())}; the file is {user(info.st_uid)}'s, mode {info.st_mode & 0o7777:04o}"
