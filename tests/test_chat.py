"""Chat templates: rendered in jinja2's sandbox, and split around an answer for the scorers."""
import pytest

from specrej_local.llama.chat import CHATML, ChatFormat
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


@pytest.mark.parametrize("template", ["{{- '' -}}", "{% if messages[99] is defined %}x{% endif %}", "   \n"])
def test_a_template_that_renders_nothing_is_a_template_error_naming_it(template):
    chat = ChatFormat(template, name="the chat template of m.gguf")
    for render in (lambda: chat.prompt("Hi"), lambda: chat.answered("Hi", None, "Hello"),
                   lambda: chat.around_answer("Hi")):
        with pytest.raises(TemplateError, match=r"^the chat template of m\.gguf renders the conversation as empty "
                                                r"text; fix the template, or go without it"):
            render()


def test_raw_mode_uses_no_template():
    assert ChatFormat(None, raw=True).prompt("Hi", system="S") == "S\n\nHi"


def test_a_template_cannot_escape_the_sandbox():
    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(TemplateError, match="failed to render"):
        ChatFormat(evil).prompt("Hi")


STOPPED = "took more than 5 s|needed more than 1024 MiB"  # whichever limit a busy machine hits first


@pytest.mark.parametrize("bomb, words", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "took more than 5 s"),
    ("{{ 'x' * 100000000 }}{{ ('x' * 100000000) * 30 }}", STOPPED),
    ("{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
     STOPPED),
    ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "recursed too deeply"),
])
def test_a_template_that_burns_cpu_or_memory_is_stopped_with_one_line(bomb, words):
    import time

    t0 = time.monotonic()
    with pytest.raises(TemplateError, match=words):
        ChatFormat(bomb).prompt("Hi")
    assert time.monotonic() - t0 < 60  # the render limit is 5 s; this only bounds a hang of the test
    # and the next template renders as before, in a fresh child if the last one was killed
    assert ChatFormat(CHATML).prompt("Hi").endswith("<|im_start|>assistant\n")


def test_a_render_is_bounded_by_the_cpu_it_uses_not_by_a_busy_machines_wall_clock():
    # With load average 4 on 2 cores, every prompt of a batch was refused: "took more than 5 s".
    # Here the child gets no CPU at all for 6 s (stopped), more than the 5 s a render may use.
    import os
    import signal
    import threading

    from specrej_local.llama.template_sandbox import TemplateSandbox

    sandbox = TemplateSandbox()
    context = dict(messages=[{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    try:
        first = sandbox.render(CHATML, context)
        pid = sandbox._proc.pid
        os.kill(pid, signal.SIGSTOP)
        threading.Timer(6.0, os.kill, (pid, signal.SIGCONT)).start()
        assert sandbox.render(CHATML, context) == first
        assert sandbox._proc.pid == pid  # one child serves every render
    finally:
        sandbox.stop()


def test_a_template_out_of_cpu_time_is_refused_and_the_child_serves_the_next_render():
    from specrej_local.llama.template_sandbox import TemplateSandbox

    sandbox = TemplateSandbox(cpu_seconds=1)
    context = dict(messages=[{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    spin = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    try:
        sandbox.render(CHATML, context)
        pid = sandbox._proc.pid
        with pytest.raises(TemplateError, match=r"^the chat template took more than 1 s of CPU time to render; refused$"):
            sandbox.render(spin, context)
        assert sandbox.render(CHATML, context).endswith("<|im_start|>assistant\n")
        assert sandbox._proc.pid == pid  # stopped by its own limit, not killed
    finally:
        sandbox.stop()
