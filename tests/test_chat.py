"""Chat templates: rendered in jinja2's sandbox, and split around an answer for the scorers."""
import pytest

from specrej_local.chat import CHATML, ChatFormat
from specrej_local.errors import TemplateError


def test_a_prompt_is_rendered_with_the_generation_prompt():
    chat = ChatFormat(CHATML)
    assert chat.prompt("Hi", system="Be brief.") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_around_answer_gives_the_text_before_and_after_an_answer():
    before, after = ChatFormat(CHATML).around_answer("Hi")
    assert before == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert after == "<|im_end|>\n"


def test_a_follow_up_question_comes_after_the_answer():
    _, after = ChatFormat(CHATML).around_answer("Hi", follow_up="Good?")
    assert after == "<|im_end|>\n<|im_start|>user\nGood?<|im_end|>\n<|im_start|>assistant\n"


def test_raw_mode_uses_no_template():
    assert ChatFormat(None, raw=True).prompt("Hi", system="S") == "S\n\nHi"


def test_a_template_cannot_escape_the_sandbox():
    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(TemplateError, match="failed to render"):
        ChatFormat(evil).prompt("Hi")
