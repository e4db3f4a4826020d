"""Trace loaders: format detection, public traces, malformed rows (line numbers / skip count)."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simfoe.errors import SpecError
from simfoe.workloads import RequestTable, TraceRowError, detect_format, load_trace


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


# ------------------------------------------------------------------ small synthetic files
def test_simfoe_csv_roundtrip(tmp_path):
    t = RequestTable.from_arrays([0.0, 0.5, 2.25], [10, 20, 30], [1, 2, 3], request_id=[7, 8, 9],
                                 prompt_type=["a", "b", "a"])
    p = t.to_csv(tmp_path / "x.csv")
    assert detect_format(p) == "simfoe"
    u = load_trace(p)
    np.testing.assert_allclose(u.arrival_s, t.arrival_s)
    np.testing.assert_array_equal(u.prompt_tokens, t.prompt_tokens)
    np.testing.assert_array_equal(u.output_tokens, t.output_tokens)
    np.testing.assert_array_equal(u.request_id, [7, 8, 9])
    assert list(u.prompt_type) == ["a", "b", "a"]


def test_arrivals_are_relative_and_sorted(tmp_path):
    p = write(tmp_path, "t.csv", "arrival_s,prompt_tokens,output_tokens\n105,1,1\n100,2,2\n103.5,3,3\n")
    t = load_trace(p)
    np.testing.assert_allclose(t.arrival_s, [0.0, 3.5, 5.0])
    np.testing.assert_array_equal(t.prompt_tokens, [2, 3, 1])
    np.testing.assert_array_equal(t.request_id, [1, 2, 0])  # ids = data-row index in the file


def test_azure_format(tmp_path):
    p = write(tmp_path, "az.csv",
              "TIMESTAMP,ContextTokens,GeneratedTokens\n"
              "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.9951690,396,109\n2023-11-16 18:16:00,5,6\n")
    assert detect_format(p) == "azure"
    t = load_trace(p)
    np.testing.assert_allclose(t.arrival_s, [0.0, 4.314579, 13.31941], atol=1e-6)
    np.testing.assert_array_equal(t.prompt_tokens, [374, 396, 5])


def test_burstgpt_format(tmp_path):
    p = write(tmp_path, "b.csv",
              "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
              "5,ChatGPT,472,18,490,Conversation log\n7,GPT-4,1087,254,1341,API log\n")
    assert detect_format(p) == "burstgpt"
    t = load_trace(p)
    np.testing.assert_allclose(t.arrival_s, [0.0, 2.0])
    np.testing.assert_array_equal(t.output_tokens, [18, 254])
    assert list(t.prompt_type) == ["ChatGPT", "GPT-4"]


def test_burstgpt_failed_request_is_reported(tmp_path):
    p = write(tmp_path, "b.csv",
              "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
              "5,ChatGPT,472,18,490,Conversation log\n6,ChatGPT,100,0,100,Conversation log\n")
    with pytest.raises(TraceRowError, match=r"line 3.*Response tokens.*failed requests"):
        load_trace(p)
    t = load_trace(p, skip_bad_rows=True)
    assert len(t) == 1 and t.skipped_rows == 1 and t.skipped_lines == (3,)


def test_lengths_table_untimed_and_vidur_arrived_at(tmp_path):
    p = write(tmp_path, "l.csv", "num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n74,918,992,0.08\n")
    t = load_trace(p)
    assert detect_format(p) == "lengths" and not t.has_arrivals and np.isnan(t.arrival_s).all()
    p2 = write(tmp_path, "v.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n1.5,10,2\n3.0,20,4\n")
    t2 = load_trace(p2)
    np.testing.assert_allclose(t2.arrival_s, [0.0, 1.5])


def test_mooncake_jsonl_and_gzip(tmp_path):
    recs = [{"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [0, 1]},
            {"timestamp": 1500, "input_length": 100, "output_length": 7, "hash_ids": [0]}]
    text = "\n".join(json.dumps(r) for r in recs) + "\n"
    p = write(tmp_path, "m.jsonl", text)
    pg = tmp_path / "m.jsonl.gz"
    with gzip.open(pg, "wt") as f:
        f.write(text)
    for path in (p, pg):
        assert detect_format(path) == "mooncake"
        t = load_trace(path)
        np.testing.assert_allclose(t.arrival_s, [0.0, 1.5])
        assert t.hash_block_tokens == 512
        np.testing.assert_array_equal(t.prefix_hashes(0), [0, 1])
        np.testing.assert_array_equal(t.prefix_hashes(1), [0])


@pytest.mark.parametrize(
    "body, line, needle",
    [
        ("1,10,5\nx,10,5\n", 3, "arrival_s"),
        ("1,10,5\n2,abc,5\n", 3, "prompt_tokens"),
        ("1,10,5\n2,10,0\n", 3, "output_tokens"),
        ("1,10,5\n2,10.5,3\n", 3, "prompt_tokens"),
        ("1,10,5\n2,10,5,9\n3,1,1\n", 3, "Expected 3 fields"),
        ("1,10,5\n2,10\n", 3, "output_tokens"),
        ("1,10,5\n\n2,10,5\n3,-1,2\n", 5, "prompt_tokens"),  # blank line counted in line numbers
    ],
)
def test_malformed_csv_row_names_line(tmp_path, body, line, needle):
    p = write(tmp_path, "bad.csv", "arrival_s,prompt_tokens,output_tokens\n" + body)
    with pytest.raises(TraceRowError, match=needle) as e:
        load_trace(p)
    assert e.value.line == line
    assert f"line {line}" in str(e.value) and "--skip-bad-rows" in str(e.value)
    assert isinstance(e.value, SpecError)
    t = load_trace(p, skip_bad_rows=True)
    assert t.skipped_rows == 1 and t.skipped_lines == (line,)
    assert len(t) == sum(1 for ln in body.splitlines() if ln) - 1


def test_skip_counts_mixed_errors(tmp_path):
    p = write(tmp_path, "bad.csv", "arrival_s,prompt_tokens,output_tokens\n0,1,1\n1,2,2,2\n2,x,1\n3,3,3\n4,4,-4\n")
    t = load_trace(p, skip_bad_rows=True)
    assert t.skipped_rows == 3 and t.skipped_lines == (3, 4, 6)
    np.testing.assert_array_equal(t.prompt_tokens, [1, 3])


def test_malformed_jsonl_line(tmp_path):
    good = json.dumps({"timestamp": 0, "input_length": 6, "output_length": 5})
    p = write(tmp_path, "m.jsonl", "\n".join([good, good, "{not json", good, json.dumps(
        {"timestamp": 3, "input_length": 0, "output_length": 1})]) + "\n")
    with pytest.raises(TraceRowError, match="line 3"):
        load_trace(p)
    t = load_trace(p, skip_bad_rows=True)
    assert len(t) == 3 and t.skipped_rows == 2 and t.skipped_lines == (3, 5)


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(SpecError, match="header"):
        load_trace(write(tmp_path, "u.csv", "a,b,c\n1,2,3\n"))
    with pytest.raises(SpecError, match="existing trace file"):
        load_trace(tmp_path / "nope.csv")
    with pytest.raises(SpecError, match="format"):
        load_trace(write(tmp_path, "ok.csv", "arrival_s,prompt_tokens,output_tokens\n0,1,1\n"), fmt="parquet")


# ------------------------------------------------------------------ the real public traces
@pytest.mark.shared
def test_azure_conv_trace(shared_data):
    t = load_trace(shared_data / "traces" / "azure_llm_inference_2023_conv.csv")
    assert len(t) == 19366 and t.skipped_rows == 0  # count per ../shared/data/README.md
    assert t.arrival_s[0] == 0.0 and np.all(np.diff(t.arrival_s) >= 0)
    assert 3000 < t.duration_s < 3600  # "about one hour" (README)
    assert t.prompt_tokens.dtype == np.int64 and t.prompt_tokens.min() >= 1


@pytest.mark.shared
@pytest.mark.parametrize(
    "name, rows, fmt",
    [
        ("azure_llm_inference_2023_code.csv", 8819, "azure"),
        ("mooncake_conversation_trace.jsonl", 12031, "mooncake"),
        ("mooncake_synthetic_trace.jsonl", 3993, "mooncake"),
        ("sharegpt_8k_lengths_llama2_tokenizer.csv", 30731, "lengths"),
    ],
)
def test_other_public_traces(shared_data, name, rows, fmt):
    path = shared_data / "traces" / name
    assert detect_format(path) == fmt
    t = load_trace(path)
    assert len(t) == rows and t.skipped_rows == 0
    if fmt == "mooncake":
        # every prompt is covered by its 512-token hash blocks: ceil(input / 512) ids
        n_blocks = np.diff(t.hash_offsets)
        np.testing.assert_array_equal(n_blocks, -(-t.prompt_tokens // 512))


def test_byte_order_mark_and_records(tmp_path):
    p = tmp_path / "bom.csv"
    p.write_bytes("\ufeffTIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,3,4\n".encode())
    t = load_trace(p)
    assert t.records() == [(0, 0.0, 3, 4)]


@settings(max_examples=30, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.floats(0, 1e6, allow_nan=False), st.integers(1, 10**6), st.integers(1, 10**5),
                  st.sampled_from(["qa", "code", "chat, long"])),
        min_size=1, max_size=40,
    )
)
def test_simfoe_csv_roundtrip_property(tmp_path_factory, rows):
    a, p, o, k = (list(x) for x in zip(*rows))
    t = RequestTable.from_arrays(np.round(a, 6), p, o, prompt_type=k)
    u = load_trace(t.to_csv(tmp_path_factory.mktemp("rt") / "t.csv"))
    order = np.argsort(np.round(a, 6), kind="stable")
    np.testing.assert_allclose(u.arrival_s, np.round(a, 6)[order] - np.min(np.round(a, 6)), atol=2e-6)
    np.testing.assert_array_equal(u.prompt_tokens, np.asarray(p)[order])
    np.testing.assert_array_equal(u.request_id, order)
    assert list(u.prompt_type) == [k[i] for i in order]
