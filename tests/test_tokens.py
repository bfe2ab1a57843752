"""Token-shaped features (B×N×D, what crosses a transformer cut): codecs along the right axis, the decoder's limits
on token frames, the token form of the learned bottleneck, and `compress` / `serve` at a hybrid_vit token cut."""

from __future__ import annotations

import json
import tracemalloc

import httpx
import numpy as np
import pytest
import torch

from edgesplit.codecs import (CodecError, DecodeLimits, PayloadError, codec_from_json, decode, parse_codec, unpack,
                              unpack_bytes)
from edgesplit.codecs.frame import RANGE_BYTES, STEP, QuantRecord, decode_cost, header, read
from edgesplit.compress.bottleneck import (BottleneckConfig, BottleneckError, SlimmableBottleneck, TrainingPlan,
                                           bottleneck_config, train_bottleneck)
from edgesplit.compress.bottleneck import _identity as checkpoint_identity
from edgesplit.compress.rate import DEFAULT_CODECS, TOKEN_DEFAULT_CODECS, default_codecs, load_compress
from edgesplit.model.data import load_dataset, write_idx
from edgesplit.model.graph import trace
from edgesplit.model.zoo import hybrid_vit, small_cnn
from edgesplit.runtime.deployment import load_deployment
from edgesplit.runtime.engine import ServerLimits, run_batch
from runtime_plans import make_plan, write_model
from test_cli import edgesplit_in_process

SPECS = ["fp32", "fp16", "bf16", "zstd", "fp16+zstd", "int8", "int8:channel", "int8:token", "int4:channel,p99.9",
         "int4:channel+zstd", "int2:channel+ans", "int3:channel+ans:calibrated", "int8:axis=2", "int6+ans"]


def token_features(batch: int = 2, tokens: int = 16, dim: int = 32, seed: int = 0) -> torch.Tensor:
    """B×N×D features with one outlier channel, as a transformer's residual stream has."""
    x = torch.randn(batch, tokens, dim, generator=torch.Generator().manual_seed(seed))
    x[..., 5] *= 60.0
    return x


def quant_axis(frame: bytes) -> int | None:
    (stage, *_) = read(frame, DecodeLimits()).stages
    assert isinstance(stage, QuantRecord)
    return stage.axis


