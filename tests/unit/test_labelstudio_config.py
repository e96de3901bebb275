"""Reading a Label Studio answer back as a vote, and the signed image URLs (no server needed)."""

import pytest

from dspo.errors import Forbidden
from dspo.labelstudio import signing
from dspo.labelstudio.config import Answer, AnswerRejected, labeling_config, read_answer

ORDER = [31, 12, 27]  # the candidate ids shown as A, B, C


def choice(name: str, *values: str) -> dict:
    return {"from_name": name, "to_name": "lq", "type": "choices", "value": {"choices": list(values)}}


def text(name: str, value: str) -> dict:
    return {"from_name": name, "to_name": "lq", "type": "textarea", "value": {"text": [value]}}


def test_the_config_names_every_control_and_candidate() -> None:
    config = labeling_config(3)
    for part in ('name="best"', 'name="worst"', 'name="verdict"', 'name="content"', 'name="defect"'):
        assert part in config
    assert 'value="$c3"' in config and "$c4" not in config and 'value="$lq"' in config


def test_answers_become_votes_in_the_order_shown() -> None:
    result = [choice("best", "C"), choice("worst", "A"), text("content", " a cat "), text("defect", "fur")]
    assert read_answer(result, ORDER) == Answer("pick", 27, 31, "a cat", "fur")
    assert read_answer([choice("verdict", "No difference")], ORDER).outcome == "tie"
    assert read_answer([choice("verdict", "All bad"), text("content", "sky")], ORDER) == Answer(
        "all_bad", None, None, "sky", ""
    )
    assert read_answer([], ORDER, was_cancelled=True).outcome == "skip"


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        ([choice("best", "B"), choice("worst", "B")], "the same"),
        ([choice("best", "D"), choice("worst", "A")], "not one of this task's candidates"),
        ([choice("best", "A")], "choose a best and a worst"),
        ([choice("verdict", "Maybe")], "unknown verdict"),
        ([choice("verdict", "All bad"), choice("best", "A")], "together with"),
        ([choice("best", "A", "B"), choice("worst", "C")], "one at most"),
        ([{"from_name": "rating", "type": "rating", "value": {"rating": 3}}], "unknown control"),
    ],
)
def test_answers_that_break_a_rule_say_why(result: list, reason: str) -> None:
    with pytest.raises(AnswerRejected, match=reason):
        read_answer(result, ORDER)


def test_signed_urls_name_one_image_until_they_expire() -> None:
    path = signing.candidate_path(5, 7)
    url = signing.signed_url("http://x.test/", "key", path, 1000)
    assert url.startswith("http://x.test/api/v1/labelstudio/images/tasks/5/candidates/7?expires=1000&")
    good = signing.signature("key", path, 1000)
    signing.check("key", path, 1000, good, now=999)
    with pytest.raises(Forbidden, match="expired"):
        signing.check("key", path, 1000, good, now=1001)
    for other_path, other_key in ((signing.candidate_path(5, 8), "key"), (path, "another key")):
        with pytest.raises(Forbidden, match="signature"):
            signing.check(other_key, other_path, 1000, good, now=0)
    with pytest.raises(Forbidden, match="signature"):
        signing.check("key", path, 2000, good, now=0)  # a later expiry cannot be written in
