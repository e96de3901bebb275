"""The Label Studio side of a Best-of-N / Worst-of-N task: the labeling config, the task data, and
reading an answer (an annotation's `result`) back as a vote.

A pushed task shows the LQ reference and the task's N candidates (cropped to the region, which is
outlined) under the letters A, B, C, ...; the letters stand for the candidate ids in the task data's
`dspo_candidates`, in that order, so that the answer is read with the order the annotator saw.
Nothing here talks to Label Studio or to the database."""

import string
from dataclasses import dataclass
from html import escape

BEST, WORST, VERDICT, CONTENT, DEFECT = "best", "worst", "verdict", "content", "defect"
NO_DIFFERENCE, ALL_BAD = "No difference", "All bad"
VERDICTS = {NO_DIFFERENCE: "tie", ALL_BAD: "all_bad"}
LETTERS = string.ascii_uppercase  # N is at most 16 (Settings.default_candidates, projects' n_candidates)
TASK_ID_KEY, CANDIDATES_KEY = "dspo_task_id", "dspo_candidates"


def image_key(position: int) -> str:
    """The task-data key (and Image tag name) of the candidate shown at `position` (0-based)."""
    return f"c{position + 1}"


def labeling_config(n_candidates: int) -> str:
    """The labeling config for tasks of up to `n_candidates` candidates: the reference and the
    candidates side by side, then best, worst, the two verdicts, and the two texts."""
    letters = LETTERS[:n_candidates]
    cells = "\n".join(
        f'    <View className="dspo-cell"><Header value="{letter}" size="4"/>'
        f'<Image name="{image_key(i)}" value="${image_key(i)}"/></View>'
        for i, letter in enumerate(letters)
    )
    choices = "".join(f'<Choice value="{letter}"/>' for letter in letters)
    return f"""<View>
  <Style>.dspo-grid {{ display: flex; flex-wrap: wrap; gap: 8px; }} .dspo-cell {{ width: 256px; }}</Style>
  <View className="dspo-grid">
    <View className="dspo-cell"><Header value="LQ reference" size="4"/><Image name="lq" value="$lq"/></View>
{cells}
  </View>
  <Header value="Best candidate: the one that looks most like a real, sharp photograph of the region"/>
  <Choices name="{BEST}" toName="lq" choice="single-radio" showInline="true">{choices}</Choices>
  <Header value="Worst candidate"/>
  <Choices name="{WORST}" toName="lq" choice="single-radio" showInline="true">{choices}</Choices>
  <Header value="Or, instead of best and worst"/>
  <Choices name="{VERDICT}" toName="lq" choice="single-radio" showInline="true">
    <Choice value="{NO_DIFFERENCE}"/><Choice value="{ALL_BAD}"/>
  </Choices>
  <Header value="What does the region really show?"/>
  <TextArea name="{CONTENT}" toName="lq" maxSubmissions="1" editable="true" rows="2"/>
  <Header value="What is wrong in the worst candidate?"/>
  <TextArea name="{DEFECT}" toName="lq" maxSubmissions="1" editable="true" rows="2"/>
</View>
"""


def instructions_html(instructions: str) -> str:
    """The project's instructions for Label Studio's instruction panel (which renders HTML)."""
    return "<p>" + escape(instructions).replace("\n\n", "</p><p>").replace("\n", "<br>") + "</p>"


class AnswerRejected(ValueError):
    """An answer that breaks a rule; the message says which, for the admin."""


@dataclass(frozen=True)
class Answer:
    """An annotation read as a vote (outcome pick | tie | all_bad | skip)."""

    outcome: str
    best_candidate_id: int | None
    worst_candidate_id: int | None
    content_text: str
    defect_text: str


def _single(choices: dict[str, list[str]], name: str) -> str | None:
    values = choices.get(name, [])
    if len(values) > 1:
        raise AnswerRejected(f"{name!r} has {len(values)} choices ({', '.join(values)}); one at most")
    return values[0] if values else None


def _candidate(letter: str | None, order: list[int], name: str) -> int | None:
    if letter is None:
        return None
    if len(letter) != 1 or letter not in LETTERS[: len(order)]:
        raise AnswerRejected(
            f"{name} is {letter!r}, not one of this task's candidates {', '.join(LETTERS[: len(order)])}"
        )
    return order[LETTERS.index(letter)]


def read_answer(result: list[dict], order: list[int], *, was_cancelled: bool = False) -> Answer:
    """The vote that an annotation's result stands for, `order` being the candidate ids shown as A, B,
    ...; AnswerRejected (with the reason) if it breaks a rule. A skipped task (was_cancelled) is a skip."""
    if was_cancelled:
        return Answer("skip", None, None, "", "")
    choices: dict[str, list[str]] = {}
    texts: dict[str, list[str]] = {}
    for region in result:
        name, value = region.get("from_name"), region.get("value") or {}
        if not isinstance(value, dict):
            raise AnswerRejected(f"the result of {name!r} is not an object")
        if region.get("type") == "choices" and name in (BEST, WORST, VERDICT):
            choices.setdefault(name, []).extend(str(v) for v in value.get("choices", []))
        elif region.get("type") == "textarea" and name in (CONTENT, DEFECT):
            texts.setdefault(name, []).extend(str(v) for v in value.get("text", []))
        else:
            raise AnswerRejected(f"unknown control {name!r} ({region.get('type')}) in the answer")
    content, defect = ("\n".join(texts.get(name, [])).strip() for name in (CONTENT, DEFECT))
    if "\x00" in content + defect:
        raise AnswerRejected("a text holds a NUL character, which cannot be stored")
    best = _candidate(_single(choices, BEST), order, "the best candidate")
    worst = _candidate(_single(choices, WORST), order, "the worst candidate")
    verdict = _single(choices, VERDICT)
    if verdict is not None:
        if verdict not in VERDICTS:
            raise AnswerRejected(f"unknown verdict {verdict!r}: {NO_DIFFERENCE!r} or {ALL_BAD!r}")
        if best is not None or worst is not None:
            raise AnswerRejected(f"{verdict!r} was chosen together with a best or worst candidate")
        return Answer(VERDICTS[verdict], None, None, content, defect)
    if best is None or worst is None:
        raise AnswerRejected("choose a best and a worst candidate, or 'No difference', or 'All bad'")
    if best == worst:
        raise AnswerRejected("the best and the worst candidate are the same")
    return Answer("pick", best, worst, content, defect)
