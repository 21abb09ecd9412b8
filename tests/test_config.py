"""Config composition, struct-mode errors, `_target_` instantiation and --print-config."""
from __future__ import annotations

import functools
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf.errors import ConfigKeyError

from lrface.config import ConfigError, compose, instantiate, parse_overrides
from tests.conftest import ROOT


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


@pytest.fixture
def exp_dir(tmp_path: Path) -> Path:
    _write(tmp_path / "defaults.yaml", """
        name: ???
        a: 0
        b: 0
        c: 0
        d: 0
        nested: {x: 1, y: 1}
        obj: null
    """)
    _write(tmp_path / "data/one.yaml", """
        a: 1
        b: 1
        nested: {x: 2}
    """)
    _write(tmp_path / "module/two.yaml", """
        base: [defaults.yaml]   # a part may name its own bases; they come first
        b: 2
        c: 2
    """)
    _write(tmp_path / "exp.yaml", """
        base: [defaults.yaml, data/one.yaml, module/two.yaml]
        c: 3
    """)
    return tmp_path


def test_composition_order(exp_dir: Path) -> None:
    cfg = compose("exp", ["d=4"], experiments_dir=exp_dir)
    # defaults < data/one < module/two (whose own base defaults.yaml must not undo data/one) < experiment < CLI
    assert (cfg.a, cfg.b, cfg.c, cfg.d) == (0, 2, 3, 4)
    assert cfg.nested.x == 1 and cfg.nested.y == 1  # module/two re-applied defaults.yaml after data/one
    assert cfg.name == "exp"


def test_later_base_wins_without_rebasing(exp_dir: Path) -> None:
    _write(exp_dir / "exp2.yaml", "base: [defaults.yaml, data/one.yaml]\n")
    cfg = compose("exp2", experiments_dir=exp_dir)
    assert (cfg.a, cfg.b, cfg.nested.x, cfg.nested.y) == (1, 1, 2, 1)


def test_struct_typo_fails_with_hint(exp_dir: Path) -> None:
    with pytest.raises(ConfigKeyError, match="Did you mean: 'nested.x'|Did you mean: 'x'"):
        compose("exp", ["nested.xx=3"], experiments_dir=exp_dir)


def test_plus_adds_a_key_and_none_is_null(exp_dir: Path) -> None:
    cfg = compose("exp", ["+nested.z=5", "a=None", "b=null", "c=bf16-mixed", "d=1e-05"], experiments_dir=exp_dir)
    assert cfg.nested.z == 5
    assert cfg.a is None and cfg.b is None
    assert cfg.c == "bf16-mixed" and cfg.d == pytest.approx(1e-5)


def test_bad_override_and_unknown_experiment(exp_dir: Path) -> None:
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])
    with pytest.raises(ConfigError, match="Experiments: exp"):
        compose("nope", experiments_dir=exp_dir)


def test_circular_base(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", "base: [b.yaml]\n")
    _write(tmp_path / "b.yaml", "base: [a.yaml]\n")
    with pytest.raises(ConfigError, match="circular"):
        compose("a", experiments_dir=tmp_path)


class Leaf:
    def __init__(self, value: int = 0):
        self.value = value


class Node:
    def __init__(self, child, items, factory, scale: float = 1.0):
        self.child, self.items, self.factory, self.scale = child, items, factory, scale


def test_instantiate_recursive_partial_and_errors() -> None:
    cfg = {
        "_target_": "tests.test_config.Node",
        "child": {"_target_": "tests.test_config.Leaf", "value": 3},
        "items": [{"_target_": "tests.test_config.Leaf", "value": 4}, {"plain": 1}],
        "factory": {"_target_": "tests.test_config.Leaf", "_partial_": True},
    }
    node = instantiate(cfg, scale=2.0)
    assert isinstance(node.child, Leaf) and node.child.value == 3
    assert node.items[0].value == 4 and node.items[1] == {"plain": 1}
    assert isinstance(node.factory, functools.partial) and node.factory(value=7).value == 7
    assert node.scale == 2.0
    with pytest.raises(ConfigError, match="no attribute 'Missing'"):
        instantiate({"_target_": "tests.test_config.Missing"})
    with pytest.raises(ConfigError, match="unexpected keyword argument 'valu'"):
        instantiate({"_target_": "tests.test_config.Leaf", "valu": 1})


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml") if p.stem != "defaults"))
def test_every_experiment_composes(name: str) -> None:
    cfg = compose(name)
    if cfg.pipeline:  # a pipeline names experiments that compose themselves
        for step in cfg.pipeline.values():
            assert compose(step.experiment).name == step.experiment
    elif cfg.stage == "report":  # trains nothing: one report callable (lightning_modules/report_runner.py)
        assert cfg.report._target_, f"{name}: stage 'report' needs a report"
    else:
        assert cfg.data._target_ and cfg.module._target_, f"{name}: needs a data and a module"
    assert cfg.name == name


def test_print_config_prints_resolved_yaml_and_exits(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lrface.cli", "run", "arcface_synthetic", "module.optimizer.lr=0.123",
         f"run_root={tmp_path}/runs", "--print-config"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    assert "lr: 0.123" in out
    assert "root: data/synthetic/quickstart-0/ms1m" in out  # interpolation resolved
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_cli_typo_is_a_message_not_a_traceback() -> None:
    done = subprocess.run([sys.executable, "-m", "lrface.cli", "run", "quickstart", "trainer.max_epoch=3",
                           "--print-config"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2
    assert "Did you mean one of: 'max_epochs'" in done.stderr and "Traceback" not in done.stderr
