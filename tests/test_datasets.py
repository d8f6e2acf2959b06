"""The data group beyond Fashion-MNIST: MNIST and KMNIST files, a torchvision class (CIFAR-10), what a model needs.

Only Fashion-MNIST is real on the test machines: the other data sets are small files in each official format,
written here, whose pixels carry the file and the row they came from.
"""

import gzip
import hashlib
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import compose_train, write_idx
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torchvision.datasets import CIFAR10

from rppnets.data import (DATASETS, FASHION_MNIST, KMNIST, MNIST, SYSTEM_DIR, CorruptDataError, DataNotFoundError,
                          IDXDataModule, TorchvisionDataModule, load_split)
from rppnets.data.__main__ import main as data_main
from rppnets.models import MLP, rpp_trainable
from rppnets.training.pipeline import ConfigError, train

ROOT = Path(__file__).resolve().parents[1]
TRAIN_ROWS, TEST_ROWS = 120, 30
TRAIN_FILE, TEST_FILE = 1, 2  # the first value of every image of each file


def marked_images(n: int, marker: int, shape: tuple[int, ...]) -> np.ndarray:
    """n uint8 images whose first three values are the file marker and the row number (high, low byte)."""
    rows = np.arange(n)
    flat = np.zeros((n, int(np.prod(shape))), dtype=np.uint8)
    flat[:, 0], flat[:, 1], flat[:, 2] = marker, rows // 256, rows % 256
    return flat.reshape(n, *shape)


def trace(x: torch.Tensor) -> tuple[list[int], list[int]]:
    """(file marker, row number) of each flattened image in [0, 1]."""
    values = (x[:, :3] * 255).round().long()
    return values[:, 0].tolist(), (values[:, 1] * 256 + values[:, 2]).tolist()


def rows_of(x: torch.Tensor, marker: int) -> list[int]:
    markers, rows = trace(x)
    assert set(markers) <= {marker}
    return rows


def write_idx_set(raw: Path, labels_of=lambda rows, marker: (rows + marker) % 10) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, marker, n in (("train", TRAIN_FILE, TRAIN_ROWS), ("t10k", TEST_FILE, TEST_ROWS)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", marked_images(n, marker, (28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", labels_of(np.arange(n), marker).astype(np.uint8))


def archive_md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(params=["mnist", "kmnist"])
def idx_root(request, tmp_path, monkeypatch):
    """A root holding one of the two data sets in torchvision's layout, its files taken as the official ones."""
    dataset = DATASETS[request.param]
    raw = tmp_path / "root" / dataset.torchvision_class / "raw"
    write_idx_set(raw)
    for name in dataset.files:
        monkeypatch.setitem(dataset.archive_md5, name, archive_md5(raw / name))
    return dataset, tmp_path / "root"


def test_the_md5_tables_are_torchvisions_and_name_the_same_four_files():
    for dataset in DATASETS.values():
        assert dataset.archive_md5 == dict(dataset.torchvision().resources), dataset.key
        assert set(dataset.content_md5) <= {name.removesuffix(".gz") for name in dataset.files}
    assert len({md5 for dataset in DATASETS.values() for md5 in dataset.archive_md5.values()}) == 12


@pytest.mark.parametrize("config", ["mnist", "kmnist", "fashion_mnist"])
def test_each_idx_config_names_its_data_set_and_knows_the_model_size_before_any_file(config, tmp_path):
    cfg = compose_train([f"data={config}", f"data.root={tmp_path / 'empty'}", "data.download=true"])
    dm = instantiate(cfg.data)  # nothing there and nothing read yet: it is to be downloaded
    dataset = DATASETS[config]
    assert dm.source is None and dm.dataset is dataset and dm.name == cfg.data.name == dataset.name
    classes = len(dataset.torchvision().classes)
    assert (dm.input_shape, dm.in_features, dm.num_classes) == ((1, 28, 28), 28 * 28, classes)
    assert not (tmp_path / "empty").exists()


