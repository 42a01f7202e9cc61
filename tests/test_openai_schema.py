"""Request checks of the OpenAI-compatible server, without a server or a model: a refused
request names the field it refuses, as OpenAI's `param` does, so a client can point at it."""
import pytest

from specrej_local.frontends.openai_schema import Defaults, Limits, RequestError, parse_chat, parse_completion

CHAT = [{"role": "user", "content": "Name a fruit."}]


@pytest.mark.parametrize("field, value, words", [
    ("temperature", -1, "'temperature' must be between 0 and"),
    ("temperature", 10**400, "'temperature' must be a finite number"),
    ("top_p", 0, "'top_p' must be in (0, 1]"),
    ("min_p", 2, "'min_p' must be in [0, 1]"),
    ("top_k", -3, "'top_k' must be between 0 and"),
    ("alpha", 1.5, "'alpha' must be in [0, 1)"),
    ("method", "magic", "'method' must be one of specrej, bon"),
    ("seed", -1, "'seed' must be between 0 and 4294967295, got -1"),
    ("seed", 2**32, "'seed' must be between 0 and 4294967295, got 4294967296"),
])
def test_a_bad_sampling_or_method_value_names_its_field(field, value, words):
    with pytest.raises(RequestError) as e:
        parse_chat({"messages": CHAT, field: value}, Defaults(), Limits())
    assert e.value.status == 400 and e.value.param == field
    assert e.value.message.startswith(words)


def test_good_values_pass_through_as_generate_settings():
    r = parse_completion({"prompt": "Hi", "temperature": 0.2, "top_p": 0.5, "n": 2, "best_of": 4, "seed": 7},
                         Defaults(), Limits())
    assert r.generate_kwargs()["prompt"] == "Hi"
    assert (r.n, r.settings["n"], r.settings["keep_at_least"]) == (2, 4, 2)
    assert (r.settings["temperature"], r.settings["top_p"], r.settings["seed"]) == (0.2, 0.5, 7)


@pytest.mark.parametrize("field, value", [
    ("tools", [{"type": "function", "function": {"name": "f"}}]), ("tool_choice", "required"),
    ("response_format", {"type": "json_object"}), ("logprobs", True), ("top_logprobs", 3),
    ("logit_bias", {"50256": -100}), ("frequency_penalty", 0.5), ("echo", True),
])
def test_a_feature_the_server_cannot_do_is_refused_not_silently_dropped(field, value):
    with pytest.raises(RequestError) as e:
        parse_chat({"messages": CHAT, field: value}, Defaults(), Limits())
    assert (e.value.status, e.value.param, e.value.code) == (400, field, "unsupported_value")
    assert e.value.message.startswith(f"'{field}' is not supported: this server does not do ")


def test_the_values_clients_send_by_default_and_unknown_fields_are_accepted():
    body = {"messages": CHAT, "tools": [], "tool_choice": "none", "response_format": {"type": "text"},
            "logprobs": False, "presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {},
            "user": "someone", "store": False, "a_field_from_the_future": {"x": 1}}
    assert parse_chat(body, Defaults(), Limits()).conversation == CHAT


def test_length_is_reported_only_for_answers_that_reached_max_tokens():
    from specrej_local.decoder import Candidate, Result
    from specrej_local.frontends.openai_schema import Reply

    request = parse_completion({"prompt": "Hi", "n": 3, "best_of": 3, "max_tokens": 8}, Defaults(), Limits())
    cands = [Candidate(0, "a b c d e f g h", 1.0, 8, "length", None), Candidate(1, "a b", 2.0, 2, "budget", None),
             Candidate(2, "a", 3.0, 1, "stop", None)]
    result = Result("a", 3.0, "stop", cands, dict(prompt_tokens=3, generated_tokens=11))
    choices = Reply(request, "m").whole(result, 0.0)["choices"]
    assert [(c["text"], c["finish_reason"]) for c in choices] == [("a", "stop"), ("a b", "budget"),
                                                                 ("a b c d e f g h", "length")]
