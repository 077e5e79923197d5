"""Which provider a request goes to: the first whose model patterns match the model sent.

Built once from the settings (``Providers.from_settings``); a request asks ``route`` with
the model it sends (after a prompt's pin) and gets the provider, or None when no provider
serves that model (the caller answers 404 naming it). A request without a model (a listing,
a file upload) goes to the default: the first OpenAI-shaped provider. Provider URLs and keys
come only from the config and the environment, never from a request, so no request can pick
a host.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from proxy.config import ProviderConfig, ProviderKind, Settings


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    kind: ProviderKind
    base_url: str
    #: Sent in place of the client's `Authorization`; None: the client's is forwarded.
    api_key: str | None = field(repr=False)
    models: tuple[str, ...]
    _pattern: re.Pattern[str] = field(repr=False, compare=False)
    #: ``kind == "anthropic"``: ``max_tokens`` for a request that names none.
    default_max_tokens: int = 4096

    @classmethod
    def of(cls, config: ProviderConfig, api_key: str | None) -> Provider:
        # One compiled alternation per provider: a route is one match, not one per glob.
        pattern = re.compile("|".join(f"(?:{fnmatch.translate(m)})" for m in config.models))
        return cls(
            config.name,
            config.kind,
            config.base_url,
            api_key,
            config.models,
            pattern,
            config.default_max_tokens,
        )

    @property
    def messages_api(self) -> bool:
        """Speaks Anthropic's Messages API: chat completions reach it translated."""
        return self.kind == "anthropic"

    def serves(self, model: str) -> bool:
        return self._pattern.match(model) is not None


class Providers:
    __slots__ = ("_cache", "all", "default", "messages_default")

    def __init__(self, providers: Sequence[Provider]) -> None:
        if not providers:
            raise ValueError("at least one provider")
        self.all = tuple(providers)
        #: Where a request naming no model goes (file uploads, calls by id): the first
        #: OpenAI-shaped provider, as only those take such requests.
        self.default = next((p for p in self.all if not p.messages_api), self.all[0])
        #: Where a Messages API request naming no model goes (batches by id): the first
        #: `kind: anthropic` provider.
        self.messages_default = next((p for p in self.all if p.messages_api), self.default)
        #: model -> its provider (or None), as routed before: a request does a lookup.
        #: Bounded: a caller sending a new model name each time cannot grow it for ever.
        self._cache: dict[str, Provider | None] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Providers:
        return cls(
            [
                Provider.of(config, settings.provider_key(config))
                for config in settings.config.provider_list()
            ]
        )

    def route(self, model: str | None, *, remember: bool = True) -> Provider | None:
        """``remember``: keep the answer for the next request naming this model (not for
        a listing's thousands of names, which would crowd out the ones traffic uses)."""
        if model is None:
            return self.default
        if model in self._cache:
            return self._cache[model]
        chosen = next((p for p in self.all if p.serves(model)), None)
        # A caller's made-up names are never kept past the bound, nor long ones at all.
        if remember and len(model) <= _CACHED_NAME_LIMIT and len(self._cache) < _CACHE_LIMIT:
            self._cache[model] = chosen
        return chosen


_CACHE_LIMIT = 4096
_CACHED_NAME_LIMIT = 256
