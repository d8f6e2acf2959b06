"""Which rows train, validate and test, and in what order training sees them: checked row by row.

The files here carry their identity in the pixels (a file marker and the row number), so every row a split or a
batch serves can be traced back to the file and the row it came from.
"""

import gzip
import hashlib
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import write_idx

from rppnets.data import (FASHION_MNIST, CorruptDataError, DataNotFoundError, DataNotReadableError,
                          FashionMNISTDataModule, InMemoryBatches, load_split)

TRAIN_ROWS, TEST_ROWS = 300, 50
TRAIN_FILE, TEST_FILE = 1, 2  # pixel (0, 0) of every image of each file


@pytest.fixture(scope="module")
def traced_root(tmp_path_factory):
    """Fashion-MNIST-format files whose image pixels (0, 0), (0, 1), (0, 2) hold the file and the row number."""
    root = tmp_path_factory.mktemp("traced")
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, marker, n in (("train", TRAIN_FILE, TRAIN_ROWS), ("t10k", TEST_FILE, TEST_ROWS)):
        rows = np.arange(n)
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        images[:, 0, 0], images[:, 0, 1], images[:, 0, 2] = marker, rows // 256, rows % 256
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", ((rows + marker) % 10).astype(np.uint8))
    return root


def trace(x: torch.Tensor) -> tuple[list[int], list[int]]:
    """(file marker, row number) of each image of a batch of flattened images in [0, 1]."""
    pixels = (x[:, :3] * 255).round().long()
    return pixels[:, 0].tolist(), (pixels[:, 1] * 256 + pixels[:, 2]).tolist()


def rows_of(x: torch.Tensor, marker: int = TRAIN_FILE) -> list[int]:
    markers, rows = trace(x)
    assert set(markers) <= {marker}, f"rows from file {set(markers) - {marker}}, expected only file {marker}"
    return rows


def data_module(root, seed=0, val_size=40, train_size=None, batch_size=32) -> FashionMNISTDataModule:
    dm = FashionMNISTDataModule(root=str(root), batch_size=batch_size, val_size=val_size, train_size=train_size,
                                eval_batch_size=16, seed=seed, system_dir=None, download=False, verify_md5=False)
    dm.prepare_data()
    dm.setup()
    return dm


@pytest.mark.parametrize("seed", [0, 7])
def test_validation_rows_come_from_the_training_file_apart_from_the_training_rows(traced_root, seed):
    dm = data_module(traced_root, seed=seed)
    val, train = rows_of(dm.x_val), rows_of(dm.x_train)
    assert len(val) == len(set(val)) == 40 and len(train) == len(set(train)) == TRAIN_ROWS - 40
    assert not set(val) & set(train)
    assert sorted(val + train) == list(range(TRAIN_ROWS))  # every training image is used, once
    assert val != sorted(val)  # a seeded draw, not the file's first rows
    # labels travel with their images
    assert dm.y_val.tolist() == [(row + TRAIN_FILE) % 10 for row in val]
    assert dm.y_train.tolist() == [(row + TRAIN_FILE) % 10 for row in train]


def test_the_test_set_is_the_whole_official_test_file_in_order(traced_root):
    dm = data_module(traced_root)
    assert rows_of(dm.x_test, TEST_FILE) == list(range(TEST_ROWS))
    assert dm.y_test.tolist() == [(row + TEST_FILE) % 10 for row in range(TEST_ROWS)]
    served = torch.cat([x for x, _ in dm.test_dataloader()])
    assert rows_of(served, TEST_FILE) == list(range(TEST_ROWS))


def test_the_split_depends_on_the_seed_only(traced_root):
    first, again, other = (data_module(traced_root, seed=seed) for seed in (3, 3, 4))
    assert rows_of(first.x_val) == rows_of(again.x_val) and rows_of(first.x_train) == rows_of(again.x_train)
    assert set(rows_of(first.x_val)) != set(rows_of(other.x_val))


