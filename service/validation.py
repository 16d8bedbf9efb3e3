"""Input limits shared by REST and gRPC, so both refuse the same things with the same words."""

from __future__ import annotations

from service.errors import ApiError
from vigil.settings import Settings


def validate_texts(texts: list[str], settings: Settings) -> list[str]:
    if not texts:
        raise ApiError(400, "empty_request", "no text to classify: send `text` or a non-empty `texts` list")
    if len(texts) > settings.max_texts_per_request:
        raise ApiError(413, "too_many_texts",
                       f"{len(texts)} texts in one request; the limit is {settings.max_texts_per_request}")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ApiError(422, "invalid_type", f"texts[{index}] is {type(text).__name__}, expected a string")
        if not text.strip():
            raise ApiError(400, "empty_text", f"texts[{index}] is empty or only white space")
        if len(text) > settings.max_text_chars:
            raise ApiError(413, "text_too_long",
                           f"texts[{index}] has {len(text)} characters; the limit is {settings.max_text_chars}")
    return texts
