"""The tools that talk to emostream from outside, built on :mod:`client`: ``emostream feed``
(replay dialogue files into the input topics, as a call center's front end would), ``subscribe``
(print events, alerts and call reports as they come), ``demo`` (the local stack, a worker and
sample calls, end to end), and the dialogue files they read (:mod:`tools.dialogues`)."""