@pytest.mark.parametrize("train_size", [1, 100, TRAIN_ROWS - 40, 10_000])
def test_a_training_subset_leaves_the_validation_rows_alone(traced_root, train_size):
    full, subset = data_module(traced_root), data_module(traced_root, train_size=train_size)
    val, train = rows_of(subset.x_val), rows_of(subset.x_train)
    assert val == rows_of(full.x_val)  # quick runs validate on the rows full runs validate on
    assert len(train) == min(train_size, TRAIN_ROWS - 40) and len(set(train)) == len(train)
    assert not set(train) & set(val)
    assert train == rows_of(full.x_train)[:train_size]  # the first train_size of the remaining rows


def test_no_validation_split_trains_on_every_training_row(traced_root):
    dm = data_module(traced_root, val_size=0)
    assert len(dm.x_val) == 0 and sorted(rows_of(dm.x_train)) == list(range(TRAIN_ROWS))


def epochs_of(dm: FashionMNISTDataModule, epochs: int = 3) -> list[list[int]]:
    """The training rows in the order batches serve them, for `epochs` epochs of one data loader."""
    loader = dm.train_dataloader()
    return [rows_of(torch.cat([x for x, _ in loader])) for _ in range(epochs)]


def test_training_order_changes_every_epoch_and_with_the_seed_and_repeats_for_the_same_seed(traced_root):
    def positions(seed: int) -> list[list[int]]:
        """Each epoch's order as positions in the stored training rows (the split differs between seeds)."""
        dm = data_module(traced_root, seed=seed)
        where = {row: position for position, row in enumerate(rows_of(dm.x_train))}
        return [[where[row] for row in order] for order in epochs_of(dm)]

    orders, again, other = positions(0), positions(0), positions(1)
    for order in orders + other:
        assert sorted(order) == list(range(TRAIN_ROWS - 40))  # each epoch serves every training row once
        assert order != sorted(order)  # shuffled
    assert len({tuple(order) for order in orders}) == 3  # a new order every epoch
    assert orders == again  # the same seed: the same orders, epoch by epoch
    for epoch, (mine, theirs) in enumerate(zip(orders, other)):
        assert mine != theirs, epoch  # another seed: another order in every epoch


def test_a_fresh_loader_continues_the_order_of_the_data_module(traced_root):
    # Lightning may ask for the loader again (reload_dataloaders_every_n_epochs): the order must go on, not restart
    dm, reference = data_module(traced_root), epochs_of(data_module(traced_root), epochs=2)
    first = rows_of(torch.cat([x for x, _ in dm.train_dataloader()]))
    second = rows_of(torch.cat([x for x, _ in dm.train_dataloader()]))
    assert [first, second] == reference


def test_validation_and_test_batches_are_served_in_stored_order(traced_root):
    dm = data_module(traced_root)
    for loader in (dm.val_dataloader(), dm.val_dataloader()):
        assert rows_of(torch.cat([x for x, _ in loader])) == rows_of(dm.x_val)
    assert [len(x) for x, _ in dm.val_dataloader()] == [16, 16, 8]


def test_batches_have_the_batch_size_and_labels_match_images(traced_root):
    dm = data_module(traced_root, batch_size=64)
    batches = list(dm.train_dataloader())
    assert [len(x) for x, _ in batches] == [64, 64, 64, 64, 4] and len(dm.train_dataloader()) == 5
    for x, y in batches:
        assert y.tolist() == [(row + TRAIN_FILE) % 10 for row in rows_of(x)]


def test_a_loader_resumed_mid_epoch_serves_the_batches_it_would_have_served(traced_root):
    dm = data_module(traced_root)
    loader = dm.train_dataloader()
    next(iter(loader))  # epoch 0 is the generator's first draw; take epoch 1 after it
    iterator = iter(loader)
    served = [rows_of(next(iterator)[0]) for _ in range(3)]
    saved_loader, saved_module = loader.state_dict(), dm.state_dict()
    rest = [rows_of(x) for x, _ in iterator]
    following = rows_of(torch.cat([x for x, _ in loader]))

    resumed = data_module(traced_root)
    resumed.load_state_dict(saved_module)
    loader = resumed.train_dataloader()
    loader.load_state_dict(saved_loader)
    assert saved_loader["served"] == 3
    assert [rows_of(x) for x, _ in loader] == rest  # the rest of the epoch, nothing twice
    assert rows_of(torch.cat([x for x, _ in loader])) == following  # and the next epoch as before
    assert sorted(sum(served + rest, [])) == sorted(rows_of(dm.x_train))


