"""Emoji as the words the English text model reads: "😡😡😡" -> "angry! angry! angry!".

Chat transcripts carry emoji; MiniLM's vocabulary has none of them, so it read "😡😡😡🤬" as
"[UNK]" and the shipped default labelled it joy 0.60 with the text's full weight (a newcomer's
report, 2026-12-06). :func:`emoji_words` replaces the common emoji of feelings with a word the model
reads as that feeling (measured on the shipped default, each word alone: "angry!" anger 0.72,
"sad" sadness 0.84, "scared!" fear 0.74, "disgusting!" disgust 0.70, "wow!" surprise 0.91,
"happy!" joy 0.89), and drops skin-tone modifiers, variation selectors and joiners. The table is
a hand-made reading of what these emoji usually mean in chats, not learnt: no labelled chat data
ships with this project. An emoji not in it stays as it is, and a transcript of nothing but such
symbols has no words the model reads (``streams.pipeline.has_words``). The English encoders apply
it as they normalise a text (``TextEncoder.clean``); the multilingual one, which reads emoji
itself, does not.
"""

from __future__ import annotations

#: emoji -> the word it is read as (one code point each; modifiers are dropped around them)
_GROUPS: dict[str, str] = {
    "angry!": "😠😡🤬👿💢😤🖕",  # "angry" alone: anger 0.38; "angry!": 0.72
    "sad": "😢😭😞😔😟☹🙁😩😫😿💔🥺😓😥😪😖😣",
    "happy": "😀😃😄😁😆😊🙂😉😍🥰😘😋😎🤗🥳😇☺😺😸😻🤩😌",
    "haha": "😂🤣😹😅",
    "love": "❤♥💕💖💗💙💚💛🧡💜💘💞",
    "scared": "😨😰😱😧😦🙀",
    "disgusting": "🤢🤮",
    "ugh": "🙄😒",
    "wow": "😮😯😲😳🤯",
    "good": "👍👌✅",
    "bad": "👎",
    "thanks": "🙏",
    "great": "👏🎉✨💯",
    "hmm": "😐😑😶🤔🤨",
}
EMOJI_WORDS: dict[str, str] = {ch: word for word, chars in _GROUPS.items() for ch in chars}
#: what may sit inside or after an emoji without meaning anything on its own: variation selectors,
#: the zero-width joiner, skin tones
_MODIFIERS = {"\ufe0e", "\ufe0f", "\u200d", *(chr(c) for c in range(0x1F3FB, 0x1F400))}


def emoji_words(text: str) -> str:
    """``text`` with each emoji of :data:`EMOJI_WORDS` read as its word (spaced from its
    neighbours) and the modifiers around emoji dropped; the text itself where it holds none."""
    if text.isascii():  # most lines
        return text
    out, changed = [], False
    for ch in text:
        word = EMOJI_WORDS.get(ch)
        if word is not None:
            out.append(f" {word} ")
            changed = True
        elif ch in _MODIFIERS:
            changed = True
        else:
            out.append(ch)
    return " ".join("".join(out).split()) if changed else text
