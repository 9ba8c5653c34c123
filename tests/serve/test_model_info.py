"""What the server reports about its model (card, stop ids, token bytes) and the Prometheus text
it writes, checked directly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from graft.data.tokenizer import Tokenizer, byte_to_unicode
from graft.serve.metrics import Gauges, ServeMetrics
from graft.serve.model_info import describe_model, load_model_for_serving, token_bytes


def test_a_checkpoint_without_a_readme_gets_a_summary_card(checkpoint: Path):
    model, tokenizer, source = load_model_for_serving(checkpoint, "cpu")
    info = describe_model(model, tokenizer, source, name="tiny", created=0)
    assert info.card.startswith("# tiny\n") and "has no README.md" in info.card
    assert "2 layers, d_model 32" in info.card and f"{info.parameters:,} parameters" in info.card
    assert info.stop_ids == {tokenizer.eot_id} and info.kind == "causal LM"
    assert info.config.can_generate


def test_a_hugging_face_export_serves_its_own_card_and_generation_config_eos(
    checkpoint: Path, tmp_path: Path
):
    from graft.model.convert.hf_export import export_hf

    model, tokenizer, _ = load_model_for_serving(checkpoint, "cpu")
    out = export_hf(model, tmp_path / "hf", tokenizer=tokenizer, source=checkpoint)
    config = json.loads((out / "generation_config.json").read_text())
    config["eos_token_id"] = [tokenizer.eot_id, 7]  # a chat model lists its end-of-turn id too
    (out / "generation_config.json").write_text(json.dumps(config))
    hf_model, hf_tokenizer, source = load_model_for_serving(out, "cpu")
    assert source == out
    info = describe_model(hf_model, hf_tokenizer, source, name="hf", created=0)
    assert info.card == (out / "README.md").read_text(encoding="utf-8")
    assert info.stop_ids == {tokenizer.eot_id, 7}
    shutil.rmtree(out)


def test_token_bytes_of_partial_characters(tokenizer: Tokenizer):
    # The byte-level alphabet holds every byte; 0xE2 alone is the start of a 3-byte character.
    lone = tokenizer.token_to_id(byte_to_unicode()[0xE2])
    assert tokenizer.decode([lone]) == "\ufffd"
    assert token_bytes(tokenizer, lone) == b"\xe2"
    word = tokenizer.encode(" the")[0]
    assert token_bytes(tokenizer, word) == tokenizer.decode([word]).encode()


def test_prometheus_text_format():
    metrics = ServeMetrics()
    for seconds in (0.004, 0.01, 0.3, 500.0):
        metrics.observe_request("/v1/x", 200, seconds)
    metrics.observe_request('/we"ird\\path', 404, 0.1)
    metrics.observe_first_token("/v1/x", 0.02)
    metrics.add_tokens(5, 7)
    text = metrics.render(Gauges(waiting=3, running=2, last_batch_size=2))
    lines = text.splitlines()
    assert (
        'graft_request_duration_seconds_bucket{endpoint="/v1/x",le="0.01"} 2' in lines
    )  # le is inclusive
    assert 'graft_request_duration_seconds_bucket{endpoint="/v1/x",le="120"} 3' in lines
    assert 'graft_request_duration_seconds_bucket{endpoint="/v1/x",le="+Inf"} 4' in lines
    assert 'graft_request_duration_seconds_count{endpoint="/v1/x"} 4' in lines
    assert 'graft_requests_total{endpoint="/we\\"ird\\\\path",status="404"} 1' in lines
    assert "graft_queue_depth 3" in lines and "graft_completion_tokens_total 7" in lines
    assert "# TYPE graft_time_to_first_token_seconds histogram" in lines
    assert text.endswith("\n")
