"""Scripted calls the analytics and supervisor-page tests share."""

from __future__ import annotations

from tools.dialogues import Dialogue, Utterance

#: a customer who gets angry (turns 0-6: the anger rule and its friends raise by turn 6), then
#: calms down once the agent refunds (turns 7-10)
ESCALATING = [
    ("agent", "Thank you for calling, how can I help you today?"),
    ("customer", "Hi, I was charged twice for my subscription this month."),
    ("agent", "Let me check that for you."),
    ("customer", "This is the third time this has happened. I am really annoyed."),
    ("agent", "I understand, one moment please."),
    ("customer", "No, this is outrageous! I am furious, you people keep stealing my money!"),
    ("customer", "I am sick and tired of this garbage! Cancel everything right now, I am so angry!"),
    ("agent", "I have refunded both charges and added a month for free."),
    ("customer", "Oh. Okay, thank you, that is fine."),
    ("agent", "Is there anything else I can do for you?"),
    ("customer", "No, that is all, thanks. Have a good day."),
]
ANGRY_PART = 7  # the escalation alone, without the recovery

PLEASANT = [
    ("agent", "Good morning, how can I help?"),
    ("customer", "Hi! I just wanted to say the new plan is great, thank you so much!"),
    ("agent", "That is wonderful to hear, thank you!"),
    ("customer", "Have a lovely day!"),
]

#: an upset customer, and an agent who answers with the empathy statements contact centers teach:
#: the text model alone reads them as anger (0.73 and 0.85 in this call), which the stream's
#: engine.acknowledgements = "agents" turns into neutral and sadness (engines/features/acknowledge.py)
EMPATHETIC = [
    ("agent", "Thank you for calling, how can I help you today?"),
    ("customer", "I was charged twice again and nobody fixed it last time."),
    ("customer", "This is outrageous! I am furious, you people keep stealing my money!"),
    ("agent", "I understand your frustration."),
    ("customer", "I am sick and tired of this garbage! Cancel everything right now!"),
    ("agent", "I completely understand why you're upset, and I'd be angry too."),
]
#: the same call with an agent who snaps back (anger 0.87 in context)
SNAPPING = [*EMPATHETIC[:5], ("agent", "Stop shouting at me! I already told you that twice.")]


def scripted(call_id: str, script: list[tuple[str, str]], spacing_s: float) -> Dialogue:
    """A text-only call of (speaker, text) lines, one every ``spacing_s`` seconds."""
    utts = tuple(
        Utterance(call_id=call_id, utterance_id=f"u{i}", seq=i, speaker=s, text=t, start_s=spacing_s * i)
        for i, (s, t) in enumerate(script)
    )
    return Dialogue(call_id=call_id, utterances=utts)
