"""Chat templates from GGUF metadata, rendered in jinja2's sandbox, in a child process with
memory and time limits (`template_sandbox`).

Besides plain prompt formatting, scorers need the whole conversation rendered with an answer
(`answered`: templates rewrite answers, so the answer is never pasted in verbatim) and the text a
template puts *around* an assistant answer (`around_answer`, found by rendering a marker in the
answer's place): the part before it is what every candidate shares, and the self-judge appends
the part after it to the generator's own tokens.
"""
from jinja2 import TemplateError as JinjaError

from ..errors import BadInput, TemplateError
from ..messages import check_messages
from ..text import not_text
from .template_sandbox import SANDBOX, environment

# Used when a GGUF file carries no template: the widespread ChatML layout.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_MARK = "\u2063SPECREJ-ANSWER\u2063"
class ChatFormat:
    """Renders conversations with one model's template (or none, in raw mode)."""

    def __init__(self, template, bos_token: str = "", eos_token: str = "", raw: bool = False,
                 name: str = "the chat template"):
        self.raw = raw
        self.name = name  # for messages: whose template it is
        self.bos_token, self.eos_token = bos_token, eos_token
        self.template = template or CHATML
        try:
            environment().parse(self.template)  # a syntax error shows at once, before any render
        except JinjaError as e:
            raise TemplateError(f"the chat template does not parse: {e}") from None

    @classmethod
    def of(cls, model, raw: bool = False) -> "ChatFormat":
        """The format a GGUF model's metadata gives: its template, BOS and EOS texts."""
        return cls(model.meta("tokenizer.chat_template"), bos_token=model.special_text("bos"),
                   eos_token=model.special_text("eos"), raw=raw, name=f"the chat template of {model.path.name}")

    def render(self, messages, add_generation_prompt: bool) -> str:
        text = SANDBOX.render(self.template, dict(messages=messages, add_generation_prompt=add_generation_prompt,
                                                  bos_token=self.bos_token, eos_token=self.eos_token))
        if not text.strip():  # a model would continue from nothing: no prompt, no answer to score
            raise TemplateError(f"{self.name} renders the conversation as empty text; fix the template, or "
                                "go without it (--no-chat-template, or chat_template=False)")
        return text

    @staticmethod
    def conversation(prompt, system=None) -> list:
        """The turns to render: `prompt` is one user turn, or a whole conversation (a list of
        {"role", "content"} turns, checked by `check_messages`). `system` goes first unless the
        conversation already starts with one."""
        for name, text in (("the prompt", prompt), ("the system prompt", system)):
            problem = isinstance(text, str) and not_text(text)
            if problem:
                raise BadInput(f"{name} {problem}")
        if isinstance(prompt, str):
            messages = [{"role": "user", "content": prompt}]
        else:
            messages = check_messages(prompt)
        if system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system}] + messages
        return messages

    def prompt(self, prompt, system=None) -> str:
        """The text a generator continues from."""
        if self.raw:
            return "\n\n".join(m["content"] for m in self.conversation(prompt, system))
        return self.render(self.conversation(prompt, system), add_generation_prompt=True)

    def answered(self, prompt, system, answer: str, follow_up=None) -> str:
        """The whole conversation with assistant `answer` (and `follow_up` as the next user turn,
        with the generation prompt), as the template renders it: what a scorer reads."""
        if self.raw:
            return self.prompt(prompt, system) + answer + (f"\n\n{follow_up}\n" if follow_up else "")
        messages = self.conversation(prompt, system) + [{"role": "assistant", "content": answer}]
        if follow_up:
            messages.append({"role": "user", "content": follow_up})
        return self.render(messages, add_generation_prompt=bool(follow_up))

    def around_answer(self, prompt: str, system=None, follow_up=None):
        """(before, after): the text around an assistant answer to `prompt`.

        With `follow_up`, `after` also holds a next user turn and the generation prompt, so a
        model can be asked a question about the answer it just gave.
        """
        messages = self.conversation(prompt, system) + [{"role": "assistant", "content": _MARK}]
        if self.raw:
            before = self.prompt(prompt, system)
            return before, (f"\n\n{follow_up}\n" if follow_up else "")
        if follow_up:
            messages.append({"role": "user", "content": follow_up})
        text = self.render(messages, add_generation_prompt=bool(follow_up))
        if text.count(_MARK) != 1:
            raise TemplateError("the chat template does not render the assistant's answer verbatim")
        before, after = text.split(_MARK)
        return before, after
