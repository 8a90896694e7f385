import pytest

from components.scoring import exact_match, normalize_answer, summarize, token_recall, word_tokens


@pytest.mark.parametrize(
    ("prediction", "answers", "expected"),
    [
        ("Paris", ["Paris"], 1.0),
        ("The capital of France is Paris.", ["Paris"], 1.0),
        ("paris!!!", ["PARIS"], 1.0),
        ("William", ["William Shakespeare"], 0.5),
        ("Shakespeare wrote it", ["William Shakespeare", "Shakespeare"], 1.0),
        ("London", ["Paris"], 0.0),
        ("", ["Paris"], 0.0),
        ("the city of Zürich", ["Zürich"], 1.0),
        ("Zurich", ["Zürich"], 0.0),
        ("STRASSE", ["Straße"], 1.0),
        ("Dvořák", ["Antonín Dvořák"], 0.5),
        ("東京", ["東京"], 1.0),
        ("It is 100 degrees", ["100 degrees Celsius"], 2 / 3),
        ("New-York", ["New York"], 1.0),
        ("paris paris paris", ["Paris Paris"], 1.0),
    ],
)
def test_token_recall_hand_worked(prediction, answers, expected):
    assert token_recall(prediction, answers) == pytest.approx(expected)


def test_answers_without_word_tokens_are_unscorable_not_zero():
    assert token_recall("anything", ["?!", "..."]) is None
    assert token_recall("anything", [""]) is None


def test_unscorable_answers_are_skipped_when_another_answer_scores():
    assert token_recall("Paris", ["...", "Paris"]) == 1.0


def test_word_tokens_are_sets_of_casefolded_words():
    assert word_tokens("The THE the, a-b") == {"the", "a", "b"}


def test_exact_match_normalizes_case_punctuation_and_articles():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert exact_match("the Eiffel tower.", ["Eiffel Tower"])
    assert not exact_match("The Eiffel Tower in Paris", ["Eiffel Tower"])
    assert exact_match("«Paris»", ["Paris"])
    assert exact_match("Paris’", ["paris"])


def scored(recalls, matches, precisions=None, f1s=None, words=None) -> list[dict]:
    """Records as score_records gives them, with only the scores set."""
    n = len(recalls)
    columns = zip(recalls, matches, precisions or [None] * n, f1s or [None] * n,
                  words or [None] * n, strict=True)  # fmt: skip
    keys = ("token_recall", "exact_match", "token_precision", "token_f1", "answer_words")
    return [dict(zip(keys, row, strict=True)) for row in columns]


def test_summary_counts_unscorable_apart():
    summary = summarize(scored([1.0, 0.5, None, 0.0], [True, False, None, False]))
    assert summary.examples == 4
    assert summary.scored == 3
    assert summary.unscorable == 1
    assert summary.token_recall_mean == pytest.approx(0.5)
    assert summary.token_recall_median == pytest.approx(0.5)
    assert summary.token_recall_share_full == pytest.approx(1 / 3)
    assert summary.exact_match == pytest.approx(1 / 3)


def test_summary_of_nothing_scorable_has_no_mean():
    summary = summarize(scored([None], [None]))
    assert summary.token_recall_mean is None
    assert summary.exact_match is None


def test_an_empty_prediction_never_matches_a_punctuation_only_answer():
    assert not exact_match("!!", ["?", "Paris"])
    assert exact_match("paris.", ["?", "Paris"])


def traced_peak(work) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_predictions_json_is_scored_and_written_as_it_streams(tmp_path):
    """A million questions score in flat memory: the peak stays far below the file written
    (a list of records and one JSON string were each larger than the file), and what the
    questions were shown (a context mode) is summed as it passes, not kept per question."""
    import json

    from components.predictions import in_order, write_predictions

    long = "an answer long enough to weigh something, as a rambling model's does " * 3
    examples = [
        {"question_id": f"q{i}", "question": f"Q{i}?", "answers": ["paris"]} for i in range(20_000)
    ]
    shown = {"passages": [{"id": "p1"}], "context_tokens": 100, "context_truncated": False,
             "answer_in_context": True}  # fmt: skip
    generations, path = tmp_path / "generations.jsonl", tmp_path / "predictions.json"

    def score(mode: dict, context: dict) -> None:
        lines = (json.loads(line) for line in generations.open())
        out = write_predictions(iter(examples), in_order(lines, str(generations)), path, mode)
        assert out["metrics"]["counts"]["scored"] == 20_000
        if context:
            assert out["context"]["context_tokens"] == {"mean": 100.0, "max": 100}
            assert out["context"]["answer_in_context"] == 1.0

    peaks = {}
    for mode in ({"name": "no_context"}, {"name": "oracle_context", "max_context_tokens": 512}):
        context = shown if mode["name"] != "no_context" else {}
        generations.write_text(
            "".join(
                json.dumps({"question_id": f"q{i}", "prediction": f"{long} paris",
                            "prompt_tokens": 9, "output_tokens": 30, **context}) + "\n"
                for i in range(20_000)
            )
        )  # fmt: skip
        peaks[mode["name"]] = traced_peak(lambda m=mode, c=context: score(m, c))
        assert peaks[mode["name"]] < path.stat().st_size / 2  # records held: over 5 times it
    assert peaks["oracle_context"] < 1.5 * peaks["no_context"], peaks


