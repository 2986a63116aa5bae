"""How a flagd flag's answer is written as the engine's ``Decision``, and read back.

Both dialects answer with the same ``Decision(treatment, label, config, change_number)``,
so every lane, the impressions and the metrics handle flagd flags unchanged:

- ``treatment`` is the variant's name (``control`` when there is no variant: disabled,
  no default variant, or an error);
- ``label`` says why, and maps one-to-one to flagd's reason (``REASONS``) and, for
  errors, to flagd's error code (``ERRORS``);
- ``config`` is the variant's value as JSON text, so a Split-style client reading a
  flagd flag gets the value as its "dynamic config";
- the typed value itself is in ``CompiledFlag.values[treatment]`` for typed answers.

A variant may be literally named ``control``: whether an answer has a value is told by its
label (``WITHOUT_VALUE``), never by the treatment.
"""

from __future__ import annotations

from typing import Final

from fader.rules.result import LABEL_EXCEPTION

STATIC: Final = "STATIC"
TARGETING_MATCH: Final = "TARGETING_MATCH"
DEFAULT: Final = "DEFAULT"
DISABLED: Final = "DISABLED"
ERROR: Final = "ERROR"

PARSE_ERROR: Final = "PARSE_ERROR"
GENERAL: Final = "GENERAL"

LABEL_STATIC: Final = "static"
LABEL_TARGETING_MATCH: Final = "targeting match"
LABEL_DEFAULT_VARIANT: Final = "default variant"
LABEL_NO_DEFAULT_VARIANT: Final = "no default variant"
LABEL_DISABLED: Final = "disabled"
LABEL_TARGETING_ERROR: Final = "targeting error"
LABEL_UNKNOWN_VARIANT: Final = "unknown variant"

REASONS: Final = {
    LABEL_STATIC: STATIC,
    LABEL_TARGETING_MATCH: TARGETING_MATCH,
    LABEL_DEFAULT_VARIANT: DEFAULT,
    LABEL_NO_DEFAULT_VARIANT: DEFAULT,
    LABEL_DISABLED: DISABLED,
}

ERRORS: Final = {
    LABEL_TARGETING_ERROR: PARSE_ERROR,
    LABEL_UNKNOWN_VARIANT: GENERAL,
    LABEL_EXCEPTION: GENERAL,
}

ERROR_MESSAGES: Final = {
    LABEL_TARGETING_ERROR: "the flag's targeting cannot be evaluated (see the snapshot's warnings)",
    LABEL_UNKNOWN_VARIANT: "targeting chose a variant the flag does not have",
    LABEL_EXCEPTION: "the flag's targeting failed to evaluate",
}

WITHOUT_VALUE: Final = frozenset((LABEL_NO_DEFAULT_VARIANT, LABEL_DISABLED, *ERRORS))
