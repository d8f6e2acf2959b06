"""`python -m rppnets.data [--dataset KEY] [--root DIR]` (`make data`): find an IDX data set's files, download them
only if they are nowhere, and check all four against the official MD5 sums, once, before a sweep."""

import argparse

from rppnets.data.errors import CorruptDataError, DataNotFoundError, DataNotReadableError
from rppnets.data.idx import DATASETS, load_split
from rppnets.data.sources import download_files, find_files


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rppnets.data", description=__doc__)
    parser.add_argument("--dataset", default="fashion_mnist", choices=sorted(DATASETS),
                        help="which data set (default: fashion_mnist)")
    parser.add_argument("--root", default=None, help="a folder to use instead of data/ and the system folder")
    args = parser.parse_args(argv)
    dataset = DATASETS[args.dataset]
    try:
        source = (find_files(dataset, args.root, dataset.system_dir, download=True)
                  or download_files(dataset, args.root))
        for train in (True, False):
            load_split(source.folder, train, dataset=dataset)
    except (DataNotFoundError, CorruptDataError, DataNotReadableError) as err:  # one line saying what to do
        parser.exit(2, f"{parser.prog}: {err}\n")
    print(f"{dataset.name}: the four official files are in {source.describe()}, MD5 sums checked")


if __name__ == "__main__":
    main()
