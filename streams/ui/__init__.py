"""The live supervisor page (``emostream ui``): :mod:`streams.ui.board` builds the view from the
output topics, :mod:`streams.ui.server` serves it (aiohttp, server-sent events), ``static/`` is
the page."""
