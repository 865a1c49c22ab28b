"""PinCLIP's training program, above the library (``pinclip``), which never imports it: contrastive training
(``train``), tower pretraining (``pretrain``), Recall@K evaluation (``evaluate``), the ablations
(``ablations``), alignment filtering of training pairs (``alignment``), and the training-only data:
neighbor pairs from Pin–Board random walks (``neighbors``) and held-out evaluation pairs (``engaged``)."""
