"""The voice gate and the Shapley weights (engines/trust.py) on small random networks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engines.models import build_model, forward_kwargs  # noqa: E402
from engines.trust import TrustConfig, fit_trust, unfamiliarity, wrap  # noqa: E402
from tests.unit.model_inputs import DA, DT, make_inputs  # noqa: E402


def small(engine: str = "unimse", seed: int = 0) -> object:
    """A small random network in which the audio counts: UniMSE's adapters, through which its
    audio enters, start at zero (a fresh UniMSE ignores its audio), so they are drawn too."""
    torch.manual_seed(seed)
    net = build_model(engine, {"text_dim": DT, "audio_dim": DA, "d_model": 32, "n_heads": 4}).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if ".up." in name and name.startswith("adapters."):
                p.normal_(0.0, 0.5)
    return net


def fitted(prior: float, unfamiliar: float = 0.5, seed: int = 0) -> tuple[dict[str, np.ndarray], TrustConfig]:
    rng = np.random.default_rng(seed)
    voices = rng.standard_normal((400, DA)) * np.linspace(0.5, 2.0, DA)
    labels = rng.integers(0, 7, 400)
    return fit_trust(labels, 7, voices, TrustConfig(prior=prior, prior_unfamiliar=unfamiliar, k=4))


def test_familiarity_is_fit_on_the_training_voices() -> None:
    tensors, cfg = fitted(0.05)
    assert cfg.n_fit == 400 and cfg.k == 4 and cfg.tau > 0
    assert tensors["class_prior"].shape == (7,) and abs(float(tensors["class_prior"].sum()) - 1) < 1e-6
    rng = np.random.default_rng(9)
    like = rng.standard_normal((200, DA)) * np.linspace(0.5, 2.0, DA)  # new draws of the same voices
    assert (unfamiliarity(like, tensors, cfg) < cfg.tau).mean() > 0.97
    far = like * 4 + 3  # another kind of voice
    assert (unfamiliarity(far, tensors, cfg) > cfg.tau).all()


def _probs(out: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.softmax(out["logits"], -1)


@pytest.mark.parametrize("engine", ["unimse", "relevance", "joyful", "foal-net"])
def test_weights_are_shapley_shares_summing_to_one_over_what_is_present(engine: str) -> None:
    net = small(engine)
    tensors, cfg = fitted(0.05)
    trusted = wrap(net, tensors, cfg)
    x = make_inputs()
    x["present"][0, -1, 1] = 0.0  # window 0: no audio at the target
    x["present"][1, -1, 0] = 0.0  # window 1: no text at the target
    with torch.no_grad():
        out = trusted(**forward_kwargs(x))
        raw = net(**forward_kwargs(x))
    w = out["weights"]
    torch.testing.assert_close(w.sum(1), torch.ones(4))
    assert w[0].tolist() == [1.0, 0.0, 0.0] and w[1].tolist() == [0.0, 1.0, 0.0]
    assert torch.all(w[:, 2] == 0)
    # window 0 has no audio at the target: the gate has nothing to weigh, the output is the network's
    torch.testing.assert_close(_probs(out)[0], _probs(raw)[0], atol=1e-5, rtol=0)

    # the Shapley value by hand for window 2 (text and audio present)
    def logp(keep: tuple[int, ...]) -> torch.Tensor:
        y = dict(x)
        y["present"] = x["present"].clone()
        for m in (0, 1):
            if m not in keep:
                y["present"][:, -1, m] = 0.0
        with torch.no_grad():
            return torch.log_softmax(net(**forward_kwargs(y))["logits"], -1)

    best = int(out["logits"][2].argmax())
    p = {k: logp(k)[2].exp() for k in [(), (0,), (1,), (0, 1)]}
    # the gate w, read off the output: final = w p_all + (1 - w) p_text
    final = _probs(out)[2]
    i = int((p[(0, 1)] - p[(0,)]).abs().argmax())
    w_gate = float((final[i] - p[(0,)][i]) / (p[(0, 1)][i] - p[(0,)][i]))
    assert 0.0 <= w_gate <= 1.0
    # the voice counts by the gate in every coalition it joins
    v = {(): math.log(float(p[()][best])), (0,): math.log(float(p[(0,)][best]))}
    v[(1,)] = math.log(w_gate * float(p[(1,)][best]) + (1 - w_gate) * float(p[()][best]))
    v[(0, 1)] = float(out["logits"][2, best])  # the gated decision
    phi_t = 0.5 * ((v[(0,)] - v[()]) + (v[(0, 1)] - v[(1,)]))
    phi_a = 0.5 * ((v[(1,)] - v[()]) + (v[(0, 1)] - v[(0,)]))
    shares = np.maximum([phi_t, phi_a], 0)
    assert shares.sum() > 0
    np.testing.assert_allclose(w[2, :2].numpy(), shares / shares.sum(), atol=1e-5)


def _fused_and_text(net: object, x: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's probabilities with everything, and with the targets' voices hidden."""
    without_audio = dict(x)
    without_audio["present"] = x["present"].clone()
    without_audio["present"][:, -1, 1] = 0.0
    return _probs(net(**forward_kwargs(x))), _probs(net(**forward_kwargs(without_audio)))  # type: ignore[operator]


