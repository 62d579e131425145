"""Prompting strategies on scripted fake models, few-shot fitting, and batched generation on tiny models."""

from __future__ import annotations

import pytest

from tunelab.errors import TunelabError
from tunelab.prompting.fewshot import choose_shots
from tunelab.prompting.lm import ChatModel, Reply
from tunelab.prompting.strategies import STRATEGIES, PromptingOptions
from tunelab.tasks.task import Task


class ScriptedLM:
    """A fake model: `respond(conversation) -> text`; a token is a word, so budgets are easy to count."""

    def __init__(self, respond, max_context: int = 10_000):
        self.respond, self.max_context = respond, max_context
        self.calls: list[list[dict]] = []
        self.temperatures: list[float] = []

    def count(self, conversation) -> int:
        return sum(len(turn["content"].split()) for turn in conversation)

    def complete(self, conversations, *, max_new_tokens, temperature=0.0, seed=0):
        self.calls += conversations
        self.temperatures += [temperature] * len(conversations)
        return [Reply(t := self.respond(c), self.count(c), len(t.split())) for c in conversations]


def qa_task(**kw) -> Task:
    pool = [{"prompt": f"question {i} about topic{i}", "answer": f"a{i}"} for i in range(6)]
    return Task(
        name="qa",
        train=pool,
        eval=[{"prompt": "what is two plus two", "answer": "4"}],
        template="Q: {prompt}",
        **kw,
    )


def last_user(conversation) -> str:
    return conversation[-1]["content"]


def run(strategy, lm, task, **opts):
    return STRATEGIES[strategy](lm, task, task.eval, PromptingOptions(**opts), 0)


def test_zero_shot_sends_the_template_and_extracts_the_answer():
    lm = ScriptedLM(lambda c: "  4  ")
    (out,) = run("zero_shot", lm, qa_task())
    assert lm.calls == [[{"role": "user", "content": "Q: what is two plus two"}]]
    assert (out.answer, out.calls) == ("4", 1)
    assert out.tokens == 6 + 1  # five prompt words (+ "Q:") and a one-word answer


def test_rules_are_written_down_as_system_message_or_user_preamble():
    task = qa_task(rules=["Answer with a digit.", "No words."])
    lm = ScriptedLM(lambda c: "4")
    run("rules", lm, task)
    system, question = lm.calls[0]
    assert system["role"] == "system"
    assert "1. Answer with a digit.\n2. No words." in system["content"]
    assert question["content"] == "Q: what is two plus two"

    lm = ScriptedLM(lambda c: "4")
    run("rules", lm, task, rules_as="user")
    (turn,) = lm.calls[0]
    assert turn["content"].startswith("Follow every one") and turn["content"].endswith(
        "Q: what is two plus two"
    )

    with pytest.raises(TunelabError, match="has no rules"):
        run("rules", lm, qa_task())


def test_chain_of_thought_takes_the_answer_after_the_marker():
    lm = ScriptedLM(lambda c: "Two and two make four.\nSo the number is 4.\nAnswer: 4")
    (out,) = run("cot", lm, qa_task(extract="number"), cot_instruction="Think. End with Answer:")
    assert last_user(lm.calls[0]).endswith("Think. End with Answer:")
    assert out.answer == "4"


def test_reflection_revises_until_the_critique_finds_no_errors():
    def respond(conversation):
        request = last_user(conversation)
        if request.startswith("Check your answer"):
            return "NO ERRORS" if conversation[-2]["content"] == "4" else "The sum is wrong."
        if request.startswith("Now write the corrected"):
            return "4"
        return "5"

    lm = ScriptedLM(respond)
    (out,) = run("reflection", lm, qa_task(), reflection_rounds=3)
    assert [s["step"] for s in out.trace] == ["answer", "critique", "revision", "critique"]
    assert (out.answer, out.calls) == ("4", 4)  # stopped at the second critique, one round unused


def test_reflection_stops_after_the_last_round_when_errors_remain():
    lm = ScriptedLM(lambda c: "The sum is wrong." if last_user(c).startswith("Check") else "5")
    (out,) = run("reflection", lm, qa_task(), reflection_rounds=2)
    assert out.calls == 1 + 2 * 2  # answer, then (critique, revision) twice
    assert out.answer == "5"


def test_a_revision_without_an_answer_keeps_the_previous_answer():
    def respond(conversation):
        request = last_user(conversation)
        return (
            "It is wrong."
            if request.startswith("Check")
            else "I cannot say."
            if request.startswith("Now")
            else "Answer 5"
        )

    (out,) = run("reflection", ScriptedLM(respond), qa_task(extract="number"), reflection_rounds=1)
    assert out.answer == "5" and out.output == "Answer 5"
    assert out.trace[-1] == {"step": "revision", "text": "I cannot say."}


