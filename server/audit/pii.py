"""Mask personal data in prompt/completion text before it reaches an audit record.

`mask_pii` replaces, keeping the surrounding text:
  - e-mail addresses                                        → [EMAIL]
  - Chinese resident ID-card numbers (GB 11643-1999, 18 characters, the last one may be X,
    ISO 7064 MOD 11-2 check character verified)             → [ID_CARD]
  - mainland mobile numbers 1[3-9]xxxxxxxxx, optionally +86/0086, spaces or dashes,
    and international numbers written E.164-style (+CC …, 8–15 digits) → [PHONE]
  - bank-card numbers, 13–19 digits with optional spaces/dashes, Luhn-valid → [BANK_CARD]

Design: one linear regex finds each maximal "digit run" (digits joined by single spaces or dashes,
ASCII or full-width), then plain Python classifies windows of the run's groups. That keeps every
pattern free of nested ambiguous quantifiers (no catastrophic backtracking: each character is
looked at a bounded number of times) and lets two numbers separated by one space — a phone number
then a card number — be masked separately.

Recall is preferred over precision, as the text goes to an audit log: a digit run adjacent to
letters is still examined, and checksums (not context words) are what filter out false positives.
Not covered: landline numbers, national-format foreign numbers without "+", numbers split by
other separators (dots, parentheses), and PII in free-text form (names, addresses).
"""

from __future__ import annotations

import re

__all__ = ["mask_pii"]

ID_CARD = "[ID_CARD]"
PHONE = "[PHONE]"
BANK_CARD = "[BANK_CARD]"
EMAIL = "[EMAIL]"

# Full-width digits (U+FF10–FF19) are common in CJK input methods; they are validated as ASCII.
_DIGIT = "0-9\uff10-\uff19"
_TO_ASCII = str.maketrans(
    "\uff10\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18\uff19", "0123456789"
)

# The lookbehind lets a match start only at the first character of a local part, so a long run of
# local-part characters without "@" is scanned once, not once per starting position (which would be
# quadratic). The possessive local part never backtracks; the domain has one unambiguous split
# (labels end with a mandatory dot) so its backtracking is bounded by the domain's length.
_EMAIL_RE = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}+@(?:[A-Za-z0-9-]{1,63}\.){1,8}[A-Za-z]{2,24}"
    r"(?![A-Za-z0-9-])"
)
# A maximal run of digits joined by single separators, with an optional trailing X (ID cards).
# Each repetition consumes exactly one digit and the separator is optional but never a digit, so
# there is one way to match any input: linear time.
# A leading "+" marks an international number.
_RUN_RE = re.compile(rf"\+?[{_DIGIT}](?:[ -]?[{_DIGIT}])*(?:[Xx](?![A-Za-z0-9]))?")
_MOBILE_RE = re.compile(r"(?:0086|86)?1[3-9][0-9]{9}")

# GB 11643-1999 weights 2^(17-i) mod 11 and the check character for each sum mod 11.
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
_MAX_WINDOW_DIGITS = 19  # the longest thing we mask is a 19-digit card number
_MIN_WINDOW_DIGITS = 8  # the shortest: an E.164 number with a 1-digit country code
# Numbers are written in at most 5 groups ("6222 0212 3456 7890 123", "+86 138 1234 5678"); the
# bound keeps a run of many one-digit groups ("1 2 3 4 …") at a constant cost per group.
_MAX_WINDOW_GROUPS = 6


def mask_pii(text: str) -> str:
    """`text` with e-mails, ID-card, phone and bank-card numbers replaced by typed placeholders."""
    # E-mails first: their digits ("13812345678@163.com") must not be read as a phone number.
    text = _EMAIL_RE.sub(EMAIL, text)
    return _RUN_RE.sub(_mask_run, text)


def _mask_run(match: re.Match[str]) -> str:
    run = match.group()
    plus = run.startswith("+")
    # Groups and the separators after them; the separators are kept as written.
    groups = re.split(r"([ -])", run[1:] if plus else run)
    parts, seps = groups[0::2], groups[1::2]
    out: list[str] = []
    i = 0
    while i < len(parts):
        end, label = _longest_window(parts, i, international=plus and i == 0)
        if label is None:
            out.append(("+" if plus and i == 0 else "") + parts[i])
            end = i + 1
        else:
            out.append(label)  # a "+" before the number is part of it, masked too
        if end <= len(seps):
            out.append(seps[end - 1])
        i = end
    return "".join(out)


def _longest_window(parts: list[str], i: int, *, international: bool) -> tuple[int, str | None]:
    """The end (exclusive) and label of the longest masked window of groups starting at `i`."""
    best: tuple[int, str | None] = (i + 1, None)
    digits = ""
    for j in range(i, min(len(parts), i + _MAX_WINDOW_GROUPS)):
        digits += parts[j].translate(_TO_ASCII)
        if len(digits) > _MAX_WINDOW_DIGITS:
            break
        if len(digits) < _MIN_WINDOW_DIGITS:
            continue
        label = _classify(digits, international=international)
        if label is not None:
            best = (j + 1, label)
    return best


def _classify(digits: str, *, international: bool) -> str | None:
    """The placeholder replacing `digits` (ASCII digits, maybe a final X), None to keep it."""
    if digits[-1] in "Xx":
        if len(digits) == 18 and _id_checksum_ok(digits):
            return ID_CARD
        # Not an ID card: the X is ordinary text after a number that may still be PII.
        label = _classify(digits[:-1], international=international)
        return None if label is None else label + digits[-1]
    if len(digits) == 18 and _id_checksum_ok(digits):
        return ID_CARD
    if _MOBILE_RE.fullmatch(digits):
        return PHONE
    # E.164 allows at most 15 digits including the country code; 8 excludes short codes.
    if international and 8 <= len(digits) <= 15 and digits[0] != "0":
        return PHONE
    if 13 <= len(digits) <= 19 and _luhn_ok(digits):
        return BANK_CARD
    return None


def _id_checksum_ok(number: str) -> bool:
    """ISO 7064 MOD 11-2 check character of an 18-character resident ID number."""
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11] == number[17].upper()


def _luhn_ok(number: str) -> bool:
    total = 0
    for k, ch in enumerate(reversed(number)):
        d = int(ch)
        if k % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0