def test_mnist_and_kmnist_read_in_place_split_like_fashion_mnist(idx_root, capsys):
    dataset, root = idx_root
    cfg = compose_train([f"data={dataset.key}", f"data.root={root}", "data.download=false", "data.val_size=20",
                         "data.train_size=50", "data.batch_size=16"])
    before = sorted(p.name for p in root.rglob("*"))
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup()
    assert dm.source.folder == root / dataset.torchvision_class / "raw" and dm.source.origin == "data.root"
    val, train = rows_of(dm.x_val, TRAIN_FILE), rows_of(dm.x_train, TRAIN_FILE)
    order = torch.randperm(TRAIN_ROWS, generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    assert val == order[:20] and train == order[20:70]  # the seeded split of every data set, the subset after it
    assert rows_of(dm.x_test, TEST_FILE) == list(range(TEST_ROWS))
    assert dm.y_train.tolist() == [(row + TRAIN_FILE) % 10 for row in train]
    assert capsys.readouterr().out == (f"Data: {dataset.name} from data.root ({dm.source.folder}), official MD5 sums "
                                       "checked; 50 training, 20 validation, 30 test images\n")
    assert sorted(p.name for p in root.rglob("*")) == before  # read in place: nothing unpacked or copied


def test_an_archive_that_is_not_the_official_one_is_named(idx_root):
    dataset, root = idx_root
    raw = root / dataset.torchvision_class / "raw"
    images = raw / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes()), mtime=1))  # same content, new archive
    with pytest.raises(CorruptDataError, match=f"t10k-images-idx3-ubyte.gz is corrupt: MD5 of the archive .*"
                                               f"expected the official {dataset.name} .*data.verify_md5=false"):
        load_split(raw, train=False, dataset=dataset)
    x, _ = load_split(raw, train=False, verify_md5=False, dataset=dataset)  # unchecked, it reads
    assert rows_of(x, TEST_FILE) == list(range(TEST_ROWS))


@pytest.mark.real_data
@pytest.mark.skipif(not Path(SYSTEM_DIR).is_dir(), reason=f"real Fashion-MNIST not installed in {SYSTEM_DIR}")
def test_fashion_mnist_files_in_an_mnist_folder_are_recognised(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FASHION_MNIST.files:
        (raw / name).symlink_to(Path(SYSTEM_DIR) / name)
    dm = IDXDataModule("mnist", root=str(tmp_path))
    with pytest.raises(CorruptDataError, match="It is Fashion-MNIST's train-images-idx3-ubyte: each data set's files"):
        dm.setup()


def test_labels_beyond_the_classes_are_refused(tmp_path):
    write_idx_set(tmp_path / "MNIST" / "raw", labels_of=lambda rows, marker: rows % 12)
    dm = IDXDataModule("mnist", root=str(tmp_path), val_size=10, verify_md5=False)
    with pytest.raises(CorruptDataError, match=r"MNIST training labels run from 0 to 11, expected 0 to 9"):
        dm.setup()


def test_an_unknown_idx_data_set_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="dataset='emnist' is invalid; allowed: 'fashion_mnist', 'mnist', 'kmnist'"):
        IDXDataModule("emnist", root=str(tmp_path), download=True)


def test_missing_mnist_names_its_own_ways(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataNotFoundError) as err:
        IDXDataModule("kmnist", download=False)
    message = str(err.value)
    assert message.startswith("root=None: the KMNIST files are not in data, and no download was asked for.")
    assert "\n" not in message and "python -m rppnets.data --dataset kmnist" in message
    assert "folders looked in (data, data/KMNIST/raw)" in message and "apt-get" not in message
    assert all(f"{name} (MD5 {md5})" in message for name, md5 in KMNIST.torchvision().resources)


