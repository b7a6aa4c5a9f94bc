"""Schema-salad fetchers that refuse the network; :func:`crate_fetcher` also refuses every
file outside the crate, so a hostile CWL document cannot pull host files in."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar
from urllib.parse import urldefrag, urlsplit
from urllib.request import url2pathname

from schema_salad.exceptions import ValidationException
from schema_salad.fetcher import DefaultFetcher

__all__ = ["OUTSIDE_ADVICE", "CrateFetcher", "OfflineFetcher", "OutsideRoots", "crate_fetcher",
           "file_path", "file_target", "is_inside"]

#: What to tell the author of a reference outside the crate.
OUTSIDE_ADVICE = ("nothing outside the crate is read: put the file in the crate and refer to "
                  "it by a relative path")


class OfflineFetcher(DefaultFetcher):
    """Loads ``file:`` documents; any other scheme is an error naming the URL."""

    def _refuse(self, url: str) -> None:
        if urlsplit(url).scheme not in ("", "file"):
            raise ValidationException(
                f"{url}: cratebridge runs offline and never downloads workflow parts; "
                "include the document in the workflow crate"
            )

    def fetch_text(self, url: str, content_types: list[str] | None = None) -> str:
        self._refuse(url)
        return super().fetch_text(url, content_types)

    def check_exists(self, url: str) -> bool:
        if urlsplit(url).scheme not in ("", "file"):
            return False
        return super().check_exists(url)


def file_path(url: str) -> Path | None:
    """The absolute path a local ``file:`` URL names, as written (links not followed).

    None for another scheme, a host in the URL, or a path the OS cannot name (a NUL byte).
    """
    split = urlsplit(url)
    if split.scheme != "file" or split.netloc not in ("", "localhost"):
        return None
    path = url2pathname(split.path)
    return Path(os.path.abspath(path)) if "\0" not in path else None


def file_target(url: str) -> Path | None:
    """The real path a local ``file:`` URL names (symlinks and ``..`` resolved), else None."""
    path = file_path(url)
    return Path(os.path.realpath(path)) if path is not None else None


def is_inside(path: Path, roots: Sequence[Path]) -> bool:
    """Whether the real ``path`` lies in one of the real folders ``roots``."""
    return any(path.is_relative_to(root) for root in roots)


class OutsideRoots(ValidationException):
    """A reference that is not a file inside the crate; never holds the file's content.

    Schema-salad may later set ``file`` and ``start`` (where the reference is written) and
    prefix ``str()`` with them; ``message`` stays the plain text.
    """

    def __init__(self, reference: str, document: str | None, target: Path | None) -> None:
        leads = f"leads outside the crate (to {target})" if target else \
            "is not a local file URL"
        super().__init__(f"{reference!r} {leads}; {OUTSIDE_ADVICE}")
        self.reference = reference
        self.document = document
        self.target = target


class CrateFetcher(OfflineFetcher):
    """Loads only ``file:`` documents whose real path lies inside :attr:`roots`.

    Make one with :func:`crate_fetcher`. Schema-salad builds many instances and at places
    wraps or swallows their errors (a ``$schemas`` warning), so the instances of one class
    share ``refused``, every refusal in order, for the caller to check after loading; and
    ``written``, each URL that ``urljoin`` made mapped to the reference as written and
    the document it was written in, so that a refusal can name what the author wrote.
    """

    roots: ClassVar[tuple[Path, ...]]
    refused: ClassVar[list[OutsideRoots]]
    written: ClassVar[dict[str, tuple[str, str]]]

    def urljoin(self, base_url: str, url: str) -> str:
        joined = super().urljoin(base_url, url)
        if joined != url:
            document = urldefrag(base_url)[0]
            self.written.setdefault(joined, (url, document))
            self.written.setdefault(urldefrag(joined)[0], (urldefrag(url)[0], document))
        return joined

    def _inside(self, url: str) -> Path:
        """The real path ``url`` names, or a recorded refusal if it is not inside the roots."""
        target = file_target(url)
        if target is not None and is_inside(target, self.roots):
            return target
        reference, document = self.written.get(url, (url, None))
        refusal = OutsideRoots(reference, document, target)
        self.refused.append(refusal)
        raise refusal

    def fetch_text(self, url: str, content_types: list[str] | None = None) -> str:
        self._refuse(url)
        # read the path that was checked, not the URL again (``file:////etc`` and the like)
        path = self._inside(url)
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValidationException(f"cannot read {url}: {exc}") from None

    def check_exists(self, url: str) -> bool:
        if urlsplit(url).scheme != "file":
            return super().check_exists(url)
        # refused, not False: an answer about a host path would tell the author it exists
        return self._inside(url).exists()


def crate_fetcher(roots: Sequence[Path]) -> type[CrateFetcher]:
    """A fetcher class for ``LoadingContext.fetcher_constructor`` confined to ``roots``.

    Every document it loads or checks must resolve, symlinks and ``..`` resolved, into one
    of ``roots``; anything else raises :class:`OutsideRoots` (a ``ValidationException``
    naming the reference as written, never the file's content) and is recorded in the
    class's ``refused``. Other URL schemes are refused as by :class:`OfflineFetcher`.
    Make a new class for each load: ``refused`` and ``written`` belong to it.
    """
    real = tuple(Path(os.path.realpath(root)) for root in roots)
    if not real:
        raise ValueError("crate_fetcher needs at least one root folder")

    class BoundCrateFetcher(CrateFetcher):
        pass

    BoundCrateFetcher.roots = real
    BoundCrateFetcher.refused = []
    BoundCrateFetcher.written = {}
    return BoundCrateFetcher