def test_state_between_epochs_starts_the_next_epoch_afresh():
    x, y = torch.arange(10.0)[:, None], torch.arange(10)
    batches = InMemoryBatches(x, y, batch_size=4, shuffle=True, seed=5)
    list(batches)
    state = batches.state_dict()
    assert state["served"] == 0  # a finished epoch: nothing to skip
    nxt = torch.cat([b for _, b in batches])
    again = InMemoryBatches(x, y, batch_size=4, shuffle=True, seed=99)
    again.load_state_dict(state)
    assert torch.equal(torch.cat([b for _, b in again]), nxt)


@pytest.mark.parametrize("rows, batch_size, world_size", [(10, 4, 2), (11, 5, 3), (8, 8, 2)])
def test_processes_together_step_on_the_batches_of_one_process(rows, batch_size, world_size):
    x, y = torch.arange(float(rows))[:, None], torch.arange(rows)
    one = [b.tolist() for _, b in InMemoryBatches(x, y, batch_size, shuffle=True, seed=3)]
    shares = [[b.tolist() for _, b in InMemoryBatches(x, y, batch_size, shuffle=True, seed=3, rank=rank,
                                                      world_size=world_size)] for rank in range(world_size)]
    for batch, parts in enumerate(zip(*shares)):
        assert sum(parts, []) == one[batch]  # each row of the global batch on exactly one process
    assert all(len(part) == len(one) for part in shares)


def test_a_fresh_loader_has_served_nothing_and_draws_from_seed_0_by_default():
    x, y = torch.arange(10.0)[:, None], torch.arange(10)
    batches = InMemoryBatches(x, y, batch_size=4, shuffle=True)
    state = batches.state_dict()
    assert state["served"] == 0 and torch.equal(state["generator"], torch.Generator().manual_seed(0).get_state())
    seeded = InMemoryBatches(x, y, batch_size=4, shuffle=True, seed=0)
    assert [b.tolist() for _, b in batches] == [b.tolist() for _, b in seeded]


def test_a_loader_resumed_after_its_first_batch_serves_the_rest_of_that_epoch():
    x, y = torch.arange(10.0)[:, None], torch.arange(10)
    batches = InMemoryBatches(x, y, batch_size=4, shuffle=True, seed=2)
    iterator = iter(batches)
    first = next(iterator)[1].tolist()
    state = batches.state_dict()
    rest = [b.tolist() for _, b in iterator]
    resumed = InMemoryBatches(x, y, batch_size=4, shuffle=True, seed=77)
    resumed.load_state_dict(state)
    assert state["served"] == 1 and [b.tolist() for _, b in resumed] == rest
    assert sorted(first + sum(rest, [])) == list(range(10))


def test_each_ddp_process_of_a_data_module_takes_its_share_of_every_global_batch(traced_root):
    one = [rows_of(x) for x, _ in data_module(traced_root).train_dataloader()]
    shares = []
    for rank in range(2):
        dm = data_module(traced_root)
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)  # what Lightning sets under DDP
        shares.append([rows_of(x) for x, _ in dm.train_dataloader()])
    assert [len(part) for part in shares[0]] == [16] * 8 + [2] and [len(part) for part in shares[1]] == [16] * 8 + [2]
    assert [a + b for a, b in zip(*shares)] == one


def test_global_batches_are_split_into_equal_shares_with_the_remainder_last():
    x, y = torch.arange(11.0)[:, None], torch.arange(11)
    sizes = [[len(b) for _, b in InMemoryBatches(x, y, 5, shuffle=False, rank=rank, world_size=3)] for rank in range(3)]
    assert sizes == [[2, 2, 1], [2, 2, 0], [1, 1, 0]]  # batches of 5, 5 and 1 rows
    rows = [[b.tolist() for _, b in InMemoryBatches(x, y, 5, shuffle=False, rank=rank, world_size=3)]
            for rank in range(3)]
    assert rows[0][1] == [5, 6] and rows[1][1] == [7, 8] and rows[2][1] == [9]


