"""Held-out comparison of schedulers against the teacher (the paper's Table 1 / Figure 4 protocol).

``DEFAULT_MAX_EVALUATIONS``: the coordinate searches' default budget (candidate paths scored at
most by ``olss-ft`` and the tuned peers), what ``default_methods(max_evaluations=...)`` uses.
``DEFAULT_MODEL_METHOD``: the method `olss_jax.fit_olss` runs when given a model (the default
whose safeguards `paired_difference` checks against the methods it must not lose to).
"""
from olss_jax._src.compare import (
    Comparison,
    ComparisonModel,
    FitContext,
    PEERS,
    analytic_comparison_model,
    baseline_for,
    default_methods,
    draw_noises,
    format_markdown,
    mean_interval,
    paired_difference,
    per_sample_rmse,
    run_comparison,
)
from olss_jax._src.fit_olss import DEFAULT_MAX_EVALUATIONS, DEFAULT_MODEL_METHOD
from olss_jax._src.shipped_models import EMBEDDED_MODELS, embedded_model

__all__ = ["Comparison", "ComparisonModel", "DEFAULT_MAX_EVALUATIONS", "DEFAULT_MODEL_METHOD",
           "EMBEDDED_MODELS",
           "FitContext", "PEERS", "analytic_comparison_model", "baseline_for",
           "default_methods", "draw_noises", "embedded_model", "format_markdown",
           "mean_interval", "paired_difference", "per_sample_rmse", "run_comparison"]
