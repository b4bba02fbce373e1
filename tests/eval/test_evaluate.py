from clipdistill.eval import evaluate


def test_merges_both_evaluations(oracle_encoder, retrieval_set, class_set):
    metrics = evaluate(oracle_encoder, retrieval=retrieval_set(10, 2), zero_shot=class_set(4, 2), batch_size=4)
    assert set(metrics) == {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)} | {
        "retrieval_mean_recall", "acc1", "acc5", "mean_per_class_recall"}
    assert all(value == 1.0 for value in metrics.values())


def test_either_dataset_may_be_missing(oracle_encoder, retrieval_set, class_set):
    assert evaluate(oracle_encoder) == {}
    assert set(evaluate(oracle_encoder, zero_shot=class_set(3, 1))) == {"acc1", "acc5", "mean_per_class_recall"}
    assert "acc1" not in evaluate(oracle_encoder, retrieval=retrieval_set(3, 1))
