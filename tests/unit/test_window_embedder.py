"""The window embedder every engine's network opens with (engines/models/common.py)."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

from engines.models import ENGINES, forward_kwargs, model_module  # noqa: E402
from engines.models.common import WindowEmbedder  # noqa: E402
from tests.unit.model_inputs import DA, DT, make_inputs  # noqa: E402


def make(engine: str, **kw: Any) -> Any:
    torch.manual_seed(0)
    mod = model_module(engine)
    return mod.Net(mod.Config(text_dim=DT, audio_dim=DA, d_model=16, n_heads=2, max_window=4, **kw)).eval()


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_every_engine_projects_and_places_utterances_through_the_shared_embedder(engine: str) -> None:
    net = make(engine)
    assert isinstance(net, WindowEmbedder)
    names = set(net.state_dict())  # the names the shipped weights use
    assert {"speaker_emb.weight", "same_emb.weight", "pos_emb.weight"} <= names
    assert {"proj.text.mean", "proj.audio.std"} <= names and not any(n.startswith("proj.video") for n in names)
    x = make_inputs()
    with torch.no_grad():
        base = net(**forward_kwargs(x))["logits"]
        calls = []
        net.project = lambda *a: calls.append(1) or WindowEmbedder.project(net, *a)
        torch.testing.assert_close(net(**forward_kwargs(x))["logits"], base)
        assert calls == [1]  # the projections come from the embedder, once a forward pass
        net.place = lambda *a: WindowEmbedder.place(net, *a) * 0.0  # no speaker, same-speaker or distance
        assert not torch.allclose(net(**forward_kwargs(x))["logits"], base)  # the places come from it too


def test_place_clips_speakers_and_distances_and_marks_the_targets_speaker() -> None:
    net = make("unimse")
    speakers = torch.tensor([[0, 1, 11, 0, 2, 1]])  # 11: past max_speakers (8) (clipped to its last)
    same_t = torch.tensor([[1, 0, 0, 1, 0, 0]])
    rel = torch.tensor([[9.0, 3.0, 1.0, 0.0, -1.0, -6.0]])  # clipped to +-max_window (4)
    with torch.no_grad():
        got = net.place(speakers, same_t, rel)[0]
        spk, same, pos = net.speaker_emb.weight, net.same_emb.weight, net.pos_emb.weight
        last = net.cfg.max_speakers - 1
        want = [
            spk[0] + same[1] + pos[8],
            spk[1] + same[0] + pos[7],
            spk[last] + same[0] + pos[5],
            spk[0] + same[1] + pos[4],
            spk[2] + same[0] + pos[3],
            spk[1] + same[0] + pos[0],
        ]
    torch.testing.assert_close(got, torch.stack(want))
