"""JSON that decodes to strings which are not text.

JSON may escape half of a UTF-16 surrogate pair alone ("\\ud800"); `json.loads` turns it
into a str that cannot be encoded as UTF-8, so it fails wherever the value goes next (a
hash, a protobuf field, an impression upload, a msgpack digest) instead of where the input
is read and its sender can be told. msgpack and protobuf refuse such strings when decoding.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

# A JSON escape of a UTF-16 surrogate: the only way a lone one gets into a decoded document.
SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD][89a-fA-F]")


def lone_surrogate(data: bytes, document: Any) -> str | None:
    """Why `document`, decoded from the JSON `data`, is not text; None when it is. Only
    data holding a surrogate escape (rare: a valid pair is one too) pays for the walk."""
    if SURROGATE_ESCAPE.search(data) is None:
        return None
    try:
        json.dumps(document, ensure_ascii=False).encode()
    except UnicodeEncodeError as err:
        return f"a string holds a lone UTF-16 surrogate ({err.object[err.start]!r}), not text"
    return None
