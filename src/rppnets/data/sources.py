"""Where an IDX data set's four files are found (data.root, data/, a system folder), or downloaded to when asked."""

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from rppnets.data.errors import DataNotFoundError
from rppnets.data.idx import FASHION_MNIST, IDXDataset

DEFAULT_ROOT = "data"  # used when data.root is not set: looked in first, and where a download goes


@dataclass(frozen=True)
class Source:
    """Where the files were found: their `folder` and, for the console, what that folder is."""

    folder: Path
    origin: str  # "data.root", "data/", "Debian's package", "data.system_dir" or "a download"

    def describe(self) -> str:
        return f"{self.origin} ({self.folder.absolute()})"


def official_files(dataset: IDXDataset) -> str:
    """The four files by name, each with the MD5 of its official archive (torchvision's resources), for people."""
    return ", ".join(f"{name} (MD5 {dataset.archive_md5[name]})" for name in dataset.files)


def ways(dataset: IDXDataset, searched: list[Path], download_failed: bool = False) -> str:
    """How to get `dataset`'s files, in one sentence, for the message of a search (or download) that found none:
    the folders `searched` and each file with its MD5, so that they can be brought without network; the download
    commands only where no download was just tried (and failed)."""
    folders = ", ".join(str(place) for place in searched)
    ways = [f"put the four official files, {official_files(dataset)}, into one of the folders looked in ({folders}), "
            f"or into any folder and set data.root to it"]
    if dataset.package:
        ways.append(f"on Debian/Ubuntu, `apt-get install {dataset.package}` (read in place from {dataset.system_dir}, "
                    f"with data.root at its default, data)")
    if not download_failed:
        command = "`make data`" if dataset is FASHION_MNIST else f"`python -m rppnets.data --dataset {dataset.key}`"
        ways.append(f"download them: {command} (into data/), or data.download=true (into data.root)")
    return "; or ".join(ways) + "."


def searched(dataset: IDXDataset, places: list[Path]) -> list[Path]:
    """The folders looked in for each place: the place itself and its torchvision layout (MNIST/raw/), that last."""
    return [folder for place in places for folder in (place, place / dataset.raw_folder)]


def folder_with_files(folder: Path, dataset: IDXDataset = FASHION_MNIST) -> Path | None:
    """`folder` or its torchvision layout (FashionMNIST/raw/), whichever holds all four .gz files."""
    for candidate in (folder, folder / dataset.raw_folder):
        if all((candidate / name).is_file() for name in dataset.files):
            return candidate
    return None


def find_files(dataset: IDXDataset, root: str | Path | None, system_dir: str | Path | None,
               download: bool) -> Source | None:
    """Where to read `dataset`'s files from; None when they are missing and `download` asks for them.

    A `root` other than data/ is the only place looked in. Without one (None or data, the default): data/, then
    `system_dir`. Raises DataNotFoundError (its message starts with ``root=``) naming the ways to get the files.
    """
    if root is not None and Path(root) != Path(DEFAULT_ROOT):
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise DataNotFoundError(f"root={str(root)!r} is invalid; allowed: a folder holding the four files")
        if (folder := folder_with_files(root, dataset)) is not None:
            return Source(folder, "data.root")
        if download:
            return None
        where = ("does not exist" if not root.exists() else
                 f"holds no {dataset.name} files (nor its {dataset.raw_folder.as_posix()}/)")
        raise DataNotFoundError(f"root={str(root)!r} {where}, and no download was asked for. To get them: "
                                f"{ways(dataset, searched(dataset, [root]))}")
    system_origin = "Debian's package" if system_dir is not None and str(system_dir) == dataset.system_dir \
        else "data.system_dir"
    places = [(Path(DEFAULT_ROOT), "data/")] + ([(Path(system_dir), system_origin)] if system_dir else [])
    for place, origin in places:
        if (folder := folder_with_files(place, dataset)) is not None:
            return Source(folder, origin)
    if download:
        return None
    looked = " nor in ".join(str(place) for place, _ in places)
    which = "neither in" if len(places) > 1 else "not in"
    raise DataNotFoundError(f"root={None if root is None else str(root)!r}: the {dataset.name} files are {which} "
                            f"{looked}, and no download was asked for. To get them: "
                            f"{ways(dataset, searched(dataset, [place for place, _ in places]))}")


def download_files(dataset: IDXDataset, root: str | Path | None) -> Source:
    """Download the four official .gz files into `root`/<torchvision folder>/raw/ (data/ when None), each checked
    against its official MD5 on arrival; a file is named only once complete, so an interrupted download leaves no
    part."""
    from torchvision.datasets.utils import download_url

    source = dataset.torchvision()
    raw = Path(root if root is not None else DEFAULT_ROOT) / dataset.raw_folder
    created = [folder for folder in (raw, *raw.parents) if not folder.exists()]  # innermost first
    raw.mkdir(parents=True, exist_ok=True)
    for name in dataset.files:
        if (raw / name).is_file():
            continue
        part, errors = raw / f"{name}.part", {}
        for mirror in source.mirrors:
            try:
                download_url(mirror + name, str(raw), filename=part.name, md5=dataset.archive_md5[name])
                part.replace(raw / name)
                break
            except Exception as err:  # no network, a proxy, a mirror down: try the next, then one message
                errors[urlsplit(mirror).netloc or mirror] = why_not(err)
                part.unlink(missing_ok=True)
        else:
            for folder in created:  # the folders made for this download go again if it left them empty
                if not any(folder.iterdir()):
                    folder.rmdir()
            causes = ("; ".join(f"{host}: {why}" for host, why in errors.items()) if len(set(errors.values())) > 1
                      else f"{', '.join(errors)}: {next(iter(errors.values()), 'no mirror')}")
            places = [Path(root)] if root is not None and Path(root) != Path(DEFAULT_ROOT) else [Path(DEFAULT_ROOT)]
            raise DataNotFoundError(f"root={None if root is None else str(root)!r}: downloading {dataset.name}'s "
                                    f"{name} failed ({causes}). Without network: "
                                    f"{ways(dataset, searched(dataset, places), download_failed=True)}")
    return Source(raw, "a download")


def why_not(err: Exception) -> str:
    """A failed download's cause in a few words: the network's ("Connection refused", "Name or service not known"),
    the server's ("HTTP Error 404: Not Found"), or torchvision's ("File not found or corrupted.")."""
    from urllib.error import HTTPError, URLError

    if isinstance(err, URLError) and not isinstance(err, HTTPError):
        err = err.reason if isinstance(err.reason, BaseException) else err
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__
