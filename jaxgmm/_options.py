"""The fit options in one place: defaults and checks for fit, fit_many, the estimator and CLI."""

from __future__ import annotations

import dataclasses

from jaxgmm._validation import check_chunk_size, check_nan_policy, check_options

MATMUL_PRECISIONS = ("highest", "high", "default")
ON_INTERRUPT = ("raise", "return")


@dataclasses.dataclass(frozen=True)
class FitOptions:
    """Options of an EM fit shared by every entry point (frozen, hashable).

    Attributes:
        covariance_type: ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``.
        tol: stop when the mean log-likelihood per point changes by less than this.
        reg_covar: non-negative value added to every covariance's diagonal.
        max_iter: maximum EM iterations per restart.
        n_init: restarts; the best final lower bound wins.
        init: ``"kmeans"``, ``"k-means++"``, ``"random"`` or ``"random_from_data"``.
        chunk_size: rows per E-step chunk, or None for ~2 MiB intermediates.
        matmul_precision: precision of the matrix products on the EM path:
            ``"highest"`` (full float32, the default), ``"high"`` or ``"default"``
            (on recent NVIDIA GPUs float32 products then run in TF32, about 10
            mantissa bits: faster, but no longer scikit-learn's answers to 1e-6).
        on_interrupt: what a KeyboardInterrupt (Ctrl-C) during the EM iterations does:
            ``"raise"`` (the default) closes progress bars and raises it;
            ``"return"`` returns the last finished iteration's parameters, with
            ``Status.INTERRUPTED`` unless a restart had finished.
        nan_policy: what NaN entries of X mean: ``"raise"`` (the default) refuses
            them; ``"omit"`` drops the rows that hold any, with a warning giving their
            count; ``"marginalize"`` treats them as missing at random and runs exact
            EM for incomplete data (each row's likelihood is the marginal density of
            its observed entries; see :mod:`jaxgmm._incomplete`).
    """

    covariance_type: str = "full"
    tol: float = 1e-3
    reg_covar: float = 1e-6
    max_iter: int = 100
    n_init: int = 1
    init: str = "kmeans"
    chunk_size: int | None = None
    matmul_precision: str = "highest"
    on_interrupt: str = "raise"
    nan_policy: str = "raise"

    def check(self, n_components: int) -> FitOptions:
        """Raise ValueError/TypeError (with a fix) unless every option is valid; -> self."""
        check_options(
            n_components,
            self.covariance_type,
            self.tol,
            self.reg_covar,
            self.max_iter,
            self.n_init,
            self.init,
        )
        check_chunk_size(self.chunk_size)
        check_nan_policy(self.nan_policy)
        if self.matmul_precision not in MATMUL_PRECISIONS:
            raise ValueError(
                f"matmul_precision must be one of {MATMUL_PRECISIONS}, got "
                f"{self.matmul_precision!r}."
            )
        if not isinstance(self.on_interrupt, str) or self.on_interrupt not in ON_INTERRUPT:
            raise ValueError(
                f"on_interrupt must be one of {ON_INTERRUPT}, got {self.on_interrupt!r}: "
                '"raise" stops a fit on Ctrl-C with KeyboardInterrupt, "return" returns the '
                "parameters of the last finished iteration."
            )
        return self


DEFAULTS = FitOptions()
