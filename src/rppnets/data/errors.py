"""The two ways data can fail before training: files not found (and no download asked for), or files not official."""


class DataNotFoundError(ValueError):
    """The data set's files are not where the data module was told to look, and no download was asked for."""


class CorruptDataError(ValueError):
    """A data file exists but is not the official one, cannot be read, or does not fit the data set."""
