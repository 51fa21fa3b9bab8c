"""Every matrix product on the EM path asks for full float32 precision (accelerators
otherwise default to TF32), unless the user trades it away with matmul_precision."""

import re

import jax
import numpy as np
import pytest

import jaxgmm

X = np.random.default_rng(0).normal(size=(300, 5)).astype(np.float32)


def _dot_precisions(lowered_text: str) -> set[str]:
    """The precision of every dot_general in a lowered (StableHLO) program."""
    return set(re.findall(r"dot_general.*?precision = \[(\w+), \w+\]", lowered_text))


@pytest.mark.parametrize("covariance_type", jaxgmm.COVARIANCE_TYPES)
def test_fit_program_requests_highest_precision(covariance_type):
    text = (
        jax.jit(lambda x: jaxgmm.fit(x, 3, covariance_type=covariance_type).params.means)
        .lower(X)
        .as_text()
    )
    assert _dot_precisions(text) == {"HIGHEST"}


def test_matmul_precision_default_is_passed_through():
    text = jax.jit(lambda x: jaxgmm.fit(x, 3, matmul_precision="default").params.means)
    assert "DEFAULT" in _dot_precisions(text.lower(X).as_text())


def test_prediction_programs_request_highest_precision():
    params = jaxgmm.fit(X, 3, max_iter=2).params
    text = jax.jit(lambda x: jaxgmm.predict_proba(params, x)).lower(X).as_text()
    assert _dot_precisions(text) == {"HIGHEST"}


def test_unknown_matmul_precision_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match="matmul_precision must be one of"):
        jaxgmm.fit(X, 2, matmul_precision="tf32")