def test_few_shot_fits_whole_examples_into_a_small_context_and_says_how_many():
    task = qa_task()
    lm = ScriptedLM(lambda c: "4")
    # each example is "Q: question i about topicI" (5 words) + "aI" (1 word) = 6 tokens; the question 6
    (out,) = run("few_shot", lm, task, shots=4, max_context=6 + 6 * 2 + 3, max_new_tokens=3)
    assert out.shots == 2
    conversation = lm.calls[0]
    assert len(conversation) == 2 * 2 + 1
    for question, answer in zip(conversation[0:-1:2], conversation[1:-1:2]):
        i = question["content"].split()[2]
        assert question["content"] == f"Q: question {i} about topic{i}" and answer["content"] == f"a{i}"
    assert last_user(conversation) == "Q: what is two plus two"

    (roomy,) = run("few_shot", ScriptedLM(lambda c: "4"), task, shots=4)
    assert roomy.shots == 4


def test_few_shot_refuses_a_context_too_small_for_the_question():
    with pytest.raises(TunelabError, match="too small for even the question"):
        run("few_shot", ScriptedLM(lambda c: "4"), qa_task(), max_context=8, max_new_tokens=4)


def test_shot_choice_never_shows_the_question_and_is_repeatable():
    pool = [
        {"prompt": "red apples are sweet"},
        {"prompt": "the sky is blue"},
        {"prompt": "green apples are sour"},
    ]
    row = {"prompt": "red apples are sweet"}
    similar = choose_shots(
        pool + [{"prompt": "x"}],
        {"prompt": "are apples sour"},
        k=2,
        how="similar",
        prompt_of=lambda r: r["prompt"],
    )
    assert [s["prompt"] for s in similar] == ["green apples are sour", "red apples are sweet"]
    for how in ("fixed", "random", "similar"):
        shots = choose_shots(pool, row, k=3, how=how, prompt_of=lambda r: r["prompt"], seed=1)
        assert row["prompt"] not in [s["prompt"] for s in shots] and len(shots) == 2
    first = choose_shots(
        pool * 3, {"prompt": "q"}, k=3, how="random", prompt_of=lambda r: r["prompt"], seed=7
    )
    again = choose_shots(
        pool * 3, {"prompt": "q"}, k=3, how="random", prompt_of=lambda r: r["prompt"], seed=7
    )
    assert first == again


def test_self_consistency_takes_the_majority_answer():
    answers = iter(["Answer: 3", "Answer: 4", "so... Answer: 4", "no idea", "Answer: 3", "Answer: 4"])
    lm = ScriptedLM(lambda c: next(answers))
    (out,) = run("self_consistency", lm, qa_task(), samples=6, temperature=0.9)
    assert out.answer == "4" and out.calls == 6
    assert set(lm.temperatures) == {0.9}
    assert out.trace[-1] == {"step": "vote", "text": {"3": 2, "4": 3, "no idea": 1}}


def test_best_of_n_keeps_the_answer_the_reward_model_prefers(monkeypatch):
    import tunelab.prompting.strategies as strategies

    class LengthRM:  # prefers longer answers
        def score(self, items):
            return [float(len(answer)) for _, answer in items]

    monkeypatch.setattr(strategies, "_reward_scorer", lambda path, strict=False: LengthRM())
    answers = iter(["4", "four (4)", "4!"])
    (out,) = run("best_of_n", ScriptedLM(lambda c: next(answers)), qa_task(), samples=3, rm="fake")
    assert out.answer == "four (4)" and out.calls == 3
    with pytest.raises(TunelabError, match="reward model"):
        run("best_of_n", ScriptedLM(lambda c: "4"), qa_task())


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_batched_greedy_answers_equal_one_at_a_time(fixture, request):
    model, tok = request.getfixturevalue(fixture)
    prompts = ["hi", "a much longer question about packing and padding", "2+2=?", "name three colours please"]
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    batched = ChatModel(model, tok, batch_size=4).complete(conversations, max_new_tokens=12)
    single = ChatModel(model, tok, batch_size=1).complete(conversations, max_new_tokens=12)
    assert [r.text for r in batched] == [r.text for r in single]
    assert [r.prompt_tokens for r in batched] == [r.prompt_tokens for r in single]
    assert all(0 < r.completion_tokens <= 12 for r in batched)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_a_one_turn_conversation_renders_as_training_does(fixture, request):
    from tunelab.data.render import RenderOptions, prompt_text

    model, tok = request.getfixturevalue(fixture)
    opts = RenderOptions(instruction="Translate.", system="Be brief.", separator="\n=>\n")
    lm = ChatModel(model, tok, opts=opts)
    assert lm.render([{"role": "user", "content": "bonjour"}]) == prompt_text(tok, "bonjour", opts)


def test_prompt_tuned_models_generate_what_a_step_by_step_forward_predicts(tiny_llama):
    import copy

    import torch
    from peft import PromptTuningConfig, get_peft_model

    from tunelab.models.generation import complete

    model, tok = tiny_llama
    torch.manual_seed(0)
    tuned = get_peft_model(
        copy.deepcopy(model), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5)
    )
    text = "a question about colours"
    ids = tok([text], return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        for _ in range(8):  # greedy, one full forward pass per token: the reference
            logits = tuned(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            ids = torch.cat([ids, logits[:, -1:].argmax(-1)], dim=1)
    expected = tok.decode(ids[0, -8:], skip_special_tokens=True).strip()
    ((got, _, n_new),) = complete(tuned, tok, [text], max_new_tokens=8)
    assert got == expected[: len(got)] and n_new >= 1
