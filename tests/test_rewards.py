"""rewards.parse_reward: the one place that decides what a reward setting names."""
import pytest

from specrej_local.errors import BadInput, UnknownModelError
from specrej_local.rewards import RewardSpec, parse_reward


@pytest.mark.parametrize("setting, kind, model", [
    ("logprob", "logprob", None),
    ("self", "self", None),
    ("judge", "judge", None),                         # the generator as a judge
    ("judge:qwen2.5-1.5b", "judge", "qwen2.5-1.5b"),  # another model as a judge
    ("skywork-v2-qwen3-0.6b", "reward_model", "skywork-v2-qwen3-0.6b"),  # a registry reward model
    ("./my-rm.gguf", "reward_model", "./my-rm.gguf"),  # a file is taken for a reward model
    ("qwen2.5-1.5b-judge", "judge", "qwen2.5-1.5b-judge"),  # the registry gives this alias the judge role
])
def test_each_setting_names_one_kind_of_reward(setting, kind, model):
    assert parse_reward(setting) == RewardSpec(kind, model)


def test_a_callable_is_kept_with_its_batched_mark():
    def score(prompt, answers):
        return [0.0] * len(answers)
    score.batched = True
    spec = parse_reward(score)
    assert spec.kind == "callable" and spec.fn is score and spec.batched


@pytest.mark.parametrize("setting, error, message", [
    ("", BadInput, "reward must be logprob, self, judge"),
    (3, BadInput, "got 3"),
    ("judge:", BadInput, "judge: needs a model"),
    ("no-such-reward", UnknownModelError, "unknown model 'no-such-reward'"),
])
def test_a_setting_that_names_nothing_is_refused(setting, error, message):
    with pytest.raises(error, match=message):
        parse_reward(setting)