def test_generations_out_of_the_examples_order_are_named(tmp_path):
    from components.predictions import in_order, write_predictions

    examples = [{"question_id": q, "question": "Q?", "answers": ["a"]} for q in ("q1", "q2")]
    generations = [{"question_id": "q2", "prediction": "a", "prompt_tokens": 1, "output_tokens": 1}]
    with pytest.raises(ValueError, match=r"gen.jsonl: expected the answer to 'q1', found 'q2'"):
        write_predictions(
            examples,
            in_order(generations, "gen.jsonl"),
            tmp_path / "p.json",
            {"name": "no_context"},
        )
    assert not (tmp_path / "p.json").exists()


def test_a_ramble_that_holds_the_answer_has_full_recall_but_low_precision_and_f1():
    from components.scoring import answer_words, precision_f1

    ramble = "After much thought about the long history of France, the answer is Paris indeed"
    assert token_recall(ramble, ["Paris"]) == 1.0
    precision, f1 = precision_f1(ramble, ["Paris"])  # 13 distinct words, one of them right
    assert precision == pytest.approx(1 / 13) and f1 == pytest.approx(1 / 7)
    assert answer_words(ramble) == 14
    assert precision_f1("Paris", ["the city of Paris", "Paris"]) == (1.0, 1.0)  # best answer
    assert precision_f1("", ["Paris"]) == (0.0, 0.0)
    assert precision_f1("anything", ["!!"]) is None  # unscorable, as for recall


def test_the_summary_reports_precision_f1_length_and_the_recall_interval():
    summary = summarize(scored([1.0, 0.0, 1.0, None], [False, False, True, None],
                               [0.1, 0.0, 1.0, None], [0.2, 0.0, 1.0, None],
                               [12, 3, 1, 4])).to_dict()  # fmt: skip
    assert summary["token_precision"]["mean"] == pytest.approx(1.1 / 3)
    assert summary["token_f1"]["mean"] == pytest.approx(0.4)
    assert summary["answer_words"]["mean"] == pytest.approx(5.0)
    low, high = summary["token_recall"]["ci95"]
    assert 0.0 <= low < 2 / 3 < high <= 1.0


def test_metadata_reaches_predictions_and_a_category_field_gets_its_own_means(tmp_path):
    import json

    from components.predictions import write_predictions

    said = {"q1": ("Paris", "Paris", "geo"), "q2": ("Rome", "Milan", "geo"),
            "q3": ("1945", "It ended in 1945", "war")}  # fmt: skip
    examples = [
        {"question_id": q, "question": "Q?", "answers": [a], "metadata": {"category": c}}
        for q, (a, _, c) in said.items()
    ]
    generations = {
        q: {"prediction": p, "prompt_tokens": 1, "output_tokens": 1}
        for q, (_, p, _) in said.items()
    }
    out = write_predictions(
        examples, generations.__getitem__, tmp_path / "p.json", {"name": "no_context"}
    )
    records = json.loads((tmp_path / "p.json").read_text())
    assert records[0]["metadata"] == {"category": "geo"}
    assert out["by_category"]["geo"] == {
        "examples": 2, "token_recall": 0.5, "token_f1": 0.5, "exact_match": 0.5,
    }  # fmt: skip
    assert out["by_category"]["war"]["token_recall"] == 1.0
    assert out["by_category"]["war"]["token_f1"] == pytest.approx(0.4)


def test_a_tracked_run_s_highlights_stream_the_predictions_file(tmp_path):
    """The histogram and the worst and best answers ClearML shows equal those of the whole
    list sorted, read from predictions.json without holding it."""
    import random

    from components.atomic import read_json_array, write_json_array_atomic
    from components.predictions import highlights

    rng = random.Random(7)
    records = [
        {"question_id": f"q{i:05d}", "question": "Q?", "answers": ["a"], "prediction": "x" * 1000,
         "token_recall": rng.choice([None, 0.0, 0.25, 0.5, 1.0]), "exact_match": None}
        for i in range(20_000)
    ]  # fmt: skip
    path = write_json_array_atomic(tmp_path / "predictions.json", records)
    scored = sorted(
        (r for r in records if r["token_recall"] is not None),
        key=lambda r: (r["token_recall"], r["question_id"]),
    )
    got: dict = {}

    def read() -> None:
        got.update(highlights(read_json_array(path)))

    assert traced_peak(read) < path.stat().st_size / 3  # the list alone is larger
    assert [r["question_id"] for r in got["worst"]] == [r["question_id"] for r in scored[:10]]
    assert [r["question_id"] for r in got["best"]] == [r["question_id"] for r in scored[::-1][:10]]
    bins = [0] * 10
    for r in scored:
        bins[min(int(r["token_recall"] * 10), 9)] += 1
    assert got["recall_bins"] == bins and sum(bins) == len(scored)