def test_the_gate_follows_its_prior_between_the_fused_output_and_the_text() -> None:
    net = small()
    x = make_inputs()
    with torch.no_grad():
        fused, text = _fused_and_text(net, x)
        never = _probs(wrap(net, *fitted(0.0, 0.0))(**forward_kwargs(x)))  # no voice ever contradicts: the fused output
        always = _probs(wrap(net, *fitted(1.0, 1.0))(**forward_kwargs(x)))  # every voice contradicts: the text's
        some = wrap(net, *fitted(0.3, 0.3))(**forward_kwargs(x))
    torch.testing.assert_close(never, fused, atol=1e-5, rtol=0)
    torch.testing.assert_close(always, text, atol=1e-5, rtol=0)
    p = _probs(some)
    lo, hi = torch.minimum(fused, text) - 1e-5, torch.maximum(fused, text) + 1e-5
    assert torch.all((p >= lo) & (p <= hi))  # a mixture of the two
    assert torch.all(some["sentiment"].abs() <= 1)


def test_a_text_read_at_a_high_temperature_tells_the_gate_nothing() -> None:
    """``text_temperature``: the words' prediction in the gate is softened; at a temperature high
    enough it is uniform, agree = other, and the gate is 1 - pi whatever the words say."""
    import dataclasses

    net = small()
    x = make_inputs()
    tensors, cfg = fitted(0.3, 0.3)
    with torch.no_grad():
        fused, text = _fused_and_text(net, x)
        flat = _probs(wrap(net, tensors, dataclasses.replace(cfg, text_temperature=1e6))(**forward_kwargs(x)))
        sharp = _probs(wrap(net, tensors, dataclasses.replace(cfg, text_temperature=0.01))(**forward_kwargs(x)))
    torch.testing.assert_close(flat, 0.7 * fused + 0.3 * text, atol=1e-5, rtol=0)
    assert not torch.allclose(sharp, flat, atol=1e-3)  # a sure text moves the gate
    with pytest.raises(ValueError, match="text_temperature"):
        dataclasses.replace(cfg, text_temperature=0.0)


def test_a_voice_read_at_a_high_temperature_tells_the_gate_nothing() -> None:
    """``audio_temperature``: the voice's prediction in the gate is softened; at a temperature high
    enough it is uniform, and with a uniform class prior agree = other: the gate is 1 - pi."""
    import dataclasses

    net = small()
    x = make_inputs()
    tensors, cfg = fitted(0.3, 0.3)
    tensors = {**tensors, "class_prior": np.full(7, 1 / 7, dtype=np.float32)}
    with torch.no_grad():
        fused, text = _fused_and_text(net, x)
        flat = _probs(wrap(net, tensors, dataclasses.replace(cfg, audio_temperature=1e6))(**forward_kwargs(x)))
        sharp = _probs(wrap(net, tensors, dataclasses.replace(cfg, audio_temperature=0.01))(**forward_kwargs(x)))
    torch.testing.assert_close(flat, 0.7 * fused + 0.3 * text, atol=1e-5, rtol=0)
    assert not torch.allclose(sharp, flat, atol=1e-3)  # a sure voice moves the gate
    with pytest.raises(ValueError, match="audio_temperature"):
        dataclasses.replace(cfg, audio_temperature=float("inf"))


@pytest.mark.parametrize("engine", ["unimse", "relevance", "joyful", "foal-net"])
def test_a_voice_the_gate_turns_away_carries_none_of_the_decision(engine: str) -> None:
    """Every voice presumed to contradict (prior 1): the gate is 0, the output the text's, and the
    voice's weight exactly 0 on every window and seed, also where no modality raised the label
    (the even-share fallback)."""
    tensors, cfg = fitted(1.0, 1.0)
    for seed in range(8):
        net = small(engine, seed=seed)
        x = make_inputs(b=16, seed=seed)
        x["audio"] = x["audio"] * (1 + seed)
        with torch.no_grad():
            w = wrap(net, tensors, cfg)(**forward_kwargs(x))["weights"]
        assert torch.all(w[:, 1] == 0.0), (engine, seed, w)
        torch.testing.assert_close(w[:, 0], torch.ones(w.shape[0]))


