"""CSV listings and captions: malformed rows, empty, non-UTF-8 and 10 000-character captions."""
import logging

import torch

from clipdistill.data import CsvPairs, train_batches
from clipdistill.data.transforms import PairedTransform
from clipdistill.models import build_student
from clipdistill.models.spec import ImageSpec
from faults.corpus import jpeg

LONG_CAPTION = ("a red square " * 800)[:10000]


def write_listing(folder, rows: list[bytes]):
    (folder / "good.jpg").write_bytes(jpeg())
    path = folder / "pairs.tsv"
    path.write_bytes(b"filepath\ttitle\n" + b"".join(row + b"\n" for row in rows))
    return path


def test_bad_rows_are_skipped_counted_and_named_by_file_and_row(tmp_path, caplog):
    rows = [b"good.jpg\ta red square",
            b"good.jpg\ta red square\tan extra field",  # row 3: malformed
            b"good.jpg\t   ",  # row 4: empty caption
            b"\tno image path",  # row 5: malformed
            b"good.jpg\tcaf\xe9 \xff au lait",  # row 6: Latin-1 / invalid bytes: kept, replaced
            b"good.jpg\t" + LONG_CAPTION.encode()]
    with caplog.at_level(logging.WARNING):
        pairs = CsvPairs(write_listing(tmp_path, rows))
    assert dict(pairs.bad) == {"malformed_row": 2, "empty_caption": 1}
    assert [pairs.rows[i] for i in range(len(pairs))] == [2, 6, 7]
    assert pairs.captions[1] == "caf\ufffd \ufffd au lait" and pairs.replaced_captions == 1
    assert pairs.captions[2] == LONG_CAPTION
    for line, what in [(3, "malformed_row"), (4, "empty_caption"), (5, "malformed_row"), (6, "not valid UTF-8")]:
        assert any(f"pairs.tsv row {line}:" in m and what in m for m in caplog.messages), (line, caplog.messages)


def test_ten_thousand_character_caption_is_truncated_by_the_tokenizer(tmp_path):
    student = build_student("tiny")
    path = write_listing(tmp_path, [b"good.jpg\t" + LONG_CAPTION.encode(), b"good.jpg\ta red square"])
    transform = PairedTransform({"student_image": ImageSpec(16, (0.5,) * 3, (0.5,) * 3)})
    batch = next(train_batches(CsvPairs(path), transform=transform, tokenizers={"student_text": student.tokenizer},
                               batch_size=2, seed=0))
    tokens = batch["student_text"]
    long_row = batch["caption"].index(LONG_CAPTION)
    context = student.model.context_length
    assert tokens.shape == (2, context)
    # open_clip truncates to the context and ends the sequence with its end-of-text token.
    assert torch.all(tokens[long_row] != 0) and tokens[long_row, -1] == student.tokenizer.eot_token_id