@pytest.fixture()
def no_network(monkeypatch):
    """Every download fails for real, at once: a proxy that refuses connections (a port just closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    proxies = {"http_proxy": closed, "https_proxy": closed, "HTTP_PROXY": closed, "HTTPS_PROXY": closed}
    for key in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(key, raising=False)
    for key, value in proxies.items():
        monkeypatch.setenv(key, value)
    return proxies


def check_without_network(message: str, dataset, folders: list[Path]) -> None:
    """One line naming where to put which files: the folders looked in, each file with its official MD5; no download
    command, the download having just failed."""
    assert "\n" not in message and "Connection refused" in message, message
    assert f"folders looked in ({', '.join(map(str, folders))})" in message, message
    assert all(f"{name} (MD5 {md5})" in message for name, md5 in dataset.torchvision().resources), message
    assert "python -m rppnets.data" not in message and "data.download=true" not in message, message


def test_without_network_a_run_says_where_to_put_which_files_and_leaves_no_folder(no_network, tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    cfg = compose_train(["data=mnist", f"data.root={root}", "data.download=true"], output_dir=tmp_path / "run")
    with pytest.raises(ConfigError) as err:
        train(cfg)  # refused before the run folder is made, as bad input is
    assert str(err.value).startswith(f"data.root={str(root)!r}: downloading MNIST's train-images-idx3-ubyte.gz "
                                     "failed (ossci-datasets.s3.amazonaws.com, yann.lecun.com: Connection refused)")
    check_without_network(str(err.value), MNIST, [root, root / "MNIST" / "raw"])
    assert not (tmp_path / "run").exists() and list(root.iterdir()) == []


def test_without_network_python_m_rppnets_data_says_the_same_in_one_line(no_network, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        data_main(["--dataset", "kmnist"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m rppnets.data: root=None: downloading KMNIST's ") and err.count("\n") == 1
    check_without_network(err.strip().removeprefix("python -m rppnets.data: "), KMNIST,
                          [Path("data"), Path("data/KMNIST/raw")])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_without_network_train_py_exits_2_with_one_line(no_network, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "src" / "train.py"), "data=mnist",
                             f"data.root={tmp_path / 'empty'}", f"hydra.run.dir={tmp_path / 'run'}"],
                            cwd=tmp_path, env=os.environ | no_network, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stdout == "", result.stdout + result.stderr
    (line,) = result.stderr.splitlines()  # no traceback
    assert line.startswith(f"No data: data.root='{tmp_path / 'empty'}': downloading MNIST's "), line
    check_without_network(line, MNIST, [tmp_path / "empty", tmp_path / "empty" / "MNIST" / "raw"])
    assert list(tmp_path.iterdir()) == []  # no run folder, nothing downloaded


def test_make_data_checks_another_data_set(idx_root, capsys):
    dataset, root = idx_root
    data_main(["--dataset", dataset.key, "--root", str(root)])
    folder = root / dataset.torchvision_class / "raw"
    assert capsys.readouterr().out == (f"{dataset.name}: the four official files are in data.root "
                                       f"({folder}), MD5 sums checked\n")


def test_a_download_fetches_the_data_sets_own_files_into_its_folder(tmp_path, monkeypatch):
    fetched = []

    def fake_download(url, root, filename, md5):
        fetched.append((url, md5))
        write_idx(Path(root) / filename, np.zeros((1, 28, 28) if "images" in url else 1, dtype=np.uint8))

    monkeypatch.setattr("torchvision.datasets.utils.download_url", fake_download)
    dm = IDXDataModule("kmnist", root=str(tmp_path), download=True)
    dm.prepare_data()
    assert dm.source.folder == tmp_path / "KMNIST" / "raw" and dm.source.origin == "a download"
    mirror = KMNIST.torchvision().mirrors[0]
    assert fetched == [(mirror + name, KMNIST.archive_md5[name]) for name in KMNIST.files]
    assert sorted(p.name for p in dm.source.folder.iterdir()) == sorted(KMNIST.files)


# CIFAR-10 in torchvision's own format: pickled batches of (N, 3072) uint8 rows (red, green, blue planes).
CIFAR_BATCH = TRAIN_ROWS // 5


@pytest.fixture()
def cifar_root(tmp_path, monkeypatch):
    """data/cifar-10-batches-py/ with five training batches and a test batch of marked images, taken as official."""
    folder = tmp_path / "root" / CIFAR10.base_folder
    folder.mkdir(parents=True)
    images = {"train": marked_images(TRAIN_ROWS, TRAIN_FILE, (3072,)),
              "test": marked_images(TEST_ROWS, TEST_FILE, (3072,))}
    batches = {f"data_batch_{i + 1}": (images["train"][i * CIFAR_BATCH:(i + 1) * CIFAR_BATCH],
                                       np.arange(i * CIFAR_BATCH, (i + 1) * CIFAR_BATCH) % 10) for i in range(5)}
    batches["test_batch"] = (images["test"], (np.arange(TEST_ROWS) + TEST_FILE) % 10)
    md5 = {}
    for name, (data, labels) in batches.items():
        (folder / name).write_bytes(pickle.dumps({"data": data, "labels": labels.tolist()}))
        md5[name] = hashlib.md5((folder / name).read_bytes()).hexdigest()
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}))
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names",
                                          "md5": hashlib.md5((folder / "batches.meta").read_bytes()).hexdigest()})
    return tmp_path / "root", images


def cifar(root, *overrides) -> TorchvisionDataModule:
    cfg = compose_train(["data=cifar10", f"data.root={root}", "data.download=false", "data.val_size=20",
                         *overrides])
    return instantiate(cfg.data)


def test_cifar10_by_its_torchvision_class_flattened_with_the_same_split(cifar_root, capsys):
    root, images = cifar_root
    dm = cifar(root, "data.train_size=60")
    assert (dm.name, dm.input_shape, dm.in_features, dm.num_classes) == ("CIFAR-10", (3, 32, 32), 3072, 10)
    dm.prepare_data()
    dm.setup()
    order = torch.randperm(TRAIN_ROWS, generator=torch.Generator().manual_seed(0)).tolist()
    assert rows_of(dm.x_val, TRAIN_FILE) == order[:20] and rows_of(dm.x_train, TRAIN_FILE) == order[20:80]
    assert rows_of(dm.x_test, TEST_FILE) == list(range(TEST_ROWS))
    # each row is the image's three planes, as torchvision's tensors hold them, in [0, 1]
    assert torch.equal(dm.x_test, torch.from_numpy(images["test"]).float() / 255)
    assert dm.y_train.tolist() == [row % 10 for row in order[20:80]] and dm.x_train.dtype == torch.float32
    assert capsys.readouterr().out == (f"Data: CIFAR-10 from torchvision.datasets.cifar.CIFAR10 in {root}; "
                                       "60 training, 20 validation, 30 test images\n")
    # the model of the run is built for the data: 3,072 inputs, 10 classes
    net = MLP(kind="rpp", width=4, k=3, in_features=dm.in_features, num_classes=dm.num_classes)
    x, y = next(iter(dm.train_dataloader()))
    torch.nn.functional.cross_entropy(net(x), y).backward()


def test_cifar10_whose_declared_shape_does_not_fit_is_refused(cifar_root):
    dm = cifar(cifar_root[0], "data.input_shape=[1,32,32]")
    with pytest.raises(CorruptDataError, match=r"CIFAR-10: image 0 has the shape \(3, 32, 32\), expected "
                                               r"input_shape=\[1, 32, 32\]"):
        dm.setup()


def test_a_validation_split_as_large_as_the_training_set_is_refused(cifar_root):
    with pytest.raises(ValueError, match=f"val_size={TRAIN_ROWS} is invalid; allowed: 0 to {TRAIN_ROWS - 1} "
                                         f"\\(the CIFAR-10 training set has {TRAIN_ROWS} images\\)"):
        TorchvisionDataModule(CIFAR10, "CIFAR-10", [3, 32, 32], 10, root=str(cifar_root[0]), val_size=TRAIN_ROWS)


def test_a_run_on_a_missing_torchvision_data_set_stops_before_training(tmp_path):
    cfg = compose_train(["data=cifar10", f"data.root={tmp_path / 'nowhere'}", "data.download=false"],
                        output_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match=r"data.root='.*nowhere': torchvision.datasets.cifar.CIFAR10 found no usable "
                                          r"data there \(Dataset not found or corrupted.*Set data.download=true"):
        train(cfg)
    assert not (tmp_path / "run").exists() and not (tmp_path / "nowhere").exists()


@pytest.mark.slow
def test_a_run_on_mnist_trains_and_names_its_data(idx_root, tmp_path, capsys):
    dataset, root = idx_root
    cfg = compose_train([f"data={dataset.key}", f"data.root={root}", "data.download=false", "data.val_size=20",
                         "data.batch_size=32", "trainer.max_epochs=1", "trainer.accelerator=cpu",
                         "~callbacks.progress_bar", "logger=csv", "model=rpp", "model.k=4"],
                        output_dir=tmp_path / "run")
    metrics = train(cfg)
    assert metrics["test/acc"] is not None and metrics["model/params_trainable"] > 0
    assert f"Data: {dataset.name} from data.root" in capsys.readouterr().out


@pytest.mark.slow
def test_a_run_on_cifar10_builds_its_model_for_3072_inputs(cifar_root, tmp_path, capsys):
    cfg = compose_train(["data=cifar10", f"data.root={cifar_root[0]}", "data.download=false", "data.val_size=20",
                         "data.batch_size=32", "trainer.max_epochs=1", "trainer.accelerator=cpu",
                         "~callbacks.progress_bar", "logger=csv", "model=rpp", "model.width=4", "model.k=3"],
                        output_dir=tmp_path / "run")
    metrics = train(cfg)
    assert metrics["model/params_trainable"] == rpp_trainable(3, 4, in_features=3 * 32 * 32, num_classes=10)
    assert "Data: CIFAR-10 from torchvision.datasets.cifar.CIFAR10" in capsys.readouterr().out


def test_the_memory_check_estimates_the_model_for_the_data_sets_inputs(cifar_root, tmp_path, monkeypatch):
    """On CIFAR-10 the first layer takes 3,072 inputs, not Fashion-MNIST's 784: with memory for the one but not the
    other, the run is refused before anything is written."""
    from rppnets import resources
    from rppnets.resources import estimate_training_bytes

    cfg = compose_train(["data=cifar10", f"data.root={cifar_root[0]}", "data.download=false", "data.val_size=20",
                         "trainer.max_epochs=1", "trainer.accelerator=cpu", "~callbacks.progress_bar", "logger=csv",
                         "model=dense", "model.width=2000"], output_dir=tmp_path / "run")
    model = OmegaConf.to_container(cfg.model, resolve=True)
    as_if_784, for_3072 = (estimate_training_bytes(model, cfg.data.batch_size, inputs, 10) for inputs in (784, 3072))
    monkeypatch.setattr(resources, "available_memory_bytes", lambda: (as_if_784 + for_3072) // 2)
    with pytest.raises(ConfigError, match="needs about .* GiB to train"):
        train(cfg)
    assert not (tmp_path / "run").exists()
