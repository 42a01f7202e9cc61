"""Conversations (a message list instead of one prompt) and the decoder's stop hook."""
import json

import pytest

from specrej_local import SpecRej
from specrej_local.llama.chat import CHATML, ChatFormat
from specrej_local.messages import check_messages
from specrej_local.decoder import Interrupted, Settings, decode
from specrej_local.errors import BadInput
from fakes import FakeEngine, FakeScorer

TURNS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Name a fruit."}]


def test_a_conversation_renders_every_turn_in_order():
    text = ChatFormat(CHATML).prompt(TURNS)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                    "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nName a fruit.<|im_end|>\n"
                    "<|im_start|>assistant\n")


def test_a_one_turn_conversation_renders_like_the_prompt_string():
    chat = ChatFormat(CHATML)
    assert chat.prompt([{"role": "user", "content": "Hi"}], system="S") == chat.prompt("Hi", system="S")


def test_the_system_setting_does_not_replace_the_conversations_own():
    turns = ChatFormat.conversation(TURNS, system="Other")
    assert [m["content"] for m in turns if m["role"] == "system"] == ["Be brief."]


def test_around_answer_takes_a_conversation():
    before, after = ChatFormat(CHATML).around_answer(TURNS)
    assert before.endswith("Name a fruit.<|im_end|>\n<|im_start|>assistant\n") and "Hello!" in before
    assert after == "<|im_end|>\n"


@pytest.mark.parametrize("messages, problem", [
    ([], "non-empty list"),
    ("not a list", "non-empty list"),
    ([{"role": "user"}], "content must be a string"),
    ([{"role": "tool", "content": "x"}], "role must be one of"),
    (["hello"], "must be an object"),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes"}], "last message"),
    ([{"role": "user", "content": "  "}], "empty"),
    ([{"role": "user", "content": "Hi \ud800"}], r"messages\[0\].content is not valid UTF-8 text \(character 4\)"),
])
def test_bad_conversations_are_bad_input(messages, problem):
    with pytest.raises(BadInput, match=problem):
        check_messages(messages)


def test_should_stop_ends_the_run_as_interrupted_with_the_best_so_far():
    engine, asked = FakeEngine([3, 100, 100]), []

    def stop_after_five_steps():
        asked.append(1)
        return len(asked) > 5

    with pytest.raises(Interrupted) as info:
        decode(engine, FakeScorer(lambda i, t: float(i)), "a prompt", Settings(n=3, max_tokens=50),
               should_stop=stop_after_five_steps)
    assert len(asked) == 6  # asked once per step, and the sixth answer stopped it
    assert info.value.partial.finish_reason == "stop"  # candidate 0 had finished: the best so far
    assert [c.finish_reason for c in info.value.partial.candidates][1:] == ["interrupted", "interrupted"]


def test_the_api_takes_messages_and_an_engine_reused_after_a_stop(default_model):
    with SpecRej(str(default_model), n_threads=1) as s:
        settings = dict(n=2, max_tokens=8, seed=3)
        with pytest.raises(Interrupted):
            s.generate(messages=TURNS, should_stop=lambda: True, **settings)
        one = s.generate(messages=TURNS, **settings)
        assert one.text and one.stats["prompt_tokens"] > s.generate("Name a fruit.", **settings).stats["prompt_tokens"]
        assert s.generate(messages=TURNS, **settings).text == one.text  # same seed, same answer
        with pytest.raises(BadInput, match="either a prompt or messages"):
            s.generate("Hi", messages=TURNS)
        with pytest.raises(BadInput, match="last message"):
            s.generate(messages=TURNS[:3])


def test_a_batch_line_may_hold_a_conversation(tmp_path):
    from specrej_local.frontends.batch_io import read_items

    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(o) for o in [
        {"id": "a", "messages": TURNS}, {"id": "b", "messages": TURNS[:3]}, {"id": "c"}]) + "\n")
    good, bad_turns, missing = read_items(src)
    assert good.error is None and good.prompt == TURNS
    assert "last message" in bad_turns.error and "no \"prompt\"" in missing.error
