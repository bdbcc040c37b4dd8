"""Emoji as the words the English text model reads: "😡😡😡" -> "angry! angry! angry!".

Chat transcripts carry emoji; MiniLM's vocabulary has none of them, so it read "😡😡😡🤬" as
"[UNK]" and the shipped default labelled it joy 0.60 with the text's full weight (a newcomer's
report, 2026-12-06). :func:`emoji_words` replaces the common emoji of feelings with a word the model
reads as that feeling (measured on the shipped default, each word alone: "angry!" anger 0.72,
"sad" sadness 0.84, "scared" fear 0.75, "disgusting" disgust 0.75, "ugh" disgust 0.64, "wow"
surprise 0.91, "happy!" joy 0.89; "bad" is neutral 0.68 and "hmm" neutral 0.71), and drops the
skin-tone modifiers and variation selectors of a text. An emoji inside a zero-width-joiner
sequence ("🙂‍↔️", a shaking head; "😮‍💨", exhaling) means what the sequence means, not what its
first emoji does: such a sequence is left as it is. The table is a hand-made reading of what these
emoji usually mean in chats, not learnt: no labelled chat data ships with this project. An emoji
not in it stays as it is, and a transcript of nothing but such symbols has no words the English
model reads (``streams.pipeline.has_words``). The English encoders apply it as they normalise a
text (``TextEncoder.clean``); the multilingual one, which reads emoji itself, does not.
"""

from __future__ import annotations

#: emoji -> the word it is read as (one code point each; modifiers are dropped around them)
_GROUPS: dict[str, str] = {
    "angry!": "😠😡🤬👿💢😤🖕",  # "angry" alone: anger 0.38; "angry!": 0.72
    "sad": "😢😭😞😔😟☹🙁😩😫😿💔🥺😓😥😖😣",
    "happy!": "😀😃😄😁😆😊🙂😉😍🥰😘😋😎🤗🥳😇☺😺😸😻🤩😌",  # "happy": joy 0.71, "happy!": 0.89
    "haha": "😂🤣😹😅",
    "love": "❤♥💕💖💗💙💚💛🧡💜💘💞",
    "scared": "😨😰😱😧😦🙀",
    "disgusting": "🤢🤮",
    "ugh": "🙄😒🤦",
    "wow": "😮😯😲🤯",
    "good": "👍👌✅",
    "bad": "👎",
    "thanks": "🙏",
    "great": "👏🎉✨💯",
    "hmm": "😐😑😶🤔🤨",
}
EMOJI_WORDS: dict[str, str] = {ch: word for word, chars in _GROUPS.items() for ch in chars}
#: what may sit after an emoji without meaning anything on its own: variation selectors, skin tones
_MODIFIERS = {"\ufe0e", "\ufe0f", *(chr(c) for c in range(0x1F3FB, 0x1F400))}
_ZWJ = "\u200d"  # joins emoji into one ("🙂‍↔️"): such a sequence is left as it is


def emoji_words(text: str) -> str:
    """``text`` with each emoji of :data:`EMOJI_WORDS` read as its word (spaced from its
    neighbours), unless it is part of a zero-width-joiner sequence, and the variation selectors and
    skin tones dropped; the text itself where it holds none."""
    if text.isascii():  # most lines
        return text
    kept = [ch for ch in text if ch not in _MODIFIERS]
    out, changed = [], len(kept) != len(text)
    for i, ch in enumerate(kept):
        word = EMOJI_WORDS.get(ch)
        joined = (i > 0 and kept[i - 1] == _ZWJ) or (i + 1 < len(kept) and kept[i + 1] == _ZWJ)
        if word is not None and not joined:
            out.append(f" {word} ")
            changed = True
        else:
            out.append(ch)
    return " ".join("".join(out).split()) if changed else text
