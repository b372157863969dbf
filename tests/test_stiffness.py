"""The guidance-stiffness measurement: power iteration against an exact eigensolver, and on the toy model."""
from dataclasses import replace

import pytest
import torch

from core.toyworld.stiffness import StepStiffness, along_run, dominant_eigen, linearise


def symmetric(eigenvalues: list[float], seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


@pytest.mark.parametrize("scale", [1.0, 3.0, 7.5])
def test_dominant_eigenvalue_of_linear_denoisers_matches_the_eigensolver(scale):
    cond = symmetric([0.05, 0.1, 0.2, 0.3, 0.5, 0.9], seed=1)     # ignores most of its input
    uncond = symmetric([0.95, 0.9, 0.8, 0.6, 0.4, 0.1], seed=2)   # follows most of it
    x = torch.randn(6, dtype=torch.float64)
    eigenvalue, v = dominant_eigen(linearise(lambda z: cond @ z, x), linearise(lambda z: uncond @ z, x), x, scale,
                                   iterations=200)
    guided = scale * cond - (scale - 1) * uncond
    exact = torch.linalg.eigvalsh(guided)
    expected = exact[exact.abs().argmax()].item()
    assert eigenvalue == pytest.approx(expected, rel=1e-4)
    assert torch.allclose(guided @ v, expected * v, atol=1e-3)


def test_h_lambda_is_the_relative_step_times_one_minus_the_eigenvalue():
    assert StepStiffness(2.0, 1.5, -5.0, 0.9, 0.05).h_lambda == pytest.approx(6.0 * 0.25)


def test_without_guidance_the_guided_jacobian_is_the_conditional_one(toy_engine):
    settings = replace(toy_engine.default_settings(), steps=4, guidance_scale=1.0, seed=0)
    rows = along_run(toy_engine, "a blue triangle on a brown background", settings)
    assert [r.next_sigma for r in rows[:-1]] == [r.sigma for r in rows[1:]] and rows[-1].next_sigma == 0.0
    for row in rows:
        assert row.eigenvalue == pytest.approx(row.cond, abs=1e-3)