def token_cut(traced) -> int:
    """A hybrid_vit cut between transformer blocks: one 1×N×D tensor crosses it."""
    cuts = [c for c in traced.cuts if len(c.crossing) == 1 and len(c.crossing[0].shape) == 3]
    return cuts[len(cuts) // 2].index


# ---- codecs ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS)
def test_every_codec_round_trips_token_features(spec):
    x = token_features()
    codec = parse_codec(spec).calibrate(token_features(batch=8, seed=1))
    frame = codec.encode(x)
    y = decode(frame)
    assert y.shape == x.shape and y.dtype == x.dtype
    if codec.is_lossless:
        assert torch.equal(y, x)
    elif spec.startswith(("fp16", "bf16")):
        assert torch.allclose(y, x, rtol=1e-2, atol=1e-2)
    else:  # within half a step of the range each value was quantized in (calibrated ranges cover x here)
        bits = int(spec[3])
        low = np.array(codec.transform.low)
        high = np.array(codec.transform.high)
        axis = codec.transform.axis
        shape = [1, 1, 1]
        if axis is not None:
            shape[axis] = -1
        step = torch.from_numpy((high - low) / (2 ** bits - 1)).float().reshape(shape)
        inside = (x >= torch.from_numpy(low).float().reshape(shape)) & \
            (x <= torch.from_numpy(high).float().reshape(shape))
        assert ((y - x).abs() <= step / 2 + 1e-4)[inside].all()
    if codec.fixed_rate:
        assert codec.payload_bytes(tuple(x.shape)) == len(frame)
    assert decode(codec_from_json(json.loads(json.dumps(codec.to_json()))).encode(x)).equal(y)


def test_per_channel_along_d_is_the_token_default_and_beats_one_range():
    x = token_features()
    others = torch.arange(32) != 5
    errors, others_errors = {}, {}
    for spec in ("int8", "int8:channel", "int8:token", "int4", "int4:channel"):
        frame = parse_codec(spec).encode(x)
        error = (decode(frame) - x).pow(2)
        errors[spec], others_errors[spec] = float(error.mean()), float(error[..., others].mean())
        assert quant_axis(frame) == {"channel": 2, "token": 1}.get(spec.partition(":")[2])
    assert errors["int8:channel"] * 5 < errors["int8"] and errors["int4:channel"] * 5 < errors["int4"]
    # the outlier channel widens one range for all: its own range keeps the other 31 channels fine
    assert others_errors["int8:channel"] * 100 < others_errors["int8"]
    assert others_errors["int4:channel"] * 100 < others_errors["int4"]
    assert others_errors["int8:channel"] * 100 < others_errors["int8:token"]  # every token holds the outlier
    # any other rank keeps channel = axis 1: N×C×H×W and N×F features
    assert quant_axis(parse_codec("int8:channel").encode(torch.randn(2, 3, 4, 5))) == 1
    assert quant_axis(parse_codec("int8:channel").encode(torch.randn(2, 7))) == 1
    with pytest.raises(CodecError, match="per token"):
        parse_codec("int8:token").encode(torch.randn(2, 3, 4, 5))
    with pytest.raises(CodecError, match="per token"):
        parse_codec("int8:token").payload_bytes((1, 64))


def test_specs_and_calibrated_records_keep_their_meaning():
    for spec in ("int8:channel", "int8:token", "int4:axis=channel,p99+zstd", "int2:axis=token+ans", "int8:axis=1"):
        assert parse_codec(parse_codec(spec).spec) == parse_codec(spec)
    assert parse_codec("int8:axis=channel").transform == parse_codec("int8:channel").transform
    # calibrated on tokens: the record says along which axis its D ranges lie
    features = token_features(batch=8)
    codec = parse_codec("int8:channel").calibrate(features)
    record = codec.to_json()
    assert record["axis"] == 2 and len(record["low"]) == 32
    again = codec_from_json(json.loads(json.dumps(record)))
    assert again == codec and again.encode(features[:1]) == codec.encode(features[:1])
    # records written before (no axis) were calibrated along axis 1, and still encode along it
    legacy = {"spec": "int8:channel", "low": [-1.0] * 16, "high": [1.0] * 16}
    assert quant_axis(codec_from_json(legacy).encode(features[:1])) == 1
    with pytest.raises(CodecError, match="'axis'"):
        codec_from_json({**record, "axis": "last"})
    # N×C×H×W: calibrated along axis 1 as before, and the record is what it was (no axis field)
    image = parse_codec("int4:channel+ans:calibrated").calibrate(torch.randn(8, 4, 3, 3))
    assert "axis" not in image.to_json() and len(image.to_json()["low"]) == 4
    assert codec_from_json(image.to_json()) == image
    with pytest.raises(CodecError, match="calibrated on 32 channels"):
        codec.encode(torch.randn(1, 16, 48))  # a cut with another D


def test_a_token_frame_declaring_a_huge_tensor_is_refused_before_allocating():
    ranges = QuantRecord(8, 2, np.zeros(64, np.float32), np.ones(64, np.float32))
    huge = header(torch.float32, (1, 1 << 40, 64), [ranges]) + bytes(64)
    empty = header(torch.float32, (0, 1 << 40, 64), [ranges]) + bytes(64)
    wide = header(torch.float32, (1, 4, 1 << 30), [QuantRecord(8, 2, np.zeros(1, np.float32),
                                                                np.ones(1, np.float32))])
    tracemalloc.start()
    try:
        for frame in (huge, empty, wide):
            with pytest.raises(PayloadError, match="decode limit"):
                decode(frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    # a frame whose ranges do not match its D is corrupt, however it is quantized
    frame = parse_codec("int8:channel").encode(token_features())
    bad = header(torch.float32, (2, 16, 32), [QuantRecord(8, 2, np.zeros(16, np.float32), np.ones(16, np.float32))])
    with pytest.raises(PayloadError, match="16 quantization ranges for axis 2"):
        decode(bad + frame[len(bad) + 16 * 8:])
    assert decode(frame, DecodeLimits(2 * 16 * 32 * 4)).shape == (2, 16, 32)
    with pytest.raises(PayloadError, match="decode limit"):
        decode(frame, DecodeLimits(2 * 16 * 32 * 4 - 1))
    # one range per channel of a long last axis: the decode holds them too, and counts them beyond a fixed few
    long = parse_codec("int8:channel").encode(torch.randn(1, 2, 20000))
    held = 2 * 20000 * 4 + RANGE_BYTES * (20000 - STEP)
    assert decode_cost(long).peak_bytes == held
    assert decode(long, DecodeLimits(held)).shape == (1, 2, 20000)
    with pytest.raises(PayloadError, match="quantization ranges"):
        decode(long, DecodeLimits(held - 1))
    many = QuantRecord(8, 2, np.zeros(1 << 22, np.float32), np.ones(1 << 22, np.float32))
    claimed = header(torch.float32, (1, 1, 1 << 22), [many])[:64]  # the ranges' bytes are not even there
    with pytest.raises(PayloadError, match="quantization ranges .* over the decode limit"):
        decode(claimed, DecodeLimits(1 << 24))


# ---- the token bottleneck ----------------------------------------------------------------------------------------


def test_token_bottleneck_codes_each_token_and_decodes_to_its_shape():
    config = BottleneckConfig(32, 8, bits=3, widths=(0.5, 1.0), layout="tokens")
    bottleneck = SlimmableBottleneck(config).eval()
    x = token_features(batch=5)
    for width, k in ((0.5, 4), (1.0, 8)):
        code = bottleneck.encode(x, width)
        assert code.shape == (5, 16, k) == (5, *bottleneck.code_shape((16, 32), width))
        assert torch.equal(code, code.round()) and code.min() >= 0 and code.max() <= 7
        assert bottleneck.decode(code, width).shape == x.shape
        assert bottleneck.macs((16, 32), width) == (16 * 32 * k, 16 * k * 32)
    with pytest.raises(BottleneckError, match="code has 8 channels"):
        bottleneck.decode(torch.zeros(1, 16, 8), 0.5)
    with pytest.raises(BottleneckError, match="stride 1"):
        SlimmableBottleneck(BottleneckConfig(32, 8, stride=2, layout="tokens"))
    with pytest.raises(BottleneckError, match="layout 'pixels'"):
        SlimmableBottleneck(BottleneckConfig(32, 8, layout="pixels"))
    # a checkpoint's identity names the layout for tokens only: conv checkpoints written before still resume
    assert "layout" not in checkpoint_identity(BottleneckConfig(32, 8), TrainingPlan())["config"]
    assert checkpoint_identity(config, TrainingPlan())["config"]["layout"] == "tokens"


def test_the_bottleneck_form_follows_the_tensor_at_the_cut():
    traced = trace(hybrid_vit(in_channels=1).eval(), torch.zeros(1, 1, 32, 32))
    tokens = bottleneck_config(traced.split(token_cut(traced)), 8, stride=2, bits=4)
    assert (tokens.layout, tokens.in_channels, tokens.stride) == ("tokens", 64, 1)
    stem = next(c for c in traced.cuts if len(c.crossing) == 1 and len(c.crossing[0].shape) == 4)
    image = bottleneck_config(traced.split(stem.index), 8, stride=2)
    assert (image.layout, image.in_channels, image.stride) == ("image", stem.crossing[0].shape[1], 2)
    inside = next(c for c in traced.cuts if len(c.crossing) == 2)
    with pytest.raises(BottleneckError, match="one N×C×H×W or B×N×D"):
        bottleneck_config(traced.split(inside.index), 8)


@pytest.fixture(scope="module")
def digits32():
    return load_dataset("digits", image_size=32)


@pytest.mark.slow
def test_token_bottleneck_trains_at_a_hybrid_vit_cut(digits32, tmp_path):
    torch.manual_seed(0)
    model = hybrid_vit(in_channels=1).eval()
    traced = trace(model, torch.zeros(1, 1, 32, 32))
    split = traced.split(token_cut(traced))
    config = bottleneck_config(split, 8, bits=4)
    plan = TrainingPlan(feature_epochs=3, task_epochs=1, batch_size=32, train_limit=128)
    bottleneck, tail, log = train_bottleneck(split, model, digits32, config, plan, checkpoint_dir=tmp_path,
                                             progress=False)
    assert log.feature_loss[-1] < log.feature_loss[0] and len(log.task_loss) == 1
    _, _, resumed = train_bottleneck(split, model, digits32, config, plan, checkpoint_dir=tmp_path, progress=False)
    assert resumed.resumed_from_epoch == 4  # the token form's checkpoint reads back
    x = digits32.test_images[:4]
    with torch.no_grad():
        code = bottleneck.encode(split.head(x)[0])
        assert code.shape == (4, 64, 8)  # 8 code values of 4 bits a token, not 64 floats
        assert tail(bottleneck.decode(code)).shape == (4, 10)


@pytest.mark.slow
def test_compress_with_a_bottleneck_at_a_token_cut(digits32, tmp_path):
    for split, images, labels in (("train", digits32.train_images[:128], digits32.train_labels[:128]),
                                  ("t10k", digits32.test_images[:48], digits32.test_labels[:48])):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte", (images[:, 0] * 255).round().to(torch.uint8).numpy())
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", labels.to(torch.uint8).numpy())
    weights, shape = write_model(tmp_path, "hybrid_vit", shape=(1, 1, 32, 32))
    traced = trace(hybrid_vit(in_channels=1).eval(), torch.zeros(shape))
    cut = token_cut(traced)
    result = edgesplit_in_process("compress", "hybrid_vit", "--weights", str(weights), "--data", f"idx:{tmp_path}",
                                  "--cut", str(cut), "--codec", "int8", "--codec", "int8:channel", "--bottleneck", "8",
                                  "--epochs", "1", "--batch-size", "64", "--eval-limit", "48",
                                  "--checkpoint", str(tmp_path / "ck"), "--json", "c.json", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = load_compress(tmp_path / "c.json")
    assert report.cut_index == cut and report.bottleneck.layout == "tokens" and report.bottleneck.stride == 1
    sizes = {c.name: c.bytes_per_inference for c in report.configurations}
    assert sizes["bottleneck 8ch"] * 10 < sizes["int8"] < report.float32_bytes  # 64 tokens × 8 × 4 bits + header
    channel = next(c for c in report.configurations if c.name == "int8:channel")
    assert channel.codecs[0]["axis"] == 2 and len(channel.codecs[0]["low"]) == 64
    # a plan that sends the bottleneck's code at that cut: the deployment rebuilds the token form from the checkpoint
    plan = make_plan(tmp_path, "hybrid_vit", routes=[(0, 1e6, {"cut_index": cut, "codec": "bottleneck 8ch"})],
                     compress_files=[str(tmp_path / "c.json")], weights=weights, shape=shape)
    (route,) = load_deployment(plan).routes
    assert route.bottleneck is not None and route.bottleneck.tokens and route.sent_shapes == [(1, 64, 8)]
    x = digits32.test_images[:3]
    tensors = route.decode(route.encode(route.device_side(x)), ServerLimits().decode, 64)
    (out,) = unpack(run_batch(route, [tensors], [0])[0])
    with torch.no_grad():
        expected = route.tail(route.bottleneck.decode(route.bottleneck.encode(route.split.head(x)[0])))
    assert (out - expected).abs().max() <= 1e-5


# ---- served --------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_served_plan_with_a_quantized_token_cut_answers_on_loopback(tmp_path):
    from edgesplit.runtime.engine import Engine
    from edgesplit.runtime.server import ServerThread, decode_limits
    from edgesplit.runtime.wire import Request, Response, Status, new_request_id

    traced = trace(hybrid_vit().eval(), torch.zeros(1, 3, 32, 32))
    cut = token_cut(traced)
    plan = make_plan(tmp_path, "hybrid_vit", routes=[(0, 1e6, {"cut_index": cut, "codec": "int8:channel+zstd"})])
    deployment = load_deployment(plan)
    (route,) = deployment.routes
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    payload = route.encode(route.device_side(x))
    frames = [read(f, DecodeLimits()) for f in unpack_bytes(payload)]
    assert frames[0].shape == (2, 64, 64) and frames[0].stages[0].axis == 2
    engine = Engine([deployment], ServerLimits(max_request_bytes=1 << 20, decode=decode_limits([deployment], 64)))
    token = "token-for-the-token-test-0123"
    with ServerThread(engine, token=token) as server:
        request = Request(request_id=new_request_id(), model_id=deployment.model_id, route_id=route.route_id,
                          payload=payload, width=None)
        reply = httpx.post(f"{server.url}/v1/infer", content=request.to_bytes(),
                           headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert reply.status_code == 200, reply.text
    response = Response.from_bytes(reply.content)
    assert response.status == Status.OK
    (out,) = unpack(response.payload)
    with torch.no_grad():
        expected = deployment.model(x)
    assert out.shape == expected.shape
    cosine = torch.nn.functional.cosine_similarity(out.flatten(), expected.flatten(), dim=0)
    assert cosine > 0.99 and (out - expected).abs().max() <= 0.05 * expected.abs().max()


def test_compress_defaults_to_per_channel_quantizers_at_a_token_cut():
    """Without --codec, compress measures int8:channel … at a B×N×D cut (ranges along D, where a transformer's
    outlier channels sit), and the per-tensor list at an image cut."""
    vit = trace(hybrid_vit(in_channels=1).eval(), torch.zeros(1, 1, 32, 32))
    tokens = vit.split(token_cut(vit)).cut.crossing
    cnn = trace(small_cnn(), torch.zeros(1, 1, 28, 28))
    assert default_codecs(tokens) == TOKEN_DEFAULT_CODECS and "int8:channel" in TOKEN_DEFAULT_CODECS
    assert default_codecs(cnn.split(3).cut.crossing) == DEFAULT_CODECS
    for spec in TOKEN_DEFAULT_CODECS:
        parse_codec(spec)
