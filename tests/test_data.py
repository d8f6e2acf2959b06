"""The Fashion-MNIST data module: where files are found, how they are checked, how batches are served."""

import gzip
import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from helpers import compose_train
from rppnets.data import (FASHION_MNIST, SYSTEM_DIR, CorruptDataError, DataNotFoundError, FashionMNISTDataModule,
                          InMemoryBatches, download_files, find_files, load_split)
from rppnets.training.pipeline import ConfigError, train

FILES = FASHION_MNIST.files


def find_fashion_mnist(root, system_dir, download):
    return find_files(FASHION_MNIST, root, system_dir, download)


def copy_raw(fake_root: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in FILES:
        shutil.copy(fake_root / "FashionMNIST" / "raw" / name, dest / name)
    return dest


def files_below(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_files_are_read_in_place_from_root_in_either_layout(fake_root, tmp_path):
    flat = copy_raw(fake_root, tmp_path / "flat")
    for root, folder in ((flat, flat), (fake_root, fake_root / "FashionMNIST" / "raw")):
        before = files_below(root)
        source = find_fashion_mnist(root, system_dir=None, download=False)
        assert (source.folder, source.origin) == (folder, "data.root")
        x, y = load_split(source.folder, train=True, verify_md5=False)
        assert x.shape == (256, 784) and y.shape == (256,) and y.dtype == torch.int64
        assert files_below(root) == before  # nothing unpacked or copied next to the .gz files


def test_without_root_data_then_the_system_folder(fake_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # data/ is relative to where the run starts
    system = copy_raw(fake_root, tmp_path / "system")
    source = find_fashion_mnist(None, system_dir=system, download=False)
    assert (source.folder, source.origin) == (system, "data.system_dir")  # not Debian's folder: named by its key
    assert find_fashion_mnist("data", system_dir=system, download=False) == source  # data, the default root
    assert not (tmp_path / "data").exists()  # read where it is: no copy
    shutil.copytree(fake_root, tmp_path / "data")
    assert find_fashion_mnist(None, system_dir=system, download=False).origin == "data/"


def test_explicit_root_that_is_missing_is_an_error_naming_the_ways(fake_root, tmp_path):
    system = copy_raw(fake_root, tmp_path / "system")  # present, but an explicit root is the only place looked in
    with pytest.raises(DataNotFoundError) as err:
        find_fashion_mnist(tmp_path / "nonexistent", system_dir=system, download=False)
    message = str(err.value)
    assert message.startswith(f"root='{tmp_path / 'nonexistent'}' does not exist")
    assert "apt-get install dataset-fashion-mnist" in message and "data.download=true" in message
    assert "make data" in message and "FashionMNIST/raw" in message
    assert not (tmp_path / "nonexistent").exists()
    assert find_fashion_mnist(tmp_path / "nonexistent", system_dir=system, download=True) is None  # asked for


def test_missing_everywhere_names_all_three_ways(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataNotFoundError, match="root=None: the Fashion-MNIST files are neither in data nor in .*no download"):
        find_fashion_mnist(None, system_dir=tmp_path / "nowhere", download=False)


def test_download_goes_into_root_and_leaves_no_part_on_failure(fake_root, tmp_path, monkeypatch):
    def fake_download(url, root, filename, md5):
        name = url.rsplit("/", 1)[1]
        if name.startswith("t10k-labels"):
            (Path(root) / filename).write_bytes(b"half a file")
            raise RuntimeError("connection reset")
        shutil.copy(fake_root / "FashionMNIST" / "raw" / name, Path(root) / filename)

    monkeypatch.setattr("torchvision.datasets.utils.download_url", fake_download)
    with pytest.raises(DataNotFoundError, match="downloading Fashion-MNIST's t10k-labels-idx1-ubyte.gz failed .*connection reset"):
        download_files(FASHION_MNIST, tmp_path / "root")
    raw = tmp_path / "root" / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(set(FILES) - {"t10k-labels-idx1-ubyte.gz"})


def test_a_failed_download_leaves_no_folder_it_made(tmp_path, monkeypatch):
    def no_network(url, root, filename, md5):
        raise OSError("Name or service not known")

    monkeypatch.setattr("torchvision.datasets.utils.download_url", no_network)
    with pytest.raises(DataNotFoundError, match="downloading Fashion-MNIST's train-images-idx3-ubyte.gz failed"):
        FashionMNISTDataModule(root=str(tmp_path / "new" / "root"), download=True).prepare_data()
    assert list(tmp_path.iterdir()) == []


def test_files_that_are_not_the_official_ones_are_named(fake_root):
    with pytest.raises(CorruptDataError, match="train-images-idx3-ubyte.gz is corrupt: MD5"):
        load_split(fake_root / "FashionMNIST" / "raw", train=True, verify_md5=True)


def test_truncated_archive_is_named(fake_root, tmp_path):
    raw = copy_raw(fake_root, tmp_path / "FashionMNIST" / "raw")
    content = (raw / "t10k-labels-idx1-ubyte.gz").read_bytes()
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(content[: len(content) // 2])
    with pytest.raises(CorruptDataError, match="t10k-labels-idx1-ubyte.gz is corrupt"):
        load_split(raw, train=False, verify_md5=False)
    assert sorted(p.name for p in raw.iterdir()) == sorted(FILES)  # no partial file left


def test_idx_file_with_too_few_values_is_named(fake_root, tmp_path):
    raw = copy_raw(fake_root, tmp_path / "FashionMNIST" / "raw")
    with gzip.open(raw / "train-labels-idx1-ubyte.gz", "rb") as f:
        content = f.read()
    with gzip.open(raw / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(content[:-3])
    with pytest.raises(CorruptDataError, match="train-labels-idx1-ubyte.gz is corrupt: 253 values"):
        load_split(raw, train=True, verify_md5=False)


def test_root_that_is_a_file_is_rejected(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="root=.*allowed: a folder"):
        FashionMNISTDataModule(root=str(tmp_path / "file"))


def test_one_line_names_the_source_and_the_check(fake_root, capsys):
    dm = FashionMNISTDataModule(root=str(fake_root), val_size=32, system_dir=None, verify_md5=False)
    dm.prepare_data()
    dm.setup()
    dm.setup()
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"Data: Fashion-MNIST from data.root ({fake_root / 'FashionMNIST' / 'raw'}), MD5 check off "
                     "(data.verify_md5=false); 224 training, 32 validation, 64 test images"]


def test_split_is_seeded_and_disjoint(fake_root):
    def split(seed):
        dm = FashionMNISTDataModule(root=str(fake_root), val_size=32, seed=seed, system_dir=None, verify_md5=False)
        dm.prepare_data()
        dm.setup()
        return dm

    a, b, c = split(0), split(0), split(1)
    assert len(a.x_val) == 32 and len(a.x_train) == 256 - 32 and len(a.x_test) == 64
    assert torch.equal(a.x_val, b.x_val) and not torch.equal(a.x_val, c.x_val)
    train_rows = {tuple(row.tolist()) for row in a.x_train}
    assert not any(tuple(row.tolist()) in train_rows for row in a.x_val)
    assert a.x_train.dtype == torch.float32 and 0 <= a.x_train.min() and a.x_train.max() <= 1


def test_batches_cover_each_sample_once_in_a_seeded_order():
    x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
    batches = InMemoryBatches(x, y, batch_size=4, shuffle=True, seed=0)
    assert len(batches) == 3
    epoch1, epoch2 = [torch.cat([b[1] for b in batches]) for _ in range(2)]
    assert sorted(epoch1.tolist()) == list(range(10)) and not torch.equal(epoch1, epoch2)
    again = torch.cat([b[1] for b in InMemoryBatches(x, y, batch_size=4, shuffle=True, seed=0)])
    assert torch.equal(epoch1, again)
    in_order = [b[1].tolist() for b in InMemoryBatches(x, y, batch_size=4, shuffle=False)]
    assert in_order == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


@pytest.mark.real_data
@pytest.mark.skipif(not Path(SYSTEM_DIR).is_dir(), reason=f"real Fashion-MNIST not installed in {SYSTEM_DIR} "
                    "(apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/ here: Debian's files, read in place
    dm = FashionMNISTDataModule(val_size=5000)
    dm.prepare_data()
    dm.setup()  # checks the official MD5 sums
    assert dm.source.folder == Path(SYSTEM_DIR) and not (tmp_path / "data").exists()
    assert dm.source.origin == "Debian's package"
    assert dm.x_train.shape == (55_000, 784) and dm.x_val.shape == (5000, 784) and dm.x_test.shape == (10_000, 784)
    assert torch.bincount(dm.y_test).tolist() == [1000] * 10


def test_a_run_with_a_missing_data_root_stops_before_training(tmp_path):
    cfg = compose_train([f"data.root={tmp_path / 'nonexistent'}", "data.download=false"], output_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="data.root='.*nonexistent' does not exist, and no download was asked"):
        train(cfg)
    assert not (tmp_path / "run").exists() and not (tmp_path / "nonexistent").exists()


def test_the_default_root_names_itself_when_nothing_is_found(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataNotFoundError, match="^root='data': the Fashion-MNIST files are neither in data nor in"):
        FashionMNISTDataModule(root="data", system_dir=str(tmp_path / "nowhere"), download=False)


def digest(*tensors: torch.Tensor) -> str:
    sha = hashlib.sha256()
    for tensor in tensors:
        sha.update(tensor.contiguous().numpy().tobytes())
    return sha.hexdigest()[:16]


@pytest.mark.real_data
@pytest.mark.skipif(not Path(SYSTEM_DIR).is_dir(), reason=f"real Fashion-MNIST not installed in {SYSTEM_DIR}")
@pytest.mark.parametrize("seed, train_size, split, order", [(0, None, "1b22325f2e0c482d", "452ff12c0b734dd4"),
                                                            (3, 2000, "69b7b8eae1128781", "ee5f506755848bf7")])
def test_real_fashion_mnist_splits_and_orders_are_those_of_every_earlier_run(tmp_path, monkeypatch, seed, train_size,
                                                                           split, order):
    # digests taken with the single-file data module that made every record in experiments/: the same rows in
    # each split, in the same order, and the same batches in the first two epochs
    monkeypatch.chdir(tmp_path)
    dm = FashionMNISTDataModule(val_size=5000, train_size=train_size, seed=seed)
    dm.setup()
    assert digest(dm.x_train, dm.y_train, dm.x_val, dm.y_val, dm.x_test, dm.y_test) == split
    loader = dm.train_dataloader()
    assert digest(*[torch.cat([y for _, y in loader]) for _ in range(2)]) == order
