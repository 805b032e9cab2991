"""Schedules are pure functions of the step, with the documented shapes."""

import math

import pytest

from engine import recipe
from engine.schedules import loss_at, lr_factor, pretrain_at, ramp_value, random_warp_at


def _sched(text: str):
    return recipe.loads(text)


def test_constant_is_dfl():
    r = _sched("")
    assert all(lr_factor(r.schedule, s, 100) == 1.0 for s in (0, 1, 99, 10**6))


def test_warmup_then_flat():
    r = _sched("[schedule]\nlr = 'warmup'\nwarmup_steps = 4\n")
    assert [lr_factor(r.schedule, s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_endpoints_and_midpoint():
    r = _sched("[schedule]\nlr = 'cosine'\nwarmup_steps = 10\ndecay_steps = 100\nmin_lr_ratio = 0.1\n")
    s = r.schedule
    assert lr_factor(s, 9) == 1.0
    assert lr_factor(s, 10) == pytest.approx(1.0)
    assert lr_factor(s, 60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(s, 110) == pytest.approx(0.1) and lr_factor(s, 10**6) == pytest.approx(0.1)
    # decay length defaults to the rest of target_iter
    r2 = _sched("[schedule]\nlr = 'cosine'\n")
    assert lr_factor(r2.schedule, 50, target_iter=100) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_ramps_switch_and_linear():
    r = _sched("[[schedule.ramp]]\nterm = 'gan_power'\nstart = 100\nend = 100\nend_value = 0.1\n"
               "[[schedule.ramp]]\nterm = 'face_style_power'\nstart = 0\nend = 10\nstart_value = 10.0\nend_value = 0.0\n")
    gan, style = r.schedule.ramp
    assert ramp_value(gan, 99) == 0.0 and ramp_value(gan, 100) == 0.1
    assert ramp_value(style, 5) == pytest.approx(5.0)
    l = loss_at(r.loss, r.schedule, 100)
    assert l.gan_power == 0.1 and l.face_style_power == 0.0 and l.mse_weight == r.loss.mse_weight


def test_random_warp_off_and_pretrain_phase():
    r = _sched("[data]\npretrain_faceset = 'x'\n[schedule]\nrandom_warp_off_at = 50\npretrain_until = 20\n")
    assert random_warp_at(True, r.schedule, 49) and not random_warp_at(True, r.schedule, 50)
    assert not random_warp_at(False, r.schedule, 0)
    assert pretrain_at(False, r.schedule, 19) and not pretrain_at(False, r.schedule, 20)
