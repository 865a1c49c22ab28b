"""PinCLIP data: text sources (``sources``) and torch datasets (``dataset``). The training-only data, neighbor
pairs from Pin–Board random walks and held-out evaluation pairs from the logs, is in ``pinclip.training``."""