def test_an_unfamiliar_voice_is_trusted_less_than_a_familiar_one() -> None:
    net = small()
    tensors, cfg = fitted(0.0, 1.0)  # familiar: always trusted; unfamiliar: never
    trusted = wrap(net, tensors, cfg)
    x = make_inputs()
    x["audio"][:, -1] = torch.from_numpy(np.random.default_rng(3).standard_normal((4, DA)) * np.linspace(0.5, 2, DA))
    odd = dict(x)
    odd["audio"] = x["audio"].clone()
    odd["audio"][:, -1] = odd["audio"][:, -1] * 4 + 3
    no_audio = dict(odd)
    no_audio["present"] = x["present"].clone()
    no_audio["present"][:, -1, 1] = 0.0
    with torch.no_grad():
        torch.testing.assert_close(
            _probs(trusted(**forward_kwargs(x))), _probs(net(**forward_kwargs(x))), atol=1e-4, rtol=0
        )
        torch.testing.assert_close(
            _probs(trusted(**forward_kwargs(odd))), _probs(net(**forward_kwargs(no_audio))), atol=1e-4, rtol=0
        )
        assert torch.all(
            trusted(**forward_kwargs(odd))["weights"][:, 1] < 0.05
        )  # it carried (next to) none of the decision


def words(seed: int = 5, **fields: object) -> object:
    """A small random text-only network (the words network of ``wrap(..., text_net=)``)."""
    torch.manual_seed(seed)
    return build_model("foal-net", {"text_dim": DT, "audio_dim": 0, "d_model": 16, "n_heads": 2, **fields}).eval()


@pytest.mark.parametrize("engine", ["unimse", "relevance"])  # UniMSE computes the subsets' target rows alone
def test_a_words_network_stands_in_wherever_the_target_has_no_voice(engine: str) -> None:
    net, text_net = small(engine), words()
    x = make_inputs()
    x["present"][0, -1, 1] = 0.0  # window 0: no audio at the target
    x["present"][1, -1, 0] = 0.0  # window 1: a voice without words
    with torch.no_grad():
        alone = _probs(text_net(**forward_kwargs(x)))  # it reads the text only: the target's voice changes nothing
        for prior, want in ((1.0, "words"), (0.0, "fused")):
            trusted = wrap(net, *fitted(prior, prior), text_net=text_net)
            out = trusted(**forward_kwargs(x))
            torch.testing.assert_close(out["weights"].sum(1), torch.ones(4))
            # no voice at the target: the words network's output, all the weight on the text
            torch.testing.assert_close(_probs(out)[0], alone[0], atol=1e-5, rtol=0)
            assert out["weights"][0].tolist() == [1.0, 0.0, 0.0]
            if want == "words":  # a voice never trusted: the words alone decide, and the voice carried nothing
                torch.testing.assert_close(_probs(out)[2:], alone[2:], atol=1e-5, rtol=0)
                assert torch.all(out["weights"][2:, 1] < 1e-6)
            else:  # a voice always trusted: the network's fused output, as without a words network
                torch.testing.assert_close(_probs(out)[1:], _probs(net(**forward_kwargs(x)))[1:], atol=1e-5, rtol=0)
        # without a words network the gate's text prediction is the network's own: another output
        shut = wrap(net, *fitted(1.0, 1.0))(**forward_kwargs(x))
        assert not torch.allclose(_probs(shut)[2:], alone[2:], atol=1e-3)


def test_a_words_network_that_cannot_stand_in_is_refused() -> None:
    tensors, cfg = fitted(0.1)
    with pytest.raises(ValueError, match="text alone"):
        wrap(small(), tensors, cfg, text_net=small("foal-net"))  # it reads the voice too
    with pytest.raises(ValueError, match="max_window"):
        wrap(small(), tensors, cfg, text_net=words(max_window=6))
    with pytest.raises(ValueError, match="causal"):
        wrap(small(), tensors, cfg, text_net=words(causal=False))
    with pytest.raises(ValueError, match="text_dim"):
        wrap(small(), tensors, cfg, text_net=words(text_dim=DT + 1))
    with pytest.raises(ValueError, match="voice-gated"):
        wrap(small(), {k: v for k, v in tensors.items() if k != "audio_mean"}, cfg, text_net=words())


