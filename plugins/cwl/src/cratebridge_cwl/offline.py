"""A schema-salad fetcher that refuses the network: CWL documents load from disk only."""

from __future__ import annotations

from urllib.parse import urlsplit

from schema_salad.exceptions import ValidationException
from schema_salad.fetcher import DefaultFetcher

__all__ = ["OfflineFetcher"]


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
