import pytest

from training.config import OptimConfig, ScheduleConfig
from training.schedules import lr_at


def test_multistep_matches_fgsm_sdi_110_epochs():
    o, s = OptimConfig(lr=0.1), ScheduleConfig(name="multistep")
    per_epoch, total = 391, 391 * 110
    assert lr_at(99 * per_epoch, total, o, s) == pytest.approx(0.1)
    assert lr_at(100 * per_epoch, total, o, s) == pytest.approx(0.01)
    assert lr_at(105 * per_epoch, total, o, s) == pytest.approx(0.001)


def test_cyclic_triangle():
    o, s = OptimConfig(lr=0.2), ScheduleConfig(name="cyclic", peak=0.5)
    assert lr_at(0, 100, o, s) == 0.0
    assert lr_at(50, 100, o, s) == pytest.approx(0.2)
    assert lr_at(25, 100, o, s) == pytest.approx(0.1)
    assert lr_at(100, 100, o, s) == pytest.approx(0.0)


def test_constant():
    assert lr_at(7, 10, OptimConfig(lr=0.05), ScheduleConfig(name="constant")) == 0.05
