"""``cratebridge serve``: a GA4GH WES 1.1 endpoint in front of the ``cratebridge run`` pipeline.

One-way modules, each importing only those above it in this list:

- :mod:`~cratebridge.service.store`: the database (SQLite or PostgreSQL), its schema
  and migrations, and the run rows;
- :mod:`~cratebridge.service.auth`: bearer tokens and who may see which run;
- :mod:`~cratebridge.service.multipart`: a bounded ``multipart/form-data`` reader;
- :mod:`~cratebridge.service.wes`: WES states from cratebridge outcomes, the documents;
- :mod:`~cratebridge.service.scheduler`: the queue, the runs as child processes,
  cancelling, and settling what a killed server left;
- :mod:`~cratebridge.service.app`: the HTTP routes and the server.

See ``docs/service.md``.
"""

from __future__ import annotations

__all__: list[str] = []
