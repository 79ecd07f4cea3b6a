"""The web page: ``python -m cloak serve`` serves a page on this machine to cloak photos in the browser.

:mod:`~cloak.web.server` starts it, :mod:`~cloak.web.app` is its HTTP API,
:mod:`~cloak.web.uploads` reads and checks the uploads, :mod:`~cloak.web.worker` the queue that cloaks the photos, :mod:`~cloak.web.strengths`
the presets it offers, :mod:`~cloak.web.verdicts` the reports in plain words and
:mod:`~cloak.web.names` the handling of file names from the browser; the page
itself is ``static/``.
"""
