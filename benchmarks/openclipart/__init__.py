"""PinCLIP judged on real pictures: the Open Clip Art benchmark (``python benchmarks/openclipart/run.py``).

``split``: the committed train/validation/test split; ``baseline``: the open_clip SigLIP program it is
measured against; ``rows``: what each row of the table trains; ``harness``: training, embedding and scoring
a row, resumable by name; ``report``: the JSON and the Markdown tables.
"""
