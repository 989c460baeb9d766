"""PII masking: positives, near-misses (checksums, lengths), CJK text, linear cost."""

from __future__ import annotations

import time

import pytest

from autoglm.server.audit import pii
from autoglm.server.audit.pii import mask_pii

# The GB 11643-1999 specimen number (check character X) and another published sample.
ID_X = "11010519491231002X"
ID_DIGIT = "440524188001010014"
VISA = "4111111111111111"  # payment-network test numbers, Luhn-valid
AMEX = "378282246310005"


def _luhn_complete(prefix: str) -> str:
    """`prefix` plus the Luhn check digit (independent of the module's implementation)."""
    for check in "0123456789":
        digits = [int(c) for c in prefix + check][::-1]
        total = sum(d if i % 2 == 0 else sum(divmod(2 * d, 10)) for i, d in enumerate(digits))
        if total % 10 == 0:
            return prefix + check
    raise AssertionError("unreachable")


def _break_last(number: str) -> str:
    return number[:-1] + ("1" if number[-1] != "1" else "2")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"身份证号{ID_X}，请核实", "身份证号[ID_CARD]，请核实"),
        (f"ID {ID_X.lower()}.", "ID [ID_CARD]."),
        (f"证件：{ID_DIGIT}", "证件：[ID_CARD]"),
        ("证件 110105 19491231 002X 已登记", "证件 [ID_CARD] 已登记"),
        ("手机13812345678谢谢", "手机[PHONE]谢谢"),
        ("call +86 138-1234-5678 now", "call [PHONE] now"),
        ("电话：+8613912345678", "电话：[PHONE]"),
        ("0086 139 1234 5678", "[PHONE]"),
        ("tel:19912345678,", "tel:[PHONE],"),
        ("US +1 415 555 2671; UK +44 20 7946 0958", "US [PHONE]; UK [PHONE]"),
        ("DE +49-30-1234567", "DE [PHONE]"),
        (f"card {VISA} ok", "card [BANK_CARD] ok"),
        ("卡号4111 1111 1111 1111，", "卡号[BANK_CARD]，"),
        ("5500-0000-0000-0004", "[BANK_CARD]"),
        (f"amex {AMEX}", "amex [BANK_CARD]"),
        ("mail zhang.san+cn@mail.example.com.cn!", "mail [EMAIL]!"),
        ("联系a_b@example.org谢谢", "联系[EMAIL]谢谢"),
        ("13812345678@163.com", "[EMAIL]"),
        # Full-width digits from CJK input methods.
        ("电话１３８１２３４５６７８", "电话[PHONE]"),
    ],
)
def test_masks(text: str, expected: str) -> None:
    assert mask_pii(text) == expected


def test_nineteen_digit_card_and_grouping_kept() -> None:
    card = _luhn_complete("622202123456789012")
    assert len(card) == 19
    spaced = " ".join([card[:4], card[4:8], card[8:12], card[12:16], card[16:]])
    assert mask_pii(f"账户 {spaced} 余额") == "账户 [BANK_CARD] 余额"


def test_two_numbers_separated_by_one_space_are_masked_separately() -> None:
    assert mask_pii(f"13812345678 {VISA}") == "[PHONE] [BANK_CARD]"
    assert mask_pii(f"{ID_X} 13812345678") == "[ID_CARD] [PHONE]"


def test_mixed_cjk_paragraph() -> None:
    text = (
        f"您好，我是张三，身份证{ID_DIGIT}，手机 138-1234-5678，"
        f"邮箱 zhangsan@example.cn，工资卡{VISA}。订单号 2024-0001 已付 1999 元。"
    )
    assert mask_pii(text) == (
        "您好，我是张三，身份证[ID_CARD]，手机 [PHONE]，"
        "邮箱 [EMAIL]，工资卡[BANK_CARD]。订单号 2024-0001 已付 1999 元。"
    )


@pytest.mark.parametrize(
    "text",
    [
        _break_last(ID_DIGIT),  # bad ID checksum (and, as 18 digits, not Luhn-valid either)
        "11010519491231002Y",  # not a check character
        "1101051949123100",  # too short for an ID
        "12812345678",  # 12x is not a mobile prefix
        "1381234567",  # 10 digits
        _break_last(VISA),  # bad Luhn
        "411111111111",  # 12 digits: too short for a card
        "+1 23",  # too short for E.164
        "+1234567890123456",  # 16 digits: too long for E.164, bad Luhn
        "2024-01-15 12:30:45",
        "version 1.2.3, port 50051, 3.14159265358979",
        "user@localhost",  # no dot in the domain
        "@example.com",
        "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    ],
)
def test_near_misses_are_kept(text: str) -> None:
    assert mask_pii(text) == text


def test_x_after_a_phone_number_is_text() -> None:
    assert mask_pii("13812345678X") == "[PHONE]X"


def test_bounded_work_per_group(monkeypatch: pytest.MonkeyPatch) -> None:
    # Counting instead of timing: the classifier runs a bounded number of times per digit group,
    # whatever the input, so masking stays linear.
    calls = 0
    classify = pii._classify

    def counting(digits: str, *, international: bool) -> str | None:
        nonlocal calls
        calls += 1
        return classify(digits, international=international)

    monkeypatch.setattr(pii, "_classify", counting)
    for text in ("1 " * 5000, "12-" * 5000, "1234 " * 5000, "+1 " * 5000):
        calls = 0
        mask_pii(text)
        assert calls <= 6 * 5000, text[:8]


@pytest.mark.parametrize(
    "text",
    [
        "a" * 200_000,  # e-mail local part without "@"
        "a@" + "a." * 100_000,  # domain labels without a TLD
        "a@" * 100_000,
        "." * 200_000,
        "1" * 200_000,
        "1 " * 100_000,
        "+1-" * 70_000,
        "我" * 200_000,
    ],
)
def test_adversarial_inputs_stay_fast(text: str) -> None:
    # A quadratic pattern needs minutes on 200 kB; linear ones take well under a second here.
    # The bound is loose on purpose (a busy 2-core CI box): it only has to catch the minutes.
    start = time.perf_counter()
    mask_pii(text)
    assert time.perf_counter() - start < 15.0
