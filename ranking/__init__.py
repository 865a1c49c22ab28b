"""Ranking on TorchRec. Importing the package silences the warnings TorchRec and fbgemm print on every run that
are known and harmless here, each by the exact start of its text (any other warning still shows)."""

import logging
import re
import warnings

# Python warnings
_WARNINGS = (
    # the CPU build registers the lookup under the CPU key and records its gradient inside (an autograd
    # Function): the gradients equal nn.EmbeddingBag's (checked when this filter was added)
    "fbgemm::dense_embedding_codegen_lookup_function: an autograd kernel was not registered to the Autograd "
    "key(s) but we are trying to backprop through it. This may lead to silently incorrect behavior.",
    # the planner's default storage reservation: our tables are tiny next to any device's memory
    "HeuristicalStorageReservation is known to cause issues",
    # TorchRec's own DistributedDataParallel wrapping passes the deprecated argument, not our code
    "`broadcast_buffers` is deprecated. Use `forward_sync_buffers` instead.",
    # TorchRec's sharded tables are ShardedTensors in every state dict (checkpoints, served weights): torch's notice
    # of their deprecation is about TorchRec's storage, not something our code can change
    "Please use DTensor instead and we are deprecating ShardedTensor.",
)
# logging records: logger -> the starts of its known messages
_RECORDS = {
    "torchrec.distributed.utils": ("Sharding Type is data_parallel, caching params will be ignored",),
    "torchrec.distributed.planner.types": ("The topology was constructed directly rather than via TopologyFactory",),
    "torchrec.distributed.planner.storage_reservations": ("There is a known issue with TorchRec's dense tensor size "
                                                          "calculation in dry run scenarios",),
    "root": ("Sharding spec not found for sparse_arch.",),   # data-parallel tables have no sharding spec
    "torch.fx._symbolic_trace": ("is_fx_tracing will return true for both fx.symbolic_trace and torch.export",),
}



def quiet_known_warnings() -> None:
    """Ignore the known warnings (by their text) and drop the known log records."""
    for text in _WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(text))
    for name, starts in _RECORDS.items():
        logging.getLogger(None if name == "root" else name).addFilter(
            lambda record, starts=starts: not record.getMessage().startswith(starts))


quiet_known_warnings()
