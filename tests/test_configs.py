"""Every config in conf/ composes, and the two dependency lists agree."""

import re
import tomllib
from pathlib import Path

import pytest
from hydra.utils import instantiate

from helpers import CONF_DIR, compose_train

GROUPS = ("data", "model", "trainer", "logger", "callbacks", "network", "experiment")
ROOT = Path(__file__).resolve().parents[1]


def options(group):
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_config_composes(group, option, tmp_path):
    cfg = compose_train([f"{group}={option}"], output_dir=tmp_path)
    assert cfg.model._target_ == "rppnets.models.MLP"
    if group in ("model", "network"):
        instantiate(cfg.model)  # the network it describes can be built


def test_network_configs_match_the_figure(tmp_path):
    def model(network):
        return compose_train([f"network={network}"], output_dir=tmp_path).model

    assert (model("rpp").kind, model("rpp").width, model("rpp").k, model("rpp").bias) == ("rpp", 10, 100, "full")
    assert model("rpp_nobias").bias == "none"
    assert (model("dense_wide").width, model("dense_narrow").width) == (1000, 10)
    assert model("softmax").depth == 0


def pins_in_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return set(project["dependencies"]) | set(project["optional-dependencies"]["test"])


def test_environment_yml_pins_the_same_packages_as_pyproject():
    text = (ROOT / "environment.yml").read_text()
    pip_section = text.split("- pip:", 1)[1]
    pinned = set(re.findall(r"^\s+- ([A-Za-z0-9_.-]+==[^\s#]+)", pip_section, flags=re.M))
    assert pinned == pins_in_pyproject()
    assert all("==" in pin for pin in pinned)
