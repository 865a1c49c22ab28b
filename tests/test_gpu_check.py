"""benchmarks/gpu_check.py on CPU (tiny sizes): every section runs and its figures are sane; the fallback
ranker (no torchrec) runs; the script's copy of the ranker's shapes equals the repository's."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = sys.modules["gpu_check"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def _run(tmp_path, *args) -> dict:
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--device", "cpu", "--out", str(out), *args]) == 0
    return json.loads(out.read_text())


def _slate_ok(r: dict) -> None:
    assert r["status"] == "ran", r.get("traceback")
    assert r["examples_per_s"] > 0 and r["step_ms"] > 0
    for k in ("with_content", "ids_only"):
        assert 0 < r[k]["p50_ms"] <= r[k]["p99_ms"] and r[k]["n"] == gpu_check.SIZES["cpu"].requests
    assert r["p99_with_content_over_ids_only"] > 0


def test_cpu_run_records_every_section(tmp_path):
    result = _run(tmp_path)
    assert result["device"]["kind"] == "cpu" and result["device"]["torch"] == torch.__version__
    assert result["note"].startswith("CPU path") and result["imports"]["torchrec"]["imported"]
    sections = result["sections"]
    assert {k: v["status"] for k, v in sections.items()} == dict.fromkeys(("ranking", "pinclip", "chunked_loss"), "ran")

    ranking = sections["ranking"]
    assert ranking["model"].startswith("ranking.model.build_model") and ranking["shape"]["dense_with_content"] == 214
    _slate_ok(ranking["dmp"]["cpu"])
    _slate_ok(ranking["unsharded"]["cpu"])
    # which kernels ran: fbgemm's table-batched embedding when sharded, torch's embedding_bag when not
    assert "fbgemm::split_embedding_codegen_forward_cpu" in ranking["dmp"]["cpu"]["train_step_ran"]["ops"]
    assert "aten::embedding_bag" in ranking["unsharded"]["cpu"]["scoring_ran"]["ops"]

    pinclip = sections["pinclip"]
    plain, ckpt, freezing = pinclip["no_checkpointing"], pinclip["checkpointing"], pinclip["freezing"]
    assert plain["status"] == ckpt["status"] == freezing["status"] == "ran"
    assert plain["batch"] == pinclip["largest_batch"]["batch"] == 64 and plain["pairs_per_s"] > 0
    assert plain["flops_per_step"] > 0 and plain["mfu"] is None and "MFU null" in pinclip["peak"]
    assert any("scaled_dot_product" in op for op in pinclip["sdpa"]["ran"]["ops"])
    assert ckpt["pairs_per_s"] > 0 and ckpt["saved_activation_mib"] < plain["saved_activation_mib"]
    rows = freezing["rows"]
    assert [r["frozen_share"] for r in rows] == [0.0, 0.25, 0.5, 0.75]
    assert [r["frozen_blocks"] for r in rows] == [0, 1, 3, 4] and all(r["pairs_per_s"] > 0 for r in rows)
    assert freezing["agrees"]["memory"] and rows[-1]["flops_per_step"] < rows[0]["flops_per_step"]

    loss = sections["chunked_loss"]
    assert loss["max_abs_diff"] < 1e-5 and loss["world_size_1_group"]["max_abs_diff"] < 1e-5 and loss["unchunked"] > 0


def test_without_torchrec_the_stand_in_ranker_runs(tmp_path):
    ranking = _run(tmp_path, "--without", "torchrec", "--only", "ranking")["sections"]["ranking"]
    assert ranking["model"].startswith("plain-torch stand-in") and set(ranking) >= {"standin"}
    assert "dmp" not in ranking
    _slate_ok(ranking["standin"]["cpu"])


def test_the_scripts_shapes_are_the_rankers():
    from pinlift.core.vocabulary import PINWORLD
    from ranking.features import SPARSE_FEATURES, TABLE_OF_FEATURE, dense_width
    from ranking.model import ModelConfig, build_model
    from ranking.train import TrainConfig

    assert gpu_check.SPARSE == SPARSE_FEATURES and gpu_check.TABLE == TABLE_OF_FEATURE
    assert (gpu_check.DENSE_IDS, gpu_check.DENSE_CONTENT) == (dense_width(PINWORLD, False), dense_width(PINWORLD, True))
    assert gpu_check.TASKS == len(PINWORLD.tasks)
    assert gpu_check.SHAPE == {k: v for k, v in ModelConfig().model_dump().items() if k in gpu_check.SHAPE}
    assert len(gpu_check.SHAPE) == len(ModelConfig.model_fields)
    fields = TrainConfig.model_fields
    assert (gpu_check.MAX_IDS["pin_boards"], gpu_check.MAX_IDS["user_history"]) == (
        fields["max_boards"].default, fields["max_history"].default)
    # the stand-in has the real model's parameters, layer for layer
    vocab = {"user": 30, "pin": 50, "board": 20, "advertiser": 5}
    real = build_model(vocab, gpu_check.DENSE_CONTENT, ModelConfig(), gpu_check.TASKS, sparse_device=torch.device("cpu"))
    stand_in = gpu_check.StandIn(vocab, gpu_check.DENSE_CONTENT)
    assert sorted(p.numel() for p in stand_in.parameters()) == sorted(p.numel() for p in real.parameters())
