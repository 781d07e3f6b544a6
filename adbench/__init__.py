"""Shared machinery of the FOD reproducibility suite.

Modules, one job each: ``embedded`` (the offline dataset generator), ``datasets`` (reading MVTec-style
layouts), ``download`` (fetching and verifying archives), ``backbone`` (frozen ImageNet feature
extractors), ``features`` (the per-split feature cache), ``protocol`` (the fit/predict contract every
method implements), ``registry`` (config name -> method class), ``metrics``, ``evaluate`` (one run, end to
end), ``tracking`` (MLflow), ``tables`` (the paper's tables).
"""