@pytest.mark.parametrize("with_words", [False, True])
def test_the_trusted_graph_exports_to_onnx_with_the_same_outputs(tmp_path: Path, with_words: bool) -> None:
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from engines.export import example_inputs, export_onnx
    from engines.interface import FeatureSpec
    from engines.spec import engine_spec

    spec = FeatureSpec({"text": DT, "audio": DA, "video": 0})
    trusted = wrap(small(), *fitted(0.05), text_net=words() if with_words else None)
    export_onnx(trusted, spec, tmp_path / "model.onnx")
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    cases = [
        (1, 1, "random"),
        (3, 5, "random"),
        (6, 12, "random"),
        (5, 4, "no voice"),
        (4, 6, "voices"),
        (1, 3, "no voice"),
    ]
    for b, w, presence in cases:
        feed = example_inputs(engine_spec(spec), batch=b, window=w, seed=b + w)
        if presence == "no voice":  # no window needs the subsets: the graph runs them on its spare row alone
            feed["present"][..., 1] = 0.0
        elif presence == "voices":
            feed["present"][np.arange(b), feed["target"], 1] = 1.0
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {k: feed[k] for k in names}), strict=True))
        with torch.no_grad():
            ref = trusted(**forward_kwargs({k: torch.from_numpy(feed[k]) for k in names}))
        np.testing.assert_allclose(got["logits"], ref["logits"].numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(got["weights"], ref["weights"].numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(got["sentiment"], ref["sentiment"].numpy(), atol=1e-4, rtol=0)
        assert math.isfinite(float(got["sentiment"].sum()))


def test_windows_without_a_voice_skip_the_subsets_and_each_window_is_computed_as_if_alone() -> None:
    """Only windows whose target holds a voice (or two modalities) run the other subsets; the rest
    take the network's output as it is. No window's result depends on which others share its batch."""
    net = small()
    trusted = wrap(net, *fitted(0.05))
    x = make_inputs()
    x["present"][0, -1, 1] = 0.0  # windows 0 and 3: no audio at the target
    x["present"][3, -1, 1] = 0.0
    rows: list[int] = []
    forward, target_rows = net.forward, net.target_rows

    def counting(*args: object, **kw: object) -> object:
        rows.append(int(kw["projected"][0].shape[0]) if kw.get("projected") else int(args[1].shape[0]))  # type: ignore[index, attr-defined]
        return forward(*args, **kw)

    def counting_rows(*args: object) -> object:
        rows.append(int(args[1].shape[0]))  # type: ignore[attr-defined]
        return target_rows(*args)

    net.forward, net.target_rows = counting, counting_rows  # type: ignore[method-assign]
    with torch.no_grad():
        together = trusted(**forward_kwargs(x))
    net.forward, net.target_rows = forward, target_rows  # type: ignore[method-assign]
    assert rows == [4, 3 * 2], rows  # all four once; the three other subsets of windows 1 and 2, nothing more
    with torch.no_grad():
        raw = net(**forward_kwargs(x))
        for i in range(4):
            alone = trusted(**forward_kwargs({k: v[i : i + 1] if torch.is_tensor(v) else v for k, v in x.items()}))
            for key in ("logits", "sentiment", "weights"):
                torch.testing.assert_close(alone[key][0], together[key][i], atol=1e-5, rtol=0)
    for i in (0, 3):
        torch.testing.assert_close(_probs(together)[i], _probs(raw)[i], atol=1e-5, rtol=0)
        torch.testing.assert_close(together["sentiment"][i], raw["sentiment"][i], atol=1e-5, rtol=0)
        assert together["weights"][i].tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("fields", [{}, {"audio_dim": DA}])
def test_foal_net_with_nothing_at_the_target_gives_one_constant_whatever_the_window(fields: dict) -> None:
    """What ``constant_without_target`` promises (the voice gate computes that coalition on one row)."""
    net = words(**fields)
    assert net.constant_without_target  # type: ignore[attr-defined]
    with torch.no_grad():  # away from the initialisation
        for p in net.parameters():  # type: ignore[attr-defined]
            p.add_(0.3 * torch.randn_like(p))
    x = make_inputs()
    x["present"][torch.arange(4), x["target"], :] = 0.0
    with torch.no_grad():
        out = net(**forward_kwargs(x))  # type: ignore[operator]
    for key in ("logits", "sentiment"):
        torch.testing.assert_close(out[key], out[key][:1].expand_as(out[key]), atol=1e-6, rtol=0)
    x["present"][0, x["target"][0], 0] = 1.0  # the words back at one target: that row differs
    with torch.no_grad():
        back = net(**forward_kwargs(x))  # type: ignore[operator]
    assert not torch.allclose(back["logits"][0], out["logits"][0], atol=1e-4)


@pytest.mark.parametrize("voiced", [(1, 2), (0, 1, 2, 3), ()])
def test_with_a_words_network_each_window_runs_one_network_of_the_two(voiced: tuple[int, ...]) -> None:
    """The fused network runs only on the windows whose target has a voice, the words network only
    on those without; where a batch has none of one kind, that network runs on one row (never an
    empty batch) whose result is read nowhere: the same outputs as each window alone."""
    net, text_net = small(), words()
    trusted = wrap(net, *fitted(0.1), text_net=text_net)
    x = make_inputs()
    for i in range(4):
        x["present"][i, -1, 1] = 1.0 if i in voiced else 0.0
    fused_rows: list[int] = []
    words_rows: list[int] = []
    forward, target_rows, words_forward = net.forward, net.target_rows, text_net.forward

    def counting(*args: object, **kw: object) -> object:
        fused_rows.append(int(kw["projected"][0].shape[0]) if kw.get("projected") else int(args[1].shape[0]))  # type: ignore[index, attr-defined]
        return forward(*args, **kw)

    def counting_words(*args: object, **kw: object) -> object:
        words_rows.append(int(args[1].shape[0]))  # type: ignore[attr-defined]
        return words_forward(*args, **kw)

    net.forward, text_net.forward = counting, counting_words  # type: ignore[method-assign]
    with torch.no_grad():
        together = trusted(**forward_kwargs(x))
    net.forward, net.target_rows, text_net.forward = forward, target_rows, words_forward  # type: ignore[method-assign]
    n_voiced, n_silent = len(voiced), 4 - len(voiced)
    assert fused_rows == [max(1, n_voiced)], fused_rows  # the full run; the subsets take target_rows
    # the windows without a voice, then the coalitions without the voice of those with one: the
    # words at the target on each, nothing at the target on one row (Foal-Net's output is then a constant)
    assert words_rows == [max(1, n_silent), max(1, n_voiced) + 1], words_rows
    with torch.no_grad():
        for i in range(4):
            alone = trusted(**forward_kwargs({k: v[i : i + 1] if torch.is_tensor(v) else v for k, v in x.items()}))
            for key in ("logits", "sentiment", "weights"):
                torch.testing.assert_close(alone[key][0], together[key][i], atol=1e-5, rtol=0)


@pytest.mark.parametrize("causal", [True, False])
def test_a_causal_network_computes_the_subsets_target_rows_alone_with_the_same_result(causal: bool) -> None:
    """The subsets differ from the full run only at the target; a causal UniMSE computes that row
    alone from the full run's keys and values (target_rows), a fraction of running the copies
    whole, with the same outputs, targets anywhere in the window and any presence. A network that
    is not causal (its other rows see the target) runs the copies whole."""
    torch.manual_seed(3)
    net = build_model(
        "unimse", {"text_dim": DT, "audio_dim": DA, "d_model": 32, "n_heads": 4, "n_layers": 3, "causal": causal}
    ).eval()
    with torch.no_grad():  # away from the initialisation (zero adapters: a voice would change nothing)
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    trusted = wrap(net, *fitted(0.05))
    assert trusted.rows_only is causal
    rng = np.random.default_rng(5)
    b, w = 16, 7
    x = {
        "text": torch.randn(b, w, DT),
        "audio": torch.randn(b, w, DA),
        "video": None,
        "present": torch.from_numpy((rng.random((b, w, 3)) > 0.3).astype(np.float32)),
        "speakers": torch.from_numpy(rng.integers(0, 3, (b, w))),
        "valid": torch.ones(b, w),
        "target": torch.from_numpy(rng.integers(0, w, b)),
    }
    x["present"][..., 2] = 0.0
    for i in range(b):
        x["valid"][i, : int(rng.integers(0, int(x["target"][i]) + 1))] = 0.0  # left padding, the target valid
    with torch.no_grad():
        fast = trusted(**forward_kwargs(x))
        trusted.rows_only = False
        whole = trusted(**forward_kwargs(x))
    for key in ("logits", "sentiment", "weights"):
        torch.testing.assert_close(fast[key], whole[key], atol=1e-5, rtol=0)
    assert float(fast["weights"][:, 1].max()) > 0  # some windows' voices carried a share: the subsets ran
