"""Faults at random moments of a real job's life (tests/chaos.py): every round's records equal an uninterrupted run's."""

import os

import pytest

from chaos import Chaos, can_fill_disk

# CI runs a few rounds; `make chaos ROUNDS=500` many more. A failing round is reproduced by its seed:
# `python tests/chaos.py --seed <seed> --rounds 1`.
ROUNDS = int(os.environ.get("CHAOS_ROUNDS", "8"))
SEED = int(os.environ.get("CHAOS_SEED", "0"))


@pytest.fixture(scope="module")
def chaos(tmp_path_factory, fake_root):
    work = tmp_path_factory.mktemp("chaos")
    runner = Chaos(fake_root, work, disk=can_fill_disk(work / "mount-probe"))
    runner.run_reference()
    return runner


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(SEED, SEED + ROUNDS))
def test_random_faults_leave_the_records_of_an_uninterrupted_run(chaos, seed):
    problems = chaos.round(seed)
    assert not problems, "\n".join(problems)
