from valign.cache import CompletionCache
from valign.types import GenConfig

CONV = [{"role": "user", "content": "Is lying ever right?"}]


def test_identical_request_costs_no_model_call(tmp_path, scripted):
    scripted.with_cache(CompletionCache(tmp_path / "c.sqlite"))
    first = scripted.generate([CONV], GenConfig(seed=1))
    assert scripted.calls == 1 and not first[0].cached
    second = scripted.generate([CONV], GenConfig(seed=1))
    assert scripted.calls == 1, "the second identical request must come from the cache"
    assert second[0].cached and second[0].text == first[0].text


def test_cache_survives_reopening(tmp_path, scripted):
    scripted.with_cache(CompletionCache(tmp_path / "c.sqlite"))
    scripted.generate([CONV], GenConfig(seed=1))
    from tests.conftest import ScriptedModel

    again = ScriptedModel().with_cache(CompletionCache(tmp_path / "c.sqlite"))
    again.generate([CONV], GenConfig(seed=1))
    assert again.calls == 0


def test_key_covers_model_messages_settings_and_sample(tmp_path, scripted):
    cache = CompletionCache(tmp_path / "c.sqlite")
    scripted.with_cache(cache)
    scripted.generate([CONV], GenConfig(seed=1))
    variants = [
        ([CONV], GenConfig(seed=2)),
        ([CONV], GenConfig(seed=1, temperature=1.0)),
        ([CONV], GenConfig(seed=1, top_p=0.9)),
        ([CONV], GenConfig(seed=1, max_new_tokens=10)),
        ([[{"role": "user", "content": "Is lying ever wrong?"}]], GenConfig(seed=1)),
        ([[{"role": "system", "content": "Be brief."}, *CONV]], GenConfig(seed=1)),
    ]
    for i, (convs, cfg) in enumerate(variants, start=2):
        scripted.generate(convs, cfg)
        assert scripted.calls == i, f"variant {i} must miss the cache"
    from tests.conftest import ScriptedModel

    other = ScriptedModel(name="other-model").with_cache(cache)
    other.generate([CONV], GenConfig(seed=1))
    assert other.calls == 1, "another model's entry must not be reused"


def test_more_samples_reuse_the_ones_already_drawn(tmp_path, scripted):
    scripted.with_cache(CompletionCache(tmp_path / "c.sqlite"))
    two = scripted.generate([CONV], GenConfig(seed=3, n=2))
    assert scripted.calls == 2
    three = scripted.generate([CONV], GenConfig(seed=3, n=3))
    assert scripted.calls == 3, "only the third sample is new"
    assert [c.text for c in three[:2]] == [c.text for c in two]
    assert [c.sample for c in three] == [0, 1, 2]


def test_results_grouped_by_conversation(scripted):
    convs = [[{"role": "user", "content": f"q{i}"}] for i in range(3)]
    out = scripted.generate(convs, GenConfig(n=2, seed=0))
    assert [(c.index, c.sample) for c in out] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert all(f"q{c.index}" in c.text for c in out)


def test_choice_probs_are_cached(tmp_path, scripted):
    scripted.choice = {"A": 3.0, "B": 1.0}
    scripted.with_cache(CompletionCache(tmp_path / "c.sqlite"))
    first = scripted.choice_probs([CONV], ["A", "B"])
    second = scripted.choice_probs([CONV], ["A", "B"])
    assert scripted.choice_calls == 1
    assert first == second and abs(first[0]["A"] - 0.75) < 1e-9
