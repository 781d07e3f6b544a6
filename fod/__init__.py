"""FOD, "Focus the Discrepancy" (Yao et al., ICCV 2023), on cached frozen-backbone features.

Modules: ``config`` (params, variant presets), ``tokens`` (feature maps -> tokens), ``prior`` (the RBF
target correlations, separable), ``model`` (the per-level transformer), ``losses`` (Eq. 3, 6-11 and the
minimax objective), ``reference`` (mean and coreset reference features), ``scoring`` (Eq. 12, maps),
``method`` (the ``FOD`` AnomalyMethod: training loop, prediction, checkpoints), ``ablations`` (Table 4).
"""
