"""PinCLIP: the multimodal Pin embedding. The library — model and losses (``pinclip.models``,
``pinclip.losses``), loading a trained run and embedding pins with it (``pinclip.loading``,
``pinclip.embedder``), publishing and candidate generation — never imports the training program,
``pinclip.training``.

Kept import-free so that reading published embeddings does not load torch; use
``from pinclip.models import create_model``.
"""