def test_a_split_whose_files_do_not_fit_is_refused_by_name(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((5, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(4, dtype=np.uint8))
    with pytest.raises(CorruptDataError, match=f"^{tmp_path}: 5 t10k images but 4 labels$"):
        load_split(tmp_path, train=False, verify_md5=False)
    with pytest.raises(DataNotReadableError, match="train-images-idx3-ubyte.gz cannot be read: No such file"):
        load_split(tmp_path, train=True, verify_md5=False)  # missing, not corrupt


def test_setup_puts_every_split_on_the_trainers_device_once(traced_root):
    dm = FashionMNISTDataModule(root=str(traced_root), val_size=40, system_dir=None, download=False, verify_md5=False)
    dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("meta")))  # stands in for a GPU
    dm.prepare_data()
    dm.setup()
    tensors = (dm.x_train, dm.y_train, dm.x_val, dm.y_val, dm.x_test, dm.y_test)
    assert {t.device.type for t in tensors} == {"meta"}
    dm.setup("test")  # Lightning calls setup once per stage: the data stay as they are
    assert all(a is b for a, b in zip((dm.x_train, dm.y_train, dm.x_val, dm.y_val, dm.x_test, dm.y_test), tensors))


def content_md5(path) -> str:
    with gzip.open(path, "rb") as file:
        return hashlib.md5(file.read()).hexdigest()


@pytest.mark.parametrize("official", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                                      "t10k-labels-idx1-ubyte"])
def test_every_file_is_checked_against_its_official_md5(traced_root, monkeypatch, official):
    raw = traced_root / "FashionMNIST" / "raw"
    for name in FASHION_MNIST.content_md5:  # the traced files pass as official, all but one
        if name != official:
            monkeypatch.setitem(FASHION_MNIST.content_md5, name, content_md5(raw / f"{name}.gz"))
    dm = FashionMNISTDataModule(root=str(traced_root), val_size=40, system_dir=None, verify_md5=True)
    with pytest.raises(CorruptDataError, match=f"{official}.gz is corrupt: MD5 of its content"):
        dm.setup()
    if official.startswith("train"):
        with pytest.raises(CorruptDataError, match=f"{official}.gz is corrupt"):
            load_split(raw, train=True)  # checked by default


def test_the_data_line_says_whether_the_md5_sums_were_checked(traced_root, monkeypatch, capsys):
    data_module(traced_root)
    line = "MD5 check off (data.verify_md5=false); 260 training, 40 validation, 50 test images"
    assert line in capsys.readouterr().out
    raw = traced_root / "FashionMNIST" / "raw"
    for name in FASHION_MNIST.content_md5:
        monkeypatch.setitem(FASHION_MNIST.content_md5, name, content_md5(raw / f"{name}.gz"))
    FashionMNISTDataModule(root=str(traced_root), val_size=40, system_dir=None, verify_md5=True).setup()
    assert "official MD5 sums checked; 260 training" in capsys.readouterr().out


@pytest.mark.parametrize("where", ["root", "system_dir"])
def test_setup_finds_files_another_process_downloaded(traced_root, tmp_path, monkeypatch, where):
    # under DDP prepare_data downloads on one process per node; the others find the files when they set up
    monkeypatch.chdir(tmp_path)  # no data/ here
    folder = tmp_path / "files"
    root, system_dir = (str(folder), None) if where == "root" else (None, str(folder))
    dm = FashionMNISTDataModule(root=root, val_size=40, system_dir=system_dir, download=True, verify_md5=False)
    assert dm.source is None  # nothing there yet: to be downloaded
    with pytest.raises(DataNotFoundError):
        dm.setup()  # still nothing: named, not a crash
    shutil.copytree(traced_root / "FashionMNIST" / "raw", folder)
    dm.setup()
    assert dm.source.folder == folder and len(rows_of(dm.x_train)) == TRAIN_ROWS - 40
