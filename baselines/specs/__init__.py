"""The baselines' specs (``adbench.spec``), one module per method: params, defaults and the public code's
values, importable without torch.  The methods themselves are ``baselines.<name>``."""
