"""The run's console: the libraries' known harmless messages are dropped by their text, and nothing else is."""

import logging
import warnings

from rppnets.console import silence_known_noise


def test_known_warnings_are_dropped_and_others_kept():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_known_noise()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
        warnings.warn("The number of training batches (40) is smaller than the logging interval ...", UserWarning)
        warnings.warn("something else is deprecated", FutureWarning)
    assert [str(w.message) for w in caught] == ["something else is deprecated"]


def test_known_log_lines_are_dropped_and_others_kept(caplog):
    silence_known_noise()
    silence_known_noise()  # idempotent: one filter per logger
    logger = logging.getLogger("torch.utils.cpp_extension")
    assert len(logger.filters) == 1
    with caplog.at_level(logging.INFO):
        logger.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local")
        logger.warning("Error building extension")
        logging.getLogger("pytorch_lightning.utilities.rank_zero").info("💡 Tip: For seamless cloud logging, ...")
        logging.getLogger("pytorch_lightning.utilities.rank_zero").info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["Error building extension", "GPU available: False, used: False"]
